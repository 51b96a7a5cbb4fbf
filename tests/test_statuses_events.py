"""Patient events refreshed by the status_refresh_requests sensor itself (PSO_STATUS_EVENTS=inline, the
default): the changed status row, the requests settled, the materializations and source observations
reported to Dagster, what still goes to a run, and the priority lock that keeps an event's refresh from
waiting for a whole refresh while never letting a batch overwrite it with an older snapshot."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    DagsterRun,
    DagsterRunStatus,
    SensorResult,
)
from test_statuses_helpers import (
    PROGRAMMES,
    TODAY,
    World,
    instance,  # noqa: F401 - a fixture, used by name
    refresh_everything,
    sensor_context,
)

from assets.statuses import STATUS_REFRESH_LOCK_KEY, StatusScope, refresh_statuses
from assets.statuses.events import INLINE_MAX_REQUESTS, split_requests
from orchestration.schema import ConsentStatus
from sensors.statuses import REQUEST_BATCH_TAG, status_refresh_requests_sensor

NOON = f"{TODAY.isoformat()}T12:00:00+00:00"


@pytest.fixture
def world(engine, set_env):
    """Two year-10 patients in the main session, every status computed; no request pending."""
    set_env("PSO_NOW", NOON)
    with engine.begin() as conn:
        w = World(conn)
        w.patients = [w.patient() for _ in range(2)]
        w.ps = [w.patient_session(p) for p in w.patients]
    refresh_everything(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE status_refresh_requests SET processed_at = now() WHERE processed_at IS NULL"))
    return w


def _pending(engine) -> list[int]:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT id FROM status_refresh_requests WHERE processed_at IS NULL ORDER BY id")).scalars().all()


def _consent_status(engine, world, patient, programme="hpv"):
    with engine.connect() as conn:
        world.conn = conn
        return world.patient_status("patient_consent_statuses", patient, programme)


def test_a_consent_is_refreshed_by_the_sensor_and_reported_as_materializations(world, engine, database_url,
                                                                               instance):
    patient = world.patients[0]
    assert _consent_status(engine, world, patient) == ConsentStatus.NO_RESPONSE
    with engine.begin() as conn:
        world.conn = conn
        world.consent(patient, "hpv", "refused", parent_id=None)
    assert _pending(engine)

    result = status_refresh_requests_sensor(sensor_context(database_url, instance))

    assert isinstance(result, SensorResult) and result.run_requests == []
    assert _consent_status(engine, world, patient) == ConsentStatus.REFUSED
    assert _pending(engine) == []  # settled with the refresh's last batch
    materialized = [e for e in result.asset_events if isinstance(e, AssetMaterialization)]
    # Every status table, in every programme partition the request concerns.
    assert {(e.asset_key.path[-1], e.partition) for e in materialized} == {
        (table, programme) for table in ("patient_consent_statuses", "patient_triage_statuses",
                                         "patient_vaccination_statuses", "patient_session_session_statuses",
                                         "patient_session_registration_statuses") for programme in PROGRAMMES}
    hpv_consents = next(e for e in materialized
                        if e.asset_key == AssetKey("patient_consent_statuses") and e.partition == "hpv")
    assert hpv_consents.metadata["rows_changed"].value == 1
    assert hpv_consents.metadata["dagster/table_name"].value == "public.patient_consent_statuses"
    # Its checks judged exactly what it refreshed, and passed.
    checks = [e for e in result.asset_events if isinstance(e, AssetCheckEvaluation)]
    assert len(checks) == 10 and all(c.passed for c in checks)
    assert checks[0].metadata["scope"].value == "1 patient(s)"
    observed = [e for e in result.asset_events if isinstance(e, AssetObservation)]
    assert [o.asset_key for o in observed] == [AssetKey("consents")]
    assert int(observed[0].tags["dagster/data_version"]) > 0


def test_whole_programme_requests_go_to_a_run_and_the_rest_is_refreshed_now(world, engine, database_url, instance):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, reason) VALUES (2, 'test all')"))
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, patient_id, reason) "
                             "VALUES (0, :p, 'consents insert')"), {"p": world.patients[1]})
    [all_request, patient_request] = _pending(engine)

    result = status_refresh_requests_sensor(sensor_context(database_url, instance))

    [run] = result.run_requests
    assert run.run_config["ops"]["status_tables"]["config"]["scope"] == "all"
    assert run.run_config["ops"]["status_tables"]["config"]["request_ids"] == [all_request]
    assert _pending(engine) == [all_request]  # the patient's request is settled already


def test_more_requests_than_a_tick_refreshes_leave_the_rest_to_a_run():
    requests = [{"id": i, "scope": 0, "patient_id": i % 7, "session_id": None} for i in range(1, INLINE_MAX_REQUESTS + 6)]
    now, later = split_requests(requests)
    assert [r["id"] for r in now] == list(range(1, INLINE_MAX_REQUESTS + 1))
    assert [r["id"] for r in later] == list(range(INLINE_MAX_REQUESTS + 1, INLINE_MAX_REQUESTS + 6))


def test_requests_newer_than_a_run_in_flight_do_not_wait_for_it(world, engine, database_url, instance):
    with engine.begin() as conn:
        ids = conn.execute(sa.text(
            "INSERT INTO status_refresh_requests (scope, patient_id, reason) VALUES (0, :a, 'consents insert'), "
            "(0, :b, 'consents insert') RETURNING id"), {"a": world.patients[0], "b": world.patients[1]}).scalars().all()
    # A run of the first request is still running.
    instance.add_run(DagsterRun(job_name="status_refresh", run_id="a" * 8 + "-0000-0000-0000-" + "0" * 12,
                                status=DagsterRunStatus.STARTED,
                                tags={"pso/trigger": "status_refresh_requests",
                                      REQUEST_BATCH_TAG: f"{ids[0]}-{ids[0]}:1:digest"}))

    result = status_refresh_requests_sensor(sensor_context(database_url, instance))

    assert result.run_requests == []
    assert _pending(engine) == [ids[0]]  # the run in flight settles its own


def test_the_runs_mode_still_hands_every_request_to_a_run(world, engine, database_url, instance, set_env):
    set_env("PSO_STATUS_EVENTS", "runs")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, patient_id, reason) "
                             "VALUES (0, :p, 'consents insert')"), {"p": world.patients[0]})
    result = status_refresh_requests_sensor(sensor_context(database_url, instance))
    [run] = result.run_requests
    assert run.run_config["ops"]["status_tables"]["config"]["patient_ids"] == [world.patients[0]]
    assert result.asset_events == [] and _pending(engine)


def _blocked_on_advisory_lock(engine, application_pid: int) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND NOT granted AND pid = :pid)"), {"pid": application_pid}).scalar_one()


def _priority_refresh_in_thread(engine, world, patient):
    """Start a priority refresh of one patient (hpv) in a thread; returns (thread, its backend pid, errors)."""
    conn = engine.connect()
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    conn.commit()
    errors: list[BaseException] = []

    def work():
        try:
            refresh_statuses(conn, world.programmes["hpv"], StatusScope(patient_ids=(patient,)), TODAY,
                             priority=True)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
        finally:
            conn.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread, pid, errors


def test_a_priority_refresh_waits_for_batches_in_flight_but_not_for_a_whole_refresh(world, engine):
    patient = world.patients[0]
    with engine.begin() as conn:
        world.conn = conn
        world.consent(patient, "hpv", "refused", parent_id=None)

    # A whole refresh in progress holds the refresh lock (a parallel refresh's coordinator does, from
    # start to end): the priority refresh does not wait for it.
    with engine.connect() as coordinator:
        coordinator.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": STATUS_REFRESH_LOCK_KEY})
        thread, _, errors = _priority_refresh_in_thread(engine, world, patient)
        thread.join(timeout=60)
        assert not thread.is_alive() and errors == []
        coordinator.rollback()
    assert _consent_status(engine, world, patient) == ConsentStatus.REFUSED

    # A batch in flight holds the write lock shared: the priority refresh waits until it commits.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM consents WHERE patient_id = :p"), {"p": patient})
    with engine.connect() as batch:
        batch.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:k + 1)"), {"k": STATUS_REFRESH_LOCK_KEY})
        thread, pid, errors = _priority_refresh_in_thread(engine, world, patient)
        deadline = time.monotonic() + 30
        while not _blocked_on_advisory_lock(engine, pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _blocked_on_advisory_lock(engine, pid) and thread.is_alive()
        assert _consent_status(engine, world, patient) == ConsentStatus.REFUSED  # not written yet
        batch.commit()  # the batch ends
        thread.join(timeout=60)
    assert not thread.is_alive() and errors == []
    assert _consent_status(engine, world, patient) == ConsentStatus.NO_RESPONSE
