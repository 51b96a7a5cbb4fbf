"""The status_refresh_requests sensor (domain.md §1.8) in runs mode, beyond the merge itself: the 10,000-request cap,
the in-flight skip, the wait for programme partitions, and at-least-once marking when a run fails —
against a real Postgres, with the requested runs executed in process."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RetryPolicy,
    SensorResult,
    SkipReason,
)

from assets.statuses import status_tables
from sensors.statuses import REQUEST_BATCH_TAG, status_refresh_requests_sensor
from test_statuses_helpers import PROGRAMMES, TODAY, World, sensor_context
from test_statuses_helpers import instance  # noqa: F401 - a fixture, used by name

CAP = 10_000


@pytest.fixture(autouse=True)
def runs_mode(set_env):
    """These tests are about the run-per-batch way (PSO_STATUS_EVENTS=runs); the sensor's own refreshes of
    small batches (the default) are in tests/test_statuses_events.py."""
    set_env("PSO_STATUS_EVENTS", "runs")


@pytest.fixture
def world(engine):
    """Three year-10 patients in the main session (every programme); the request table starts empty."""
    with engine.begin() as conn:
        w = World(conn)
        w.patients = [w.patient() for _ in range(3)]
        w.ps = [w.patient_session(p) for p in w.patients]
        w.consent(w.patients[0], "hpv", "given", parent_id=w.parent("Parent Zero"))
        conn.execute(sa.text("DELETE FROM status_refresh_requests"))
    return w


def _tick(database_url, instance):
    return status_refresh_requests_sensor(sensor_context(database_url, instance))


def _one_request(result):
    assert isinstance(result, SensorResult), result
    [request] = result.run_requests
    return request


def _insert_patient_requests(engine, patient_ids, count) -> list[int]:
    """`count` pending patient requests in one INSERT … SELECT, cycling over `patient_ids`."""
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO status_refresh_requests (scope, patient_id, reason) "
            "SELECT 0, (CAST(:p AS bigint[]))[1 + (g % cardinality(CAST(:p AS bigint[])))], 'bulk' "
            "FROM generate_series(1, :n) AS g RETURNING id"), {"p": list(patient_ids), "n": count}).scalars().all()


def _pending(engine, ids=None) -> list[int]:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT id FROM status_refresh_requests WHERE processed_at IS NULL "
            "AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[]))) ORDER BY id"),
            {"ids": ids}).scalars().all()


def _run(request, instance, resources, raise_on_error=True):
    """Execute a requested run as the daemon would: its assets, its checks (none: a scoped run), its tags."""
    from orchestration.definitions import defs

    job = defs.resolve_job_def("status_refresh").get_subset(
        asset_selection=set(request.asset_selection), asset_check_selection=set(request.asset_check_keys or []))
    config = {**request.run_config["ops"]["status_tables"]["config"], "today": TODAY.isoformat()}
    return job.execute_in_process(instance=instance, resources=resources, tags=request.tags,
                                  run_config={"ops": {"status_tables": {"config": config}}},
                                  raise_on_error=raise_on_error)


# --- 1. the cap -----------------------------------------------------------------------------------


def test_a_run_takes_the_oldest_10000_requests_and_the_next_tick_the_rest(world, engine, database_url, instance,
                                                                         resources):
    ids = _insert_patient_requests(engine, world.patients, CAP + 5)
    assert len(ids) == CAP + 5
    first = _one_request(_tick(database_url, instance))
    config = first.run_config["ops"]["status_tables"]["config"]
    assert config["request_ids"] == sorted(ids)[:CAP]  # exactly the oldest 10,000, by id
    assert config["scope"] == "patients" and config["patient_ids"] == sorted(world.patients)
    assert _run(first, instance, resources).success
    assert _pending(engine) == sorted(ids)[CAP:]  # the run marked its 10,000, not the 5 beyond the cap
    second = _one_request(_tick(database_url, instance))
    assert second.run_config["ops"]["status_tables"]["config"]["request_ids"] == sorted(ids)[CAP:]
    assert second.run_key != first.run_key
    assert second.tags[REQUEST_BATCH_TAG] != first.tags[REQUEST_BATCH_TAG]
    assert _run(second, instance, resources).success
    assert _pending(engine) == []
    assert isinstance(_tick(database_url, instance), SkipReason)


# --- 2. a run of the batch in flight ----------------------------------------------------------------

# QUEUED is in flight too, but a QUEUED run record needs a remote job origin (only the daemon's submit
# path has one); these statuses are the ones a plain run record can hold.
IN_FLIGHT = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
             DagsterRunStatus.CANCELING]


@pytest.mark.parametrize("status", IN_FLIGHT, ids=lambda s: s.value)
def test_no_request_while_a_run_of_the_batch_is_in_flight(world, engine, database_url, instance, status):
    _insert_patient_requests(engine, world.patients[:2], 4)
    request = _one_request(_tick(database_url, instance))
    run = instance.add_run(DagsterRun(job_name="status_refresh", status=status, tags=request.tags,
                                      run_config=request.run_config))
    skipped = _tick(database_url, instance)
    assert isinstance(skipped, SkipReason) and run.run_id in skipped.skip_message
    # Also through the tick machinery: nothing requested.
    data = status_refresh_requests_sensor.evaluate_tick(sensor_context(database_url, instance))
    assert data.run_requests == [] and run.run_id in data.skip_message
    # The run fails: the same batch is requested again, under a new key.
    instance.report_run_failed(run)
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    retry = _one_request(_tick(database_url, instance))
    assert retry.run_key != request.run_key
    assert retry.tags[REQUEST_BATCH_TAG] == request.tags[REQUEST_BATCH_TAG]
    assert retry.run_config == request.run_config
    assert len(_pending(engine)) == 4


# --- 3. no programme partitions yet -----------------------------------------------------------------


def test_no_request_without_programme_partitions_and_the_requests_stay_pending(world, engine, database_url):
    ids = _insert_patient_requests(engine, world.patients, 3)
    with engine.begin() as conn:
        ids.append(conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, session_id, reason) "
                                        "VALUES (1, :s, 'dates') RETURNING id"), {"s": world.main_session}).scalar_one())
    bare = DagsterInstance.ephemeral()  # programme_added has not registered any partition
    skipped = _tick(database_url, bare)
    assert isinstance(skipped, SkipReason) and "no programme partitions" in skipped.skip_message
    data = status_refresh_requests_sensor.evaluate_tick(sensor_context(database_url, bare))
    assert data.run_requests == [] and data.dynamic_partitions_requests == []
    assert _pending(engine) == sorted(ids)
    assert bare.get_runs() == []
    # Once the partitions exist the waiting requests are requested, all of them, over every programme.
    bare.add_dynamic_partitions("programmes", PROGRAMMES)
    request = _one_request(_tick(database_url, bare))
    assert request.run_config["ops"]["status_tables"]["config"]["request_ids"] == sorted(ids)


# --- 4. a failed run marks nothing ------------------------------------------------------------------


def test_a_failed_run_leaves_its_requests_pending_and_the_retry_marks_them(world, engine, database_url, instance,
                                                                          resources, monkeypatch):
    # The asset's step retries (3, from 30 s, exponential) stay, without their waits: every attempt fails.
    policy = status_tables.op.retry_policy
    monkeypatch.setattr(status_tables.op, "_retry_policy", RetryPolicy(max_retries=policy.max_retries, delay=0))
    ids = _insert_patient_requests(engine, world.patients, 6)
    with engine.begin() as conn:
        ids.append(conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, session_id, reason) "
                                        "VALUES (1, :s, 'dates') RETURNING id"), {"s": world.main_session}).scalar_one())
        # Break the LAST programme of the run's range only (the one whose last batch marks the requests):
        # its consent-status writes fail, after flu, hpv and menacwy have committed theirs.
        conn.execute(sa.text(
            "CREATE FUNCTION test_refuse_write() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'test: consent statuses of td_ipv refused'; END $$"))
        conn.execute(sa.text(
            f"CREATE TRIGGER test_refuse_write BEFORE INSERT OR UPDATE ON patient_consent_statuses FOR EACH ROW "
            f"WHEN (NEW.programme_id = {world.programmes['td_ipv']}) EXECUTE FUNCTION test_refuse_write()"))
    request = _one_request(_tick(database_url, instance))
    assert request.run_config["ops"]["status_tables"]["config"]["request_ids"] == sorted(ids)
    failed = _run(request, instance, resources, raise_on_error=False)
    assert not failed.success
    assert sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in failed.all_events) == policy.max_retries
    assert "consent statuses of td_ipv refused" in str(failed.failure_data_for_node("status_tables").error)
    assert instance.get_run_by_id(failed.run_id).status == DagsterRunStatus.FAILURE
    with engine.connect() as conn:
        written = dict(conn.execute(sa.text(
            "SELECT p.type, count(*) FROM patient_consent_statuses s JOIN programmes p ON p.id = s.programme_id "
            "GROUP BY p.type")).all())
    assert written == {"flu": 3, "hpv": 3, "menacwy": 3}  # the earlier programmes did run
    assert _pending(engine, ids) == sorted(ids)  # … but no request of the batch is marked
    # Repair; the next tick requests the same batch under a new key, and its run marks every request.
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER test_refuse_write ON patient_consent_statuses"))
    retry = _one_request(_tick(database_url, instance))
    assert retry.run_key != request.run_key and retry.tags[REQUEST_BATCH_TAG] == request.tags[REQUEST_BATCH_TAG]
    assert _run(retry, instance, resources).success
    assert _pending(engine, ids) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM patient_consent_statuses")).scalar_one() == 12
    assert isinstance(_tick(database_url, instance), SkipReason)
