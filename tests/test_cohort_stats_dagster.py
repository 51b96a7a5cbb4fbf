"""Cohort stats Dagster wiring: materialize with a partition key, the schedule, the registry sensor,
the sync-complete handler, the expiry check, the CLI, and the synthetic generator."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from dagster import AssetSelection, Definitions, SkipReason, build_schedule_context, build_sensor_context, instance_for_test, materialize

from assets import cohort_stats as cs
from orchestration import schema
from orchestration.clock import london_today
from schedules.cohort_stats import facility_stats_aot_schedule
from sensors import cohort_stats as sensors_cs
from sensors.sync import SyncRun, SyncTick
from tests.test_cohort_stats import add_patient, set_settings, small_unit

UTC = timezone.utc
NOW = datetime(2024, 7, 10, 12, 0, tzinfo=UTC)
ALL = [*cs.SOURCE_SPECS, cs.facility_record_counts, cs.facility_stats_dialysis, cs.facility_stats_demographics,
       *cs.asset_checks]


def family_definitions(resources) -> Definitions:
    return Definitions(assets=ALL, jobs=cs.jobs, schedules=[facility_stats_aot_schedule],
                       sensors=sensors_cs.sensors, resources=resources)


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setenv("PSO_NOW", NOW.isoformat())


@pytest.fixture
def instance():
    with instance_for_test() as inst:  # has an instance ref, which schedule contexts need
        yield inst


@pytest.fixture
def units(engine):
    with engine.begin() as conn:
        small_unit(conn, "BIG", patients=4)
        small_unit(conn, "SMALL", patients=2)
        add_patient(conn, "nf1", "NOFAC")
        add_patient(conn, "nf2", "NOFAC")
        add_patient(conn, "nf3", "NOFAC")
        add_patient(conn, "nf4", "NOFAC")
    set_settings(engine, aot_min_records=3)
    return engine


def stats_rows(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT facility_code, stats_kind, window_end, expires_at - computed_at AS ttl "
                                    "FROM facility_stats ORDER BY 1, 2, 3")).all()


def test_materialize_partition_writes_stats_and_readable_metadata(units, resources, instance, frozen):
    instance.add_dynamic_partitions("renal_units", ["BIG"])
    result = materialize(ALL, partition_key="BIG", resources=resources, instance=instance)
    assert result.success
    rows = stats_rows(units)
    # dialysis only (aot_kinds default), W1 and W2, TTL 8 h
    assert [(r[0], r[1], r[3]) for r in rows] == [("BIG", "dialysis", timedelta(hours=8))] * 2
    mat = result.asset_materializations_for_node("facility_stats_dialysis")[0]
    table = [r.data for r in mat.metadata["stats"].records]  # MetadataValue.table: one row per window and modality
    assert {"window": "W1", "from": "2024-04-11", "to": "2024-07-10", "modality": "HD In-centre", "all": 4,
            "incident": 4, "prevalent": 4} in table
    assert [r["window"] for r in table if r["modality"] == "Total"] == ["W1", "W2"]
    frequency = [r.data for r in mat.metadata["stats sessions/week"].records]
    assert len(frequency) == 28 and frequency[13]["sessions_per_week"] == "6.5–7 and above"
    assert mat.metadata["stored"].value == 2
    counts = result.asset_materializations_for_node("facility_record_counts")[0]
    assert counts.metadata["units above cutoff"].value == 1  # NOFAC is above but has no facility row
    skipped = counts.metadata["above cutoff without facility row (skipped)"].records  # MetadataValue.table
    assert [r.data["facility_code"] for r in skipped] == ["NOFAC"]
    assert counts.metadata["dagster/table_name"].value == "public.facility_record_counts"
    assert counts.metadata["dagster/row_count"].value >= 1
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"no_expired_aot_entries": True}
    # Re-running the partition changes nothing (within skip_if_fresher_than).
    again = materialize(ALL, partition_key="BIG", resources=resources, instance=instance)
    assert again.asset_materializations_for_node("facility_stats_dialysis")[0].metadata["skipped_fresh"].value == 2
    assert stats_rows(units) == rows


def test_materialize_fails_at_the_end_naming_the_unit(units, resources, instance, frozen, monkeypatch):
    instance.add_dynamic_partitions("renal_units", ["BIG"])
    monkeypatch.setitem(cs.CALCULATORS, "dialysis", lambda *a: 1 / 0)
    result = materialize(ALL, partition_key="BIG", resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "BIG" in failure.step_failure_data.error.message


def test_metadata_tables_for_demographics_and_empty_cohorts(engine):
    with engine.begin() as conn:
        conn.execute(schema.facility.insert(), [{"code": "D1"}, {"code": "E1"}])
        add_patient(conn, "a", "D1", birth="2000-07-05T00:00", gender="2", ethnic="M")
        add_patient(conn, "b", "D1", birth="1995-01-01T00:00", gender="1", ethnic="A")
    w1, w2 = cs.stats_windows(london_today(NOW))
    with engine.connect() as conn:
        demo = [(w.name.upper(), cs.demographics_stats(conn, "D1", w)) for w in (w1, w2)]
        empty = [("W1", cs.dialysis_stats(conn, "E1", w1))]
    rows = [r.data for r in cs.demographics_tables(demo)[""].records]
    ages = [(r["window"], r["category"], r["patients"]) for r in rows if r["measure"] == "age band"]
    assert ages == [("W1", "20–29", 2), ("W1", "Unknown", 0), ("W2", "20–29", 2), ("W2", "Unknown", 0)]
    assert {"window": "W2", "on": "2024-07-10", "measure": "ethnic group", "category": "Black", "patients": 1} in rows
    tables = cs.dialysis_tables(empty)
    assert list(tables) == [""] and [r.data["modality"] for r in tables[""].records] == ["(empty cohort)"]


def test_expiry_check_fails_when_an_above_cutoff_entry_expired(units, resources, instance, monkeypatch):
    instance.add_dynamic_partitions("renal_units", ["BIG"])
    monkeypatch.setenv("PSO_NOW", NOW.isoformat())
    materialize(ALL, partition_key="BIG", resources=resources, instance=instance)
    # Nine hours later the refresh has not happened: SMALL is not above the cutoff, BIG is → fail.
    monkeypatch.setenv("PSO_NOW", (NOW + timedelta(hours=9)).isoformat())
    result = materialize(ALL, resources=resources, instance=instance, selection=AssetSelection.checks(cs.asset_checks[0]))
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and "BIG" in evaluation.description


def test_schedule_reads_settings_at_each_tick(units, resources, instance):
    instance.add_dynamic_partitions("renal_units", ["BIG", "SMALL"])
    tick = datetime(2024, 7, 10, 8, 0, tzinfo=UTC)

    repo = family_definitions(resources).get_repository_def()

    def evaluate():
        with build_schedule_context(instance=instance, scheduled_execution_time=tick, resources=resources,
                                    repository_def=repo) as ctx:
            return facility_stats_aot_schedule.evaluate_tick(ctx)

    data = evaluate()
    assert [r.partition_key for r in data.run_requests] == ["BIG"]  # SMALL (2 records) is at or below 3
    request = data.run_requests[0]
    assert request.run_key == "aot:2024-07-10T08:00:BIG" and request.job_name == cs.JOB_NAME
    assert [k.path[-1] for k in request.asset_selection] == ["facility_record_counts", "facility_stats_dialysis"]
    # Lower the cutoff and add a kind: the next tick includes SMALL and demographics, no restart.
    set_settings(units, aot_min_records=1, aot_kinds=["dialysis", "demographics"])
    data = evaluate()
    assert [r.partition_key for r in data.run_requests] == ["BIG", "SMALL"]
    assert [k.path[-1] for k in data.run_requests[0].asset_selection] == [
        "facility_record_counts", "facility_stats_dialysis", "facility_stats_demographics"]
    assert set(data.run_requests[0].run_config["ops"]) == {"facility_stats_dialysis", "facility_stats_demographics"}
    set_settings(units, aot_min_records=100)
    assert evaluate().run_requests == []


def registry_tick(instance, resources):
    """One tick of the registry, its observations recorded as the daemon records them."""
    with build_sensor_context(instance=instance, resources=resources,
                              definitions=family_definitions(resources)) as ctx:
        result = sensors_cs.renal_units_registry(ctx)  # the raw SensorResult / SkipReason
    for event in getattr(result, "asset_events", None) or []:
        instance.report_runless_asset_event(event)
    return result


def test_registry_sensor_registers_eligible_units_and_fills_missing(units, resources, instance, frozen):
    def tick():
        return registry_tick(instance, resources)

    result = tick()
    assert [r.partitions_def_name for r in result.dynamic_partitions_requests] == ["renal_units"]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == ["BIG"]
    assert [(r.partition_key, r.run_key) for r in result.run_requests] == [("BIG", "fill:BIG:dialysis:missing:2024-07-10")]
    instance.add_dynamic_partitions("renal_units", ["BIG"])
    # Once the entries exist, the next tick has nothing to do.
    with units.connect() as conn:
        cs.refresh_units(conn, ["BIG"], "dialysis", NOW)
    result = tick()
    assert isinstance(result, SkipReason)
    # A lower cutoff registers SMALL at the next tick.
    set_settings(units, aot_min_records=1)
    result = tick()
    assert list(result.dynamic_partitions_requests[0].partition_keys) == ["SMALL"]
    assert [r.partition_key for r in result.run_requests] == ["SMALL"]


def test_upgrading_a_calculator_recomputes_precomputed_entries_without_a_manual_step(units, resources, instance, frozen):
    instance.add_dynamic_partitions("renal_units", ["BIG"])
    with units.connect() as conn:
        cs.refresh_units(conn, ["BIG"], "dialysis", NOW - timedelta(minutes=1))
        # As a deployment of the previous calculator left them: unexpired, computed a minute ago.
        conn.execute(sa.text("UPDATE facility_stats SET calculator_version = 'pso-dialysis-1'"))
        conn.commit()
    result = registry_tick(instance, resources)
    assert [(r.partition_key, r.run_key) for r in result.run_requests] == [("BIG", "fill:BIG:dialysis:expired:20240710T12")]
    request = result.run_requests[0]
    job = family_definitions(resources).resolve_job_def(cs.JOB_NAME)
    run = job.get_subset(asset_selection=set(request.asset_selection)).execute_in_process(
        instance=instance, partition_key="BIG", run_config=request.run_config, resources=resources)
    assert run.success  # not forced, within skip_if_fresher_than, yet both windows recomputed
    assert run.asset_materializations_for_node("facility_stats_dialysis")[0].metadata["stored"].value == 2
    with units.connect() as conn:
        versions = conn.execute(sa.text("SELECT DISTINCT calculator_version FROM facility_stats")).scalars().all()
    assert versions == [cs.CALCULATOR_VERSIONS["dialysis"]]
    assert isinstance(registry_tick(instance, resources), SkipReason)


def test_sync_complete_refreshes_touched_units(units, resources, instance, frozen):
    run = SyncRun(id=42, source="renal_feed", replica_id=None, started_at=NOW, finished_at=NOW, all_succeeded=True,
                  touched=["SMALL", "BIG", "NOFAC", "bad,code"])
    with units.connect() as conn:
        tick = SyncTick(conn, instance)
        reaction = sensors_cs.on_sync_complete(run, tick)
        nothing = sensors_cs.on_sync_complete(SyncRun(43, "renal_feed", None, NOW, NOW, True, None), tick)
    assert [(r.partition_key, r.run_key) for r in reaction.run_requests] == [
        ("BIG", "renal_feed:42:BIG"), ("SMALL", "renal_feed:42:SMALL")]
    assert reaction.run_requests[0].run_config["ops"]["facility_stats_dialysis"]["config"] == {
        "force": True, "reason": "renal_feed:42"}
    assert list(reaction.dynamic_partitions_requests[0].partition_keys) == ["BIG", "SMALL"]
    assert nothing.run_requests == []
    # The requests run as they are: partition added, subset of the job, run config accepted.
    instance.add_dynamic_partitions("renal_units", list(reaction.dynamic_partitions_requests[0].partition_keys))
    job = family_definitions(resources).resolve_job_def(cs.JOB_NAME)
    for request in reaction.run_requests:
        result = job.get_subset(asset_selection=set(request.asset_selection)).execute_in_process(
            run_config=request.run_config, partition_key=request.partition_key, instance=instance, tags=request.tags)
        assert result.success
    # BIG (above the cutoff) got dialysis for W1 and W2; SMALL had no cached entry, so nothing was precomputed.
    assert [(r[0], r[1]) for r in stats_rows(units)] == [("BIG", "dialysis")] * 2


def test_cli_stats_get_prints_json(units, capsys, frozen):
    from orchestration.cli import main

    assert main(["stats", "get", "SMALL", "--kind", "demographics"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["source"] == "computed" and first["population"] == 2 and first["payload"]["gender"]["Male"] == 2
    assert main(["stats", "get", "SMALL", "--kind", "demographics"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "fresh"
    assert main(["stats", "get", "NOFAC"]) == 4


def test_synthetic_generator_loads_bad_input_that_the_calculators_survive(database_url, engine):
    from orchestration.synthetic import seed_all

    seed_all(database_url, scale=0.2, families=["orchestration.synthetic.cohort_stats"], now=NOW, echo=lambda *_: None)
    with engine.connect() as conn:
        counts = {c.facility_code: c for c in cs.ukrdc_record_counts(conn)}
        assert not counts["RXX99"].has_facility and counts["RAJ01"].has_facility
        settings = cs.read_stats_settings(conn)
        conn.commit()
        assert settings.aot_min_records == 450
        assert conn.execute(sa.text("SELECT count(*) FROM patient WHERE birthtime IS NULL")).scalar() > 0
        assert conn.execute(sa.text("SELECT count(*) FROM treatment WHERE totime IS NULL")).scalar() > 0
        done, failed = cs.refresh_units(conn, sorted(counts), "dialysis", NOW, force=True,
                                        settings=cs.StatsSettings(1, ("dialysis",), timedelta(hours=1),
                                                                  timedelta(hours=8)))
        assert failed == {}
        by_unit = {d.unit: d for d in done}
        assert by_unit["RXX99"].skipped_reason == "no facility row"
        assert by_unit["RAJ01"].outcomes[0].values["population"] > 0
        demo = cs.demographics_stats(conn, "RAJ01", cs.window_named(london_today(NOW), "w1"))
        assert demo["population"] > 0 and set(demo["payload"]["gender"]) == set(cs.GENDERS)
