"""Dagster wiring of the cached statuses: partitioned materialization, scopes, idempotency, sensors,
schedule, checks and the explain command — against a real Postgres."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from dagster import (
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    build_schedule_context,
    instance_for_test,
    materialize,
)
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, make_new_run_id
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG, RUN_KEY_TAG

from assets.statuses import (
    StatusScope,
    bad_status_inputs,
    explain_statuses,
    format_explanation,
    refresh_statuses,
    status_coverage,
    status_drift,
    status_tables,
)
from assets.statuses import NIGHTLY_DATE_TAG, STATUS_ASSET_KEYS, run_check_keys
from orchestration.schema import ConsentStatus, SessionStatus
from orchestration.settings import get_settings
from resources.postgres import PostgresResource
from schedules.statuses import status_refresh_nightly
from sensors.statuses import (
    day_change_sensor,
    programme_added_sensor,
    status_refresh_deadline_sensor,
    status_refresh_requests_sensor,
)
from sensors.sync_complete import sync_complete_sensor
from test_statuses_helpers import PROGRAMMES, TODAY, World, refresh_everything, sensor_context
from test_statuses_helpers import instance  # noqa: F401 - a fixture, used by name

# 10:00 London on TODAY (GMT in November).
NOW = datetime(TODAY.year, TODAY.month, TODAY.day, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def world(engine):
    """Two sessions, three year-10 patients; patients 0 and 1 in the main session, patient 2 in the other."""
    with engine.begin() as conn:
        w = World(conn)
        other = w.session(["hpv", "flu"], [TODAY + timedelta(days=7)])
        w.patients = [w.patient() for _ in range(3)]
        w.ps = [w.patient_session(w.patients[0]), w.patient_session(w.patients[1]),
                w.patient_session(w.patients[2], other)]
        w.other_session = other
        w.consent(w.patients[0], "hpv", "given", parent_id=w.parent("Parent Zero"))
        w.consent(w.patients[1], "hpv", "refused", parent_id=w.parent("Parent One"))
        w.attendance(w.ps[0], False)
        # Fixture data is not an event stream: start the request table empty.
        conn.execute(sa.text("DELETE FROM status_refresh_requests"))
    return w


def _config(**config):
    config.setdefault("today", TODAY.isoformat())
    return {"ops": {"status_tables": {"config": config}}}


def _counts(engine, table):
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def _status(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one_or_none()


def test_materialize_one_partition_then_nothing_to_write(world, engine, instance, resources):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, patient_id, reason, requested_at) "
                             "VALUES (0, :p, 'old', now() - interval '2 hours')"), {"p": world.patients[0]})
    result = materialize([status_tables], partition_key="hpv", resources=resources, instance=instance,
                         run_config=_config(scope="all"))
    assert result.success
    meta = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("status_tables")}
    assert set(meta) == {"patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses",
                         "patient_session_session_statuses", "patient_session_registration_statuses"}
    assert meta["patient_consent_statuses"]["rows_seeded"].value == 3
    assert meta["patient_session_session_statuses"]["rows_seeded"].value == 3
    # Only hpv rows exist: one partition was refreshed.
    assert _counts(engine, "patient_consent_statuses") == 3
    assert _status(engine, "SELECT status FROM patient_consent_statuses WHERE patient_id = :p",
                   p=world.patients[1]) == ConsentStatus.REFUSED

    again = materialize([status_tables], partition_key="hpv", resources=resources, instance=instance,
                        run_config=_config(scope="all"))
    for m in again.asset_materializations_for_node("status_tables"):
        assert m.metadata["rows_seeded"].value == 0, m.asset_key
        assert m.metadata["rows_changed"].value == 0, m.asset_key
    assert again.asset_materializations_for_node("status_tables")[0].metadata["rows_unchanged"].value > 0
    # A full run of ONE programme does not settle patient requests (they cover every programme).
    assert _status(engine, "SELECT count(*) FROM status_refresh_requests WHERE processed_at IS NULL") == 1


def test_one_run_over_every_programme_marks_its_requests(world, engine, instance, resources):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, patient_id, reason) VALUES "
                             "(0, :p, 'test'), (0, :p, 'test')"), {"p": world.patients[0]})
        request_ids = conn.execute(sa.text("SELECT id FROM status_refresh_requests ORDER BY id")).scalars().all()
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, patient_id, reason) VALUES (0, 999, 'x')"))
    from orchestration.definitions import defs

    job = defs.resolve_job_def("status_refresh")
    result = job.execute_in_process(
        instance=instance, resources=resources,
        tags={ASSET_PARTITION_RANGE_START_TAG: "flu", ASSET_PARTITION_RANGE_END_TAG: "td_ipv"},
        run_config=_config(scope="patients", patient_ids=[world.patients[0]], request_ids=request_ids))
    assert result.success
    # Patient 0 only, every programme: 4 patient-level rows per table, none for the others.
    assert _counts(engine, "patient_consent_statuses") == 4
    assert _counts(engine, "patient_session_session_statuses") == 4
    with engine.connect() as conn:
        pending = conn.execute(sa.text("SELECT id FROM status_refresh_requests WHERE processed_at IS NULL")).scalars().all()
    assert len(pending) == 1 and pending[0] not in request_ids


def test_scopes_touch_only_their_rows(world, engine):
    refresh_everything(engine)
    hpv = world.programmes["hpv"]
    corrupt = "UPDATE patient_consent_statuses SET status = 3 WHERE programme_id = :pr"
    corrupt_session = "UPDATE patient_session_session_statuses SET status = 7 WHERE programme_id = :pr"
    with engine.begin() as conn:
        conn.execute(sa.text(corrupt), {"pr": hpv})
        conn.execute(sa.text(corrupt_session), {"pr": hpv})
    with engine.connect() as conn:
        # Patient scope: only patient 1 is repaired.
        result = refresh_statuses(conn, hpv, StatusScope(patient_ids=(world.patients[1],)), TODAY)
        assert result.tables["patient_consent_statuses"].changed == 1
        # Session scope: only the other session's patient_session (and its patient's rows).
        result = refresh_statuses(conn, hpv, StatusScope(session_ids=(world.other_session,)), TODAY)
        assert result.tables["patient_session_session_statuses"].changed == 1
        assert result.tables["patient_consent_statuses"].changed == 1
    rows = dict(engine.connect().execute(sa.text(
        "SELECT patient_id, status FROM patient_consent_statuses WHERE programme_id = :pr"), {"pr": hpv}).all())
    assert rows == {world.patients[0]: 3, world.patients[1]: ConsentStatus.REFUSED,
                    world.patients[2]: ConsentStatus.NO_RESPONSE}
    sessions = dict(engine.connect().execute(sa.text(
        "SELECT patient_session_id, status FROM patient_session_session_statuses WHERE programme_id = :pr"),
        {"pr": hpv}).all())
    assert sessions[world.ps[0]] == 7  # neither patient 0 nor its session was in scope
    assert sessions[world.ps[1]] == SessionStatus.REFUSED  # a patient scope covers its patient_sessions
    assert sessions[world.ps[2]] == SessionStatus.NONE_YET


def test_checks_fail_on_a_corrupted_cache_and_name_the_keys(world, engine):
    refresh_everything(engine)
    with engine.connect() as conn:
        assert all(not v for v in status_drift(conn, TODAY, sample_size=100).values())
        assert all(not v for v in status_coverage(conn, TODAY).values())
        assert bad_status_inputs(conn, NOW) == {}
    with engine.begin() as conn:
        world.conn = conn
        conn.execute(sa.text("UPDATE patient_session_session_statuses SET status = 1 WHERE patient_session_id = :ps "
                             "AND programme_id = :pr"), {"ps": world.ps[0], "pr": world.programmes["flu"]})
        conn.execute(sa.text("DELETE FROM patient_triage_statuses WHERE patient_id = :p AND programme_id = :pr"),
                     {"p": world.patients[2], "pr": world.programmes["menacwy"]})
        future = world.record(world.patients[2], "flu", "administered", performed=NOW + timedelta(days=3),
                              session_id=world.other_session)
    with engine.connect() as conn:
        drift = status_drift(conn, TODAY, sample_size=100)
        # The corrupted row, and the row the (not yet refreshed) future record changed.
        assert drift["patient_session_session_statuses"] == [
            {"patient_session_id": world.ps[0], "programme_id": world.programmes["flu"], "programme": "flu",
             "cached": 1, "computed": SessionStatus.ABSENT_FROM_SESSION},
            {"patient_session_id": world.ps[2], "programme_id": world.programmes["flu"], "programme": "flu",
             "cached": 0, "computed": SessionStatus.VACCINATED}]
        missing = status_coverage(conn, TODAY)
        assert missing["patient_triage_statuses"] == [
            {"patient_id": world.patients[2], "programme_id": world.programmes["menacwy"], "programme": "menacwy"}]
        assert bad_status_inputs(conn, NOW) == {"vaccination records performed in the future": [future]}


def test_asset_checks_run_through_dagster(world, engine, instance, resources):
    from orchestration.definitions import defs

    refresh_everything(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE patient_consent_statuses SET status = 0 WHERE patient_id = :p"),
                     {"p": world.patients[1]})
    job = defs.resolve_job_def("status_checks")
    import os

    os.environ["PSO_NOW"] = NOW.isoformat()
    try:
        result = job.execute_in_process(instance=instance, resources=resources, raise_on_error=False)
    finally:
        del os.environ["PSO_NOW"]
    evaluations = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert len(evaluations) == 11  # drift and coverage of the five tables over every programme, bad input
    drift = evaluations[("patient_consent_statuses", "whole_cache_no_drift")]
    assert not drift.passed
    assert drift.metadata["programmes"].value == "every programme"
    rows = [r.data for r in drift.metadata["mismatched_rows"].value.records]
    assert {"patient_id": world.patients[1], "programme_id": world.programmes["hpv"], "programme": "hpv",
            "cached": 0, "computed": ConsentStatus.REFUSED} in rows
    assert evaluations[("patient_triage_statuses", "whole_cache_no_drift")].passed
    assert evaluations[("patient_triage_statuses", "whole_cache_every_expected_row_exists")].passed
    assert evaluations[("patient_consent_statuses", "status_inputs_valid")].passed


# --- sensors -----------------------------------------------------------------------------------


def test_programme_added_adds_partitions_and_requests_session_runs(world, database_url):
    instance = DagsterInstance.ephemeral()
    # First tick (no cursor): the table as it is — one partition and ONE full refresh per programme,
    # not one run per row ever written.
    result = programme_added_sensor(sensor_context(database_url, instance))
    assert isinstance(result, SensorResult)
    added = [key for r in result.dynamic_partitions_requests for key in r.partition_keys]
    assert sorted(added) == PROGRAMMES
    assert sorted((r.partition_key, r.run_key) for r in result.run_requests) == [
        (p, f"programme_added:{p}:partition") for p in PROGRAMMES]
    assert all(r.run_config["ops"]["status_tables"]["config"]["scope"] == "all" for r in result.run_requests)
    cursor = result.cursor
    # Next tick: nothing new → no double run.
    instance.add_dynamic_partitions("programmes", added)
    assert isinstance(programme_added_sensor(sensor_context(database_url, instance, cursor)), SkipReason)
    # A programme added to a session: a session-scoped run, keyed by the row; no new partition.
    with sa.create_engine(database_url).begin() as conn:
        sp = World.__new__(World)
        sp.conn, sp.programmes = conn, world.programmes
        row_id = sp.add_programme(world.other_session, "td_ipv")
    later = programme_added_sensor(sensor_context(database_url, instance, cursor))
    assert later.dynamic_partitions_requests == []
    [request] = later.run_requests
    assert request.partition_key == "td_ipv"
    assert request.run_key == f"programme_added:td_ipv:{world.other_session}:{row_id}"
    config = request.run_config["ops"]["status_tables"]["config"]
    assert config["scope"] == "sessions" and config["session_ids"] == [world.other_session]
    assert set(request.asset_check_keys) == set(run_check_keys(STATUS_ASSET_KEYS))  # judge what the run covered
    # The same tick again (its cursor not yet stored): the same key, which Dagster drops.
    assert [r.run_key for r in programme_added_sensor(sensor_context(database_url, instance, cursor)).run_requests] \
        == [request.run_key]
    # A programme that is not a partition yet (e.g. deleted from the UI) arrives in a session: its
    # partition comes back with a full refresh, instead of a session run.
    instance.delete_dynamic_partition("programmes", "menacwy")
    with sa.create_engine(database_url).begin() as conn:
        sp.conn = conn
        sp.add_programme(world.other_session, "menacwy")
    newer = programme_added_sensor(sensor_context(database_url, instance, later.cursor))
    assert [list(r.partition_keys) for r in newer.dynamic_partitions_requests] == [["menacwy"]]
    assert [r.run_key for r in newer.run_requests] == ["programme_added:menacwy:partition"]
    instance.add_dynamic_partitions("programmes", ["menacwy"])
    # Cursor reset: the table as it is again — every programme is a partition, so no run at all, and
    # the watch goes on from the newest row.
    reset = programme_added_sensor(sensor_context(database_url, instance))
    assert reset.run_requests == [] and reset.dynamic_partitions_requests == []
    assert isinstance(programme_added_sensor(sensor_context(database_url, instance, reset.cursor)), SkipReason)


def test_day_change_once_per_date_with_catch_up(world, database_url, instance, monkeypatch):
    monkeypatch.setenv("PSO_NOW", NOW.isoformat())
    first = day_change_sensor(sensor_context(database_url, instance))
    [request] = first.run_requests
    assert request.run_key == f"day_change:{TODAY.isoformat()}"
    assert first.cursor == TODAY.isoformat()
    config = request.run_config["ops"]["status_tables"]["config"]
    assert config == {"scope": "sessions", "session_ids": [world.main_session], "patient_ids": [],
                      "request_ids": [], "today": TODAY.isoformat()}
    assert {k.path[-1] for k in request.asset_selection} == {"patient_session_session_statuses",
                                                             "patient_session_registration_statuses"}
    # The run's own checks of its two tables (they judge that run's sessions); the whole-cache ones stay out.
    assert set(request.asset_check_keys) == set(run_check_keys(request.asset_selection))
    assert {k.asset_key.path[-1] for k in request.asset_check_keys} == {"patient_session_session_statuses",
                                                                       "patient_session_registration_statuses"}
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == "flu"
    assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == "td_ipv"
    # Same date again: nothing.
    assert isinstance(day_change_sensor(sensor_context(database_url, instance, first.cursor)), SkipReason)
    # After 9 days of downtime: ONE run for the new date, covering the sessions held in between.
    later = NOW + timedelta(days=9)
    monkeypatch.setenv("PSO_NOW", later.isoformat())
    caught_up = day_change_sensor(sensor_context(database_url, instance, first.cursor))
    [request] = caught_up.run_requests
    assert request.run_key == f"day_change:{(TODAY + timedelta(days=9)).isoformat()}"
    assert request.run_config["ops"]["status_tables"]["config"]["session_ids"] == sorted(
        [world.main_session, world.other_session])
    assert isinstance(day_change_sensor(sensor_context(database_url, instance, caught_up.cursor)), SkipReason)


def _late_alerts(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT message, details FROM alerts WHERE kind = 'status_refresh_late' "
                                    "ORDER BY id")).all()


def test_deadline_alert_once_when_the_nightly_refresh_is_late(engine, database_url, instance, monkeypatch):
    # 05:59 London (GMT): too early to tell.
    monkeypatch.setenv("PSO_NOW", datetime(2026, 11, 30, 5, 59, tzinfo=timezone.utc).isoformat())
    early = status_refresh_deadline_sensor.evaluate_tick(sensor_context(database_url, instance))
    assert early.skip_message.startswith("before 06:00") and early.cursor is None and not _late_alerts(engine)
    # 06:00 London with no successful nightly run for the date: one alert, cursor = the date.
    monkeypatch.setenv("PSO_NOW", datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc).isoformat())
    late = status_refresh_deadline_sensor.evaluate_tick(sensor_context(database_url, instance))
    assert late.cursor == "2026-11-30"
    [(message, details)] = _late_alerts(engine)
    assert "2026-11-30" in message and details == {"job_name": "status_refresh", "date": "2026-11-30"}
    again = status_refresh_deadline_sensor.evaluate_tick(sensor_context(database_url, instance, late.cursor))
    assert again.skip_message == "2026-11-30 already checked" and len(_late_alerts(engine)) == 1
    # Next day, in summer time (05:30 UTC = 06:30 London), the nightly run for that date succeeded: no alert.
    day = "2027-07-01"
    instance.add_run(DagsterRun(job_name="status_refresh", run_id=make_new_run_id(), status=DagsterRunStatus.SUCCESS,
                                tags={NIGHTLY_DATE_TAG: day}))
    monkeypatch.setenv("PSO_NOW", datetime(2027, 7, 1, 5, 30, tzinfo=timezone.utc).isoformat())
    ok = status_refresh_deadline_sensor.evaluate_tick(sensor_context(database_url, instance, late.cursor))
    assert ok.cursor == day and "succeeded" in ok.skip_message and len(_late_alerts(engine)) == 1
    # A successful run for another date does not count for this one.
    monkeypatch.setenv("PSO_NOW", datetime(2027, 7, 2, 5, 30, tzinfo=timezone.utc).isoformat())
    status_refresh_deadline_sensor.evaluate_tick(sensor_context(database_url, instance, ok.cursor))
    assert len(_late_alerts(engine)) == 2


def test_day_change_on_1_september_refreshes_everything(world, database_url, instance, monkeypatch):
    monkeypatch.setenv("PSO_NOW", "2027-09-01T06:00:00+00:00")
    result = day_change_sensor(sensor_context(database_url, instance, "2027-08-31"))
    [request] = result.run_requests
    assert request.run_config["ops"]["status_tables"]["config"]["scope"] == "all"
    assert len(request.asset_selection) == 5
    assert set(request.asset_check_keys) == set(run_check_keys(STATUS_ASSET_KEYS))  # the run's checks, not the cache's
    # An ordinary day with no session dates: cursor advances, no run.
    monkeypatch.setenv("PSO_NOW", "2027-09-03T06:00:00+00:00")
    quiet = day_change_sensor(sensor_context(database_url, instance, "2027-09-02"))
    assert quiet.run_requests == [] and quiet.cursor == "2027-09-03"


def test_day_change_first_tick_on_1_september_refreshes_everything(world, database_url, instance, monkeypatch):
    monkeypatch.setenv("PSO_NOW", "2027-09-01T06:00:00+00:00")
    first = day_change_sensor.evaluate_tick(sensor_context(database_url, instance))  # nothing handled yet
    [request] = first.run_requests
    assert request.run_config["ops"]["status_tables"]["config"]["scope"] == "all"
    assert len(request.asset_selection) == 5 and first.cursor == "2027-09-01"
    # Catching up over a range that holds a 1 September: everything too.
    monkeypatch.setenv("PSO_NOW", "2027-09-03T06:00:00+00:00")
    caught_up = day_change_sensor.evaluate_tick(sensor_context(database_url, instance, "2027-08-30"))
    assert caught_up.run_requests[0].run_config["ops"]["status_tables"]["config"]["scope"] == "all"
    # 1 September already handled: an ordinary day (no sessions on it here).
    after = day_change_sensor.evaluate_tick(sensor_context(database_url, instance, "2027-09-01"))
    assert after.run_requests == [] and after.cursor == "2027-09-03"


def test_day_change_refreshes_the_triage_of_delays_ending_since_the_last_handled_day(engine, database_url, instance,
                                                                                   monkeypatch):
    """v2 D2: a delay ending on a day in (last handled, today] asks for a triage refresh of its patient, once;
    one ending later, or invalidated, or on a triage that is not a delay, does not."""
    with engine.begin() as conn:
        w = World(conn)
        patients = [w.patient() for _ in range(5)]
        w.triage(patients[0], "hpv", "delay_vaccination", delay_until=TODAY)  # ends today
        w.triage(patients[1], "flu", "delay_vaccination", delay_until=TODAY - timedelta(days=2))  # during downtime
        w.triage(patients[2], "hpv", "delay_vaccination", delay_until=TODAY + timedelta(days=1))  # tomorrow
        w.triage(patients[3], "hpv", "delay_vaccination", delay_until=TODAY, invalidated=True)
        w.triage(patients[4], "hpv", "needs_follow_up", delay_until=TODAY)  # bad input: not a delay
        conn.execute(sa.text("DELETE FROM session_dates"))  # no sessions: only the delays ask for a run
    monkeypatch.setenv("PSO_NOW", NOW.isoformat())
    result = day_change_sensor.evaluate_tick(sensor_context(database_url, instance,
                                                            (TODAY - timedelta(days=3)).isoformat()))
    [request] = result.run_requests
    assert request.run_key == f"day_change:{TODAY.isoformat()}:delays" and result.cursor == TODAY.isoformat()
    config = request.run_config["ops"]["status_tables"]["config"]
    assert (config["scope"], config["patient_ids"], config["today"]) == ("patients", patients[:2], TODAY.isoformat())
    assert [k.path[-1] for k in request.asset_selection] == ["patient_triage_statuses"]
    # Handled up to yesterday: only today's ending.
    result = day_change_sensor.evaluate_tick(sensor_context(database_url, instance,
                                                            (TODAY - timedelta(days=1)).isoformat()))
    assert result.run_requests[0].run_config["ops"]["status_tables"]["config"]["patient_ids"] == patients[:1]
    # The run it asks for turns the expired delay into `required`.
    refresh_everything(engine, table_names=["patient_triage_statuses"])
    with engine.connect() as conn:
        w.conn = conn
        assert w.patient_status("patient_triage_statuses", patients[0], "hpv") == 1
        assert w.patient_status("patient_triage_statuses", patients[2], "hpv") == 4


def test_day_change_after_a_rollover_slept_through_refreshes_everything_once(world, database_url, instance,
                                                                           monkeypatch):
    """The daemon was down from 20 August to 5 September: one run of every table over every programme."""
    monkeypatch.setenv("PSO_NOW", "2027-09-05T09:00:00+00:00")
    result = day_change_sensor.evaluate_tick(sensor_context(database_url, instance, "2027-08-20"))
    [request] = result.run_requests
    assert request.run_key == "day_change:2027-09-05" and result.cursor == "2027-09-05"
    assert request.run_config["ops"]["status_tables"]["config"]["scope"] == "all"
    assert {k.path[-1] for k in request.asset_selection} == {
        "patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses",
        "patient_session_session_statuses", "patient_session_registration_statuses"}
    assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == (
        "flu", "td_ipv")


@pytest.mark.parametrize("handled", [None, (TODAY - timedelta(days=1)).isoformat()])
def test_day_change_waits_for_programme_partitions_without_losing_the_day(world, database_url, monkeypatch,
                                                                         handled):
    monkeypatch.setenv("PSO_NOW", NOW.isoformat())
    instance = DagsterInstance.ephemeral()  # no programme partitions yet
    early = day_change_sensor.evaluate_tick(sensor_context(database_url, instance, handled))
    assert early.run_requests == [] and early.skip_message == "no programme partitions yet"
    assert early.cursor == handled  # today is not handled yet
    instance.add_dynamic_partitions("programmes", PROGRAMMES)  # programme_added registers them later that day
    later = day_change_sensor.evaluate_tick(sensor_context(database_url, instance, early.cursor))
    [request] = later.run_requests
    assert request.run_key == f"day_change:{TODAY.isoformat()}" and later.cursor == TODAY.isoformat()
    assert request.run_config["ops"]["status_tables"]["config"]["session_ids"] == [world.main_session]


def test_refresh_requests_merge_into_one_run_and_are_marked_after_it(world, engine, database_url, instance,
                                                                     resources, set_env):
    set_env("PSO_STATUS_EVENTS", "runs")  # the run-per-batch way (inline: tests/test_statuses_events.py)
    with engine.begin() as conn:  # the triggers write the requests
        world.conn = conn
        world.consent(world.patients[2], "flu", "given", parent_id=world.parent("Parent Two"))
        world.triage(world.patients[0], "hpv", "ready_to_vaccinate")
        conn.execute(sa.text("INSERT INTO session_dates (session_id, value) VALUES (:s, :d)"),
                     {"s": world.other_session, "d": TODAY + timedelta(days=8)})
    result = status_refresh_requests_sensor(sensor_context(database_url, instance))
    [request] = result.run_requests
    config = request.run_config["ops"]["status_tables"]["config"]
    assert config["scope"] == "patients_and_sessions"
    assert config["patient_ids"] == sorted([world.patients[0], world.patients[2]])
    assert config["session_ids"] == [world.other_session]
    assert len(config["request_ids"]) == 3
    # The same pending batch on a later tick, or after a cursor reset, has the same key: Dagster
    # drops it while its first run exists.
    for cursor in (result.cursor, None):
        assert status_refresh_requests_sensor(sensor_context(database_url, instance, cursor)).run_requests[
            0].run_key == request.run_key
    # Its run failed, then the retry was cancelled: each time the batch is requested under a new key,
    # whatever the cursor says (the attempt is counted from the instance's runs of the batch).
    keys = [request.run_key]
    for status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        instance.add_run(DagsterRun(job_name="status_refresh", run_id=make_new_run_id(), status=status,
                                    tags={**request.tags, RUN_KEY_TAG: keys[-1]}))
        retries = [status_refresh_requests_sensor(sensor_context(database_url, instance, cursor)).run_requests[0]
                   for cursor in (result.cursor, None)]
        assert retries[0].run_key == retries[1].run_key not in keys
        keys.append(retries[0].run_key)
    retry = retries[0]
    assert retry.run_config == request.run_config
    from orchestration.definitions import defs

    # Run it as the daemon would: the request's assets and the run's checks, which judge its patients and sessions.
    assert set(request.asset_check_keys) == set(run_check_keys(STATUS_ASSET_KEYS))
    job = defs.resolve_job_def("status_refresh").get_subset(asset_selection=set(request.asset_selection),
                                                             asset_check_selection=set(request.asset_check_keys))
    run = job.execute_in_process(instance=instance, resources=resources, tags=request.tags,
                                 run_config=_config(**config))
    assert run.success
    evaluations = run.get_asset_check_evaluations()
    assert len(evaluations) == 10 and all(e.passed for e in evaluations)
    assert isinstance(status_refresh_requests_sensor(sensor_context(database_url, instance)), SkipReason)
    assert _status(engine, "SELECT status FROM patient_triage_statuses WHERE patient_id = :p AND programme_id = :pr",
                   p=world.patients[0], pr=world.programmes["hpv"]) == 2


def test_an_all_request_becomes_a_full_run_that_marks_earlier_requests(world, engine, database_url, instance,
                                                                       resources, set_env):
    set_env("PSO_STATUS_EVENTS", "runs")  # the run-per-batch way (inline: tests/test_statuses_events.py)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, patient_id, reason, requested_at) "
                             "VALUES (0, :p, 'old', now() - interval '2 hours')"), {"p": world.patients[0]})
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, reason) VALUES (2, 'day change')"))
    result = status_refresh_requests_sensor(sensor_context(database_url, instance))
    [request] = result.run_requests
    assert request.run_config["ops"]["status_tables"]["config"]["scope"] == "all"
    assert request.asset_check_keys is None
    with engine.begin() as conn:  # arrives while the run is queued; an `all` run marks it only if older
        conn.execute(sa.text("INSERT INTO status_refresh_requests (scope, patient_id, reason, requested_at) "
                             "VALUES (0, :p, 'stale', now() - interval '1 hour')"), {"p": world.patients[1]})
    from orchestration.definitions import defs

    config = request.run_config["ops"]["status_tables"]["config"]
    assert defs.resolve_job_def("status_refresh").execute_in_process(
        instance=instance, resources=resources, tags=request.tags, run_config=_config(**config)).success
    assert _status(engine, "SELECT count(*) FROM status_refresh_requests WHERE processed_at IS NULL") == 0
    assert _counts(engine, "patient_consent_statuses") == 12


def _finished_import(engine, touched) -> int:
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO sync_runs (source, started_at, finished_at, all_succeeded, touched) "
            "VALUES ('immunisation_import', :t, :t, true, CAST(:touched AS jsonb)) RETURNING id"),
            {"t": NOW, "touched": json.dumps(touched)}).scalar_one()


def test_sync_complete_requests_a_patient_scoped_refresh(world, engine, database_url, monkeypatch):
    sync_id = _finished_import(engine, [world.patients[2], world.patients[0]])
    _finished_import(engine, [])  # touched nobody: nothing to refresh
    from orchestration.definitions import defs

    # The handler reads through the sensor's own postgres resource: settings pointing elsewhere do not matter.
    monkeypatch.setenv("PSO_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/nowhere")
    get_settings.cache_clear()
    with instance_for_test() as instance:  # persistent: resolving partitioned run requests needs a ref
        instance.add_dynamic_partitions("programmes", ["hpv"])  # programme_added has not run for the others yet
        context = build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                       resources={"postgres": PostgresResource(database_url=database_url)})
        result = sync_complete_sensor.evaluate_tick(context)
    # The programmes held in sessions but not registered yet are added in the same tick, so the
    # partitioned run requests are valid.
    assert [(r.partitions_def_name, sorted(r.partition_keys)) for r in result.dynamic_partitions_requests] == [
        ("programmes", ["flu", "menacwy", "td_ipv"])]
    assert {r.partition_key for r in result.run_requests} == set(PROGRAMMES)
    for request in result.run_requests:
        assert request.run_key == f"sync_complete:{sync_id}:{request.partition_key}"
        assert request.job_name == "status_refresh"
        config = request.run_config["ops"]["status_tables"]["config"]
        assert config["scope"] == "patients"
        assert config["patient_ids"] == sorted([world.patients[0], world.patients[2]])
        assert set(request.asset_check_keys) == set(run_check_keys(STATUS_ASSET_KEYS))


def test_nightly_schedule_is_one_full_run_at_03_london():
    when = datetime(2026, 7, 2, 2, 0, tzinfo=timezone.utc)  # 03:00 BST
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("programmes", PROGRAMMES)
        request = status_refresh_nightly(build_schedule_context(instance=instance, scheduled_execution_time=when))
    assert isinstance(request, RunRequest)
    assert request.run_key == "status_refresh_nightly:2026-07-02"
    assert request.tags[NIGHTLY_DATE_TAG] == "2026-07-02"
    assert request.run_config["ops"]["status_tables"]["config"]["scope"] == "all"
    assert request.run_config["ops"]["status_tables"]["config"]["today"] == "2026-07-02"
    assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == (
        "flu", "td_ipv")
    assert status_refresh_nightly.execution_timezone == "Europe/London"
    assert status_refresh_nightly.cron_schedule == "0 3 * * *"


def test_explain_prints_statuses_and_inputs_without_names(world, engine, capsys):
    refresh_everything(engine)
    with engine.connect() as conn:
        explanation = explain_statuses(conn, world.patients[1], "hpv", TODAY)
    text = format_explanation(explanation)
    assert "patient_consent_statuses" in text and ": refused (recomputed: refused)" in text
    assert "consents (the academic year each counts in" in text and "response=1" in text
    assert "academic year judged 2026" in text and "counts: in L(2026)" in text
    for name in ("Testy", "Fakename", "Parent One"):
        assert name not in text
    from orchestration.cli import main

    assert main(["explain", str(world.patients[0]), "hpv", "--today", TODAY.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "patient_session_session_statuses" in out and "absent_from_session" in out
    assert "attending=False" in out
