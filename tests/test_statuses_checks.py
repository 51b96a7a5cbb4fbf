"""The status checks judge what a run covered (issue 17, item 4): a partition run's checks judge its
programmes, a scoped run's its patients and sessions, in the refresh's own step; the whole cache is
judged by the `status_checks` job (05:00 London) — against a real Postgres, no mocks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster import AssetCheckKey, AssetKey, RunRequest, build_schedule_context, instance_for_test, materialize

from assets.statuses import STATUS_TABLE_NAMES, status_coverage, status_drift
from orchestration.definitions import defs
from orchestration.schema import ConsentStatus, VaccinationStatus
from schedules.statuses import status_checks_daily
from test_statuses_helpers import TODAY, World, refresh_everything
from test_statuses_helpers import instance  # noqa: F401 - a fixture, used by name

NOW = datetime(TODAY.year, TODAY.month, TODAY.day, 10, 0, tzinfo=timezone.utc)
RUN_CHECKS = ("no_drift", "every_expected_row_exists")


@pytest.fixture
def world(engine):
    """Three year-10 patients in two sessions (patients 0 and 1 in the main one, 2 in the other)."""
    with engine.begin() as conn:
        w = World(conn)
        w.other_session = w.session(["hpv", "flu"], [TODAY + timedelta(days=7)])
        w.patients = [w.patient() for _ in range(3)]
        w.ps = [w.patient_session(w.patients[0]), w.patient_session(w.patients[1]),
                w.patient_session(w.patients[2], w.other_session)]
        w.consent(w.patients[0], "hpv", "given", parent_id=w.parent("Parent Zero"))
        w.consent(w.patients[1], "hpv", "refused", parent_id=w.parent("Parent One"))
        w.attendance(w.ps[0], False)
        conn.execute(sa.text("DELETE FROM status_refresh_requests"))
    return w


def _run(instance, resources, programme, checks_only=False, **config):
    """A `status_refresh` run of one programme partition, as the daemon would run it (in process):
    the refresh and its checks, or (`checks_only`) its checks alone, as the UI can select them."""
    job = defs.resolve_job_def("status_refresh")
    if checks_only:
        job = job.get_subset(asset_selection=set(), asset_check_selection={
            AssetCheckKey(AssetKey(n), c) for n in STATUS_TABLE_NAMES for c in RUN_CHECKS})
    config = {"scope": "all", "today": TODAY.isoformat(), **config}
    result = job.execute_in_process(instance=instance, resources=resources, partition_key=programme,
                                    run_config={"ops": {"status_tables": {"config": config}}})
    assert result.success
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}, result


def _rows(evaluation, name):
    return [r.data for r in evaluation.metadata[name].value.records]


def test_one_programme_of_an_empty_cache_refreshed_every_check_passes(world, engine, instance, resources):
    evaluations, result = _run(instance, resources, "flu")
    # Every check of the run, evaluated in the refresh's own step: drift and coverage of the five tables.
    assert set(evaluations) == {(n, c) for n in STATUS_TABLE_NAMES for c in RUN_CHECKS}
    assert [e.check_name for e in evaluations.values() if not e.passed] == []
    assert {e.metadata["programmes"].value for e in evaluations.values()} == {"flu"}
    assert {step.step_key for step in result.all_node_events if step.step_key} == {"status_tables"}
    # The other programmes are still empty: the whole cache is not complete, and the run did not say so.
    with engine.connect() as conn:
        missing = status_coverage(conn, TODAY, ["patient_consent_statuses"])["patient_consent_statuses"]
    assert {r["programme"] for r in missing} == {"hpv", "menacwy", "td_ipv"}
    # Dagster's metadata: the table, what the run wrote.
    [consent] = [m for m in result.asset_materializations_for_node("status_tables")
                 if m.asset_key == AssetKey("patient_consent_statuses")]
    assert consent.metadata["dagster/table_name"].value == "public.patient_consent_statuses"
    assert consent.metadata["rows_written"].value == consent.metadata["rows_seeded"].value == 3
    assert [r.data["programme"] for r in consent.metadata["per_programme"].value.records] == ["flu"]


def test_a_wrong_row_fails_the_drift_check_of_a_run_covering_it_and_names_its_ids(world, engine, instance, resources):
    refresh_everything(engine)
    hpv = world.programmes["hpv"]
    with engine.begin() as conn:  # a wrong value, as a writer outside the refresh could leave it
        conn.execute(sa.text("UPDATE patient_consent_statuses SET status = :s WHERE patient_id = :p "
                             "AND programme_id = :pr"), {"s": ConsentStatus.GIVEN, "p": world.patients[1], "pr": hpv})
    # A run of another programme does not judge it.
    flu, _ = _run(instance, resources, "flu", checks_only=True)
    assert all(e.passed for e in flu.values())
    evaluations, _ = _run(instance, resources, "hpv", checks_only=True)
    drift = evaluations[("patient_consent_statuses", "no_drift")]
    assert not drift.passed and drift.metadata["mismatched"].value == 1
    assert _rows(drift, "mismatched_rows") == [
        {"patient_id": world.patients[1], "programme_id": hpv, "programme": "hpv",
         "cached": ConsentStatus.GIVEN, "computed": ConsentStatus.REFUSED}]
    assert [k for k, e in evaluations.items() if not e.passed] == [("patient_consent_statuses", "no_drift")]
    # The refresh of the partition repairs it, and its checks then pass.
    repaired, _ = _run(instance, resources, "hpv")
    assert all(e.passed for e in repaired.values())


def test_a_scoped_runs_checks_judge_only_its_patients_and_sessions(world, engine, instance, resources):
    refresh_everything(engine)
    hpv = world.programmes["hpv"]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE patient_consent_statuses SET status = :s WHERE patient_id = :p "
                             "AND programme_id = :pr"), {"s": ConsentStatus.GIVEN, "p": world.patients[1], "pr": hpv})
        conn.execute(sa.text("DELETE FROM patient_triage_statuses WHERE patient_id = :p AND programme_id = :pr"),
                     {"p": world.patients[2], "pr": hpv})
    # A run over patient 0: refreshed and judged alone, so the rows of patients 1 and 2 stay out of it.
    evaluations, _ = _run(instance, resources, "hpv", scope="patients", patient_ids=[world.patients[0]])
    assert len(evaluations) == 10 and all(e.passed for e in evaluations.values())
    assert evaluations[("patient_consent_statuses", "no_drift")].metadata["scope"].value == "1 patient(s)"
    # Checks over patient 1 name its wrong row, every row of the patient recomputed (no sample).
    evaluations, _ = _run(instance, resources, "hpv", checks_only=True, scope="patients",
                          patient_ids=[world.patients[1]])
    assert [k for k, e in evaluations.items() if not e.passed] == [("patient_consent_statuses", "no_drift")]
    assert [r["patient_id"] for r in _rows(evaluations[("patient_consent_statuses", "no_drift")],
                                           "mismatched_rows")] == [world.patients[1]]
    # Checks over the other session reach patient 2: its missing triage row is named.
    evaluations, _ = _run(instance, resources, "hpv", checks_only=True, scope="sessions",
                          session_ids=[world.other_session])
    assert [k for k, e in evaluations.items() if not e.passed] == [("patient_triage_statuses",
                                                                     "every_expected_row_exists")]
    assert _rows(evaluations[("patient_triage_statuses", "every_expected_row_exists")], "missing_rows") == [
        {"patient_id": world.patients[2], "programme_id": hpv, "programme": "hpv"}]


def test_the_whole_cache_job_finds_a_wrong_row_no_run_touched(world, engine, instance, resources, monkeypatch):
    refresh_everything(engine)
    menacwy = world.programmes["menacwy"]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE patient_vaccination_statuses SET status = :s WHERE patient_id = :p "
                             "AND programme_id = :pr"),
                     {"s": VaccinationStatus.VACCINATED, "p": world.patients[0], "pr": menacwy})
    flu, _ = _run(instance, resources, "flu")
    assert all(e.passed for e in flu.values())  # the flu run neither touched nor judged it
    monkeypatch.setenv("PSO_NOW", NOW.isoformat())
    result = defs.resolve_job_def("status_checks").execute_in_process(instance=instance, resources=resources)
    assert result.success
    evaluations = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert len(evaluations) == 11
    failed = [k for k, e in evaluations.items() if not e.passed]
    assert failed == [("patient_vaccination_statuses", "whole_cache_no_drift")]
    drift = evaluations[failed[0]]
    assert drift.metadata["programmes"].value == "every programme"
    assert [(r["patient_id"], r["programme"], r["cached"]) for r in _rows(drift, "mismatched_rows")] == [
        (world.patients[0], "menacwy", VaccinationStatus.VACCINATED)]


def test_whole_cache_checks_inside_a_partition_run_judge_its_partition(world, instance, resources):
    """A UI materialization of a partition also selects the whole-cache checks of the tables: they then
    judge that partition (and its date), so a healthy first refresh of flu is green there too."""
    from assets.statuses import asset_checks, status_tables

    config = {"scope": "all", "today": TODAY.isoformat()}
    result = materialize([status_tables, *asset_checks], partition_key="flu", resources=resources,
                         instance=instance, run_config={"ops": {"status_tables": {"config": config}}})
    evaluations = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert len(evaluations) == 21  # the run's 10, the whole-cache 10 and bad input
    assert [k for k, e in evaluations.items() if not e.passed] == []
    whole = evaluations[("patient_consent_statuses", "whole_cache_every_expected_row_exists")]
    assert (whole.metadata["programmes"].value, whole.metadata["today"].value) == ("flu", TODAY.isoformat())
    # A single-run backfill over a range of partitions (flu..hpv): both judge the range.
    result = materialize([status_tables, *asset_checks], resources=resources, instance=instance,
                         tags={ASSET_PARTITION_RANGE_START_TAG: "flu", ASSET_PARTITION_RANGE_END_TAG: "hpv"},
                         run_config={"ops": {"status_tables": {"config": config}}})
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 21 and all(e.passed for e in evaluations)
    assert {e.metadata["programmes"].value for e in evaluations if "programmes" in e.metadata} == {"flu, hpv"}


def test_the_whole_cache_checks_run_at_05_london_after_the_nightly_refresh():
    when = datetime(2026, 7, 2, 4, 0, tzinfo=timezone.utc)  # 05:00 BST
    with instance_for_test() as inst:
        request = status_checks_daily(build_schedule_context(instance=inst, scheduled_execution_time=when))
    assert isinstance(request, RunRequest) and request.run_key == "status_checks_daily:2026-07-02"
    assert status_checks_daily.job_name == "status_checks"
    assert (status_checks_daily.cron_schedule, status_checks_daily.execution_timezone) == ("0 5 * * *",
                                                                                           "Europe/London")


def test_a_day_change_run_judges_its_tables_over_its_sessions(world, engine, instance, resources):
    """A run of some tables (day_change: the two date-dependent ones) over some sessions: its checks are
    those of its tables, judging its sessions' rows in every programme of the run — named in the run
    request (`run_check_keys`), or left to Dagster, which adds the tables' whole-cache checks: those then
    judge the run's scope too, so a wrong row outside it paints nothing red."""
    from assets.statuses import DATE_DEPENDENT_KEYS, run_check_keys

    refresh_everything(engine)
    with engine.begin() as conn:  # a wrong row in a session the run does not cover
        conn.execute(sa.text("UPDATE patient_session_session_statuses SET status = 1 WHERE patient_session_id = :ps"),
                     {"ps": world.ps[2]})
    config = {"scope": "sessions", "session_ids": [world.main_session], "today": TODAY.isoformat()}
    tags = {ASSET_PARTITION_RANGE_START_TAG: "flu", ASSET_PARTITION_RANGE_END_TAG: "td_ipv"}
    named = set(run_check_keys(DATE_DEPENDENT_KEYS))
    assert {(k.asset_key.path[-1], k.name) for k in named} == {(k.path[-1], c) for k in DATE_DEPENDENT_KEYS
                                                               for c in RUN_CHECKS}
    for check_selection, count in ((named, 4), (None, 8)):
        job = defs.resolve_job_def("status_refresh").get_subset(asset_selection=set(DATE_DEPENDENT_KEYS),
                                                                 asset_check_selection=check_selection)
        result = job.execute_in_process(instance=instance, resources=resources, tags=tags,
                                        run_config={"ops": {"status_tables": {"config": config}}})
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == count and all(e.passed for e in evaluations)
        assert {e.metadata["programmes"].value for e in evaluations} == {"flu, hpv, menacwy, td_ipv"}
        assert {e.metadata["scope"].value for e in evaluations} == {f"session(s) {world.main_session}"}
    # The whole cache still has the wrong row.
    with engine.connect() as conn:
        drift = status_drift(conn, TODAY, table_names=["patient_session_session_statuses"])
    assert sorted((r["patient_session_id"], r["programme"]) for r in drift["patient_session_session_statuses"]) == [
        (world.ps[2], "flu"), (world.ps[2], "hpv")]
