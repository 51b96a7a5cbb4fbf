"""Which refresh requests a run marks processed (§1.8, at-least-once) — against a real Postgres."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from assets.statuses import STATUS_REFRESH_LOCK_KEY
from test_statuses_helpers import PROGRAMMES, TODAY, World
from test_statuses_helpers import instance  # noqa: F401 - a fixture, used by name



@pytest.fixture
def world(engine):
    with engine.begin() as conn:
        w = World(conn)
        w.patients = [w.patient() for _ in range(3)]
        for p in w.patients:
            w.patient_session(p)
        conn.execute(sa.text("DELETE FROM status_refresh_requests"))
    return w


def _request(conn, patient_id: int, reason: str) -> int:
    # As a writer whose transaction began two hours ago (requested_at defaults to its start).
    return conn.execute(sa.text(
        "INSERT INTO status_refresh_requests (scope, patient_id, reason, requested_at) "
        "VALUES (0, :p, :r, now() - interval '2 hours') RETURNING id"), {"p": patient_id, "r": reason}).scalar_one()


def _full_run(instance, resources, asset_names=None):
    from orchestration.definitions import defs

    job = defs.resolve_job_def("status_refresh")
    if asset_names is not None:
        job = job.get_subset(asset_selection={k for k in job.asset_layer.executable_asset_keys
                                              if k.path[-1] in asset_names})
    return job.execute_in_process(
        instance=instance, resources=resources,
        tags={ASSET_PARTITION_RANGE_START_TAG: PROGRAMMES[0], ASSET_PARTITION_RANGE_END_TAG: PROGRAMMES[-1]},
        run_config={"ops": {"status_tables": {"config": {"scope": "all", "today": TODAY.isoformat()}}}})


def _pending(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(
            "SELECT reason FROM status_refresh_requests WHERE processed_at IS NULL")).scalars())


def test_a_full_run_marks_only_the_requests_committed_before_it_started(world, engine, instance, resources):
    with engine.begin() as conn:
        _request(conn, world.patients[0], "committed before the run")
    outcome = {}
    with engine.connect() as blocker:
        with blocker.begin():
            # Hold the refresh lock: the run starts, reads the pending requests, then waits for its batches.
            blocker.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": STATUS_REFRESH_LOCK_KEY})
            thread = threading.Thread(target=lambda: outcome.setdefault("run", _full_run(instance, resources)))
            thread.start()
            deadline = time.monotonic() + 60
            while not blocker.execute(sa.text(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)")).scalar():
                assert time.monotonic() < deadline, "the run never waited for the refresh lock"
                time.sleep(0.05)
            # A writer whose transaction began long before the run commits only now: its change may be
            # committed after a batch read the patient, so this run must not settle it.
            with engine.begin() as conn:
                _request(conn, world.patients[1], "committed during the run")
        thread.join(timeout=120)
    assert outcome["run"].success
    assert _pending(engine) == {"committed during the run"}


def test_a_full_run_of_some_tables_marks_no_request(world, engine, instance, resources):
    with engine.begin() as conn:
        _request(conn, world.patients[0], "consent recorded")
    assert _full_run(instance, resources, {"patient_session_registration_statuses"}).success
    assert _pending(engine) == {"consent recorded"}
    assert _full_run(instance, resources).success
    assert _pending(engine) == set()
