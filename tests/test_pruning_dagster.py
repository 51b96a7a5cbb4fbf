"""Pruning in Dagster: partitioned materializations, the sync-complete handler, the replica
registry sensor and the 04:00 London maintenance schedule."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from dagster import (
    Definitions,
    RunConfig,
    build_schedule_context,
    DagsterInstance,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from assets import pruning
from assets.pruning import MaintenanceConfig, SyncGroupPruneConfig
from orchestration.schema import create_replica_schema
from resources.postgres import PostgresResource
from schedules.pruning import replica_maintenance_schedule
from sensors.pruning import MAX_NEW_REPLICAS_PER_TICK, on_sync_complete, prune_run_key, replica_registry_sensor
from sensors.cursors import HighWaterCursor
from sensors.sync import SyncRun
from sensors.sync_complete import sync_complete_sensor

IN, OUT = uuid.UUID(int=1), uuid.UUID(int=3)


@pytest.fixture
def postgres(database_url) -> PostgresResource:
    return PostgresResource(database_url=database_url)


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


def _defs(postgres) -> Definitions:
    return Definitions(assets=pruning.assets, asset_checks=pruning.asset_checks, jobs=pruning.jobs,
                       sensors=[replica_registry_sensor],  # sync_complete targets every family: see the full defs
                       schedules=[replica_maintenance_schedule], resources={"postgres": postgres})


def _replica(engine, replica_id: str, outside_patients: int = 2, switched_at=None, last_maintenance_at=None):
    with engine.begin() as conn:
        create_replica_schema(conn, replica_id)
        s = f"replica_{replica_id}"
        conn.execute(sa.text(f"INSERT INTO {s}.facility VALUES (:i, 'g1'), (:o, 'g2')"), {"i": IN, "o": OUT})
        for n in range(outside_patients + 1):
            address = uuid.uuid4()
            conn.execute(sa.text(f"INSERT INTO {s}.patient_address VALUES (:a)"), {"a": address})
            conn.execute(sa.text(f"INSERT INTO {s}.patient (uuid, address_uuid, registered_facility_id, sync_status, "
                                 "deleted_at) VALUES (gen_random_uuid(), :a, :f, 'DONE', :d)"),
                         {"a": address, "f": IN if n == 0 else OUT, "d": None if n else datetime.now(timezone.utc)})
        conn.execute(sa.text("INSERT INTO replica_state VALUES (:r, :f, :s, :m)"),
                     {"r": replica_id, "f": IN, "s": switched_at, "m": last_maintenance_at})


def _sync_run(engine, replica_id, succeeded=True, finished=True, source="replica") -> int:
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO sync_runs (source, replica_id, started_at, finished_at, all_succeeded) "
            "VALUES (:src, :r, :s, :f, :ok) RETURNING id"),
            {"src": source, "r": replica_id, "s": now - timedelta(minutes=3), "f": now if finished else None,
             "ok": succeeded}).scalar_one()


def _prune_runs(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM prune_runs ORDER BY id")).mappings().all()


def test_materialize_sync_group_prune_partition(engine, postgres, instance):
    _replica(engine, "north", outside_patients=3)
    run_id = _sync_run(engine, "north")
    instance.add_dynamic_partitions("replicas", ["north"])
    result = materialize(
        [pruning.replica_sync_group_prune], partition_key="north", instance=instance,
        resources={"postgres": postgres},
        run_config=RunConfig(ops={"replica_sync_group_prune": SyncGroupPruneConfig(sync_run_id=run_id)}),
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("replica_sync_group_prune")
    metadata = materialization.metadata
    [row] = _prune_runs(engine)
    assert row["sync_run_id"] == run_id and row["kind"] == "sync_group"
    assert metadata["deleted"].data == row["deleted"]
    assert row["deleted"]["patient"] == 3 and metadata["rows_deleted"].value == 6  # 3 patients + their addresses
    assert metadata["prune_run_id"].value == row["id"]
    tables = {r.data["table"]: r.data for r in metadata["tables"].records}  # the same counts, as a table
    assert {t: r["deleted"] for t, r in tables.items() if r["deleted"]} == {
        t: n for t, n in row["deleted"].items() if n}
    assert all(r["pending_before"] == r["pending_after"] for r in tables.values())
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "no_pending_rows_deleted" and check.passed
    # Idempotent: a second run of the same partition deletes nothing.
    again = materialize([pruning.replica_sync_group_prune], partition_key="north", instance=instance,
                        resources={"postgres": postgres})
    assert again.asset_materializations_for_node("replica_sync_group_prune")[0].metadata["rows_deleted"].value == 0


def test_materialize_sync_group_prune_inside_grace_records_skip(engine, postgres, instance):
    _replica(engine, "south", switched_at=datetime.now(timezone.utc) - timedelta(hours=2))
    instance.add_dynamic_partitions("replicas", ["south"])
    result = materialize([pruning.replica_sync_group_prune], partition_key="south", instance=instance,
                         resources={"postgres": postgres})
    metadata = result.asset_materializations_for_node("replica_sync_group_prune")[0].metadata
    [row] = _prune_runs(engine)
    assert "grace" in row["skipped_reason"] and row["deleted"] is None
    assert metadata["skipped_reason"].value == row["skipped_reason"]


def test_materialize_maintenance_and_overdue_check(engine, postgres, instance):
    _replica(engine, "east", outside_patients=1)  # never maintained; one soft-deleted DONE patient
    _replica(engine, "west", last_maintenance_at=datetime.now(timezone.utc) - timedelta(days=1))
    instance.add_dynamic_partitions("replicas", ["east", "west"])
    result = materialize([pruning.replica_maintenance_asset, pruning.maintenance_not_overdue], partition_key="east",
                         instance=instance, resources={"postgres": postgres})
    assert result.success
    metadata = result.asset_materializations_for_node("replica_maintenance")[0].metadata
    assert metadata["deleted"].data["patient"] == 1
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["no_pending_rows_deleted"].passed
    assert checks["maintenance_not_overdue"].passed  # east was just maintained, west one day ago
    # West: not due, recorded as skipped; forcing it runs the purge.
    west = materialize([pruning.replica_maintenance_asset], partition_key="west", instance=instance,
                       resources={"postgres": postgres})
    assert west.asset_materializations_for_node("replica_maintenance")[0].metadata["skipped_reason"].value.startswith(
        "not due")
    forced = materialize([pruning.replica_maintenance_asset], partition_key="west", instance=instance,
                         resources={"postgres": postgres},
                         run_config=RunConfig(ops={"replica_maintenance": MaintenanceConfig(force=True)}))
    assert forced.asset_materializations_for_node("replica_maintenance")[0].metadata["skipped_reason"].value == ""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE replica_state SET last_maintenance_at = now() - interval '9 days' "
                             "WHERE replica_id = 'west'"))
    overdue = materialize([pruning.replica_maintenance_asset, pruning.maintenance_not_overdue],
                          partition_key="east", instance=instance, resources={"postgres": postgres})
    check = {c.check_name: c for c in overdue.get_asset_check_evaluations()}["maintenance_not_overdue"]
    assert not check.passed and check.metadata["overdue_replicas"].data == ["west"]


def test_materialize_replica_without_schema_fails_naming_it(engine, postgres, instance):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO replica_state (replica_id) VALUES ('ghost')"))
    instance.add_dynamic_partitions("replicas", ["ghost"])
    result = materialize([pruning.replica_sync_group_prune], partition_key="ghost", instance=instance,
                         resources={"postgres": postgres}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "replica 'ghost' has no schema 'replica_ghost'" in failure.step_failure_data.error.to_string()


# ---------------------------------------------------------------------------------------------
# sync_complete → on_sync_complete
# ---------------------------------------------------------------------------------------------


def test_on_sync_complete_reacts_only_to_full_success():
    now = datetime.now(timezone.utc)
    base = dict(source="replica", started_at=now, finished_at=now, touched=None)
    ok = on_sync_complete(SyncRun(id=7, replica_id="north", all_succeeded=True, **base))
    [request] = ok.run_requests
    assert request.run_key == prune_run_key(7) == "replica_sync_group_prune:7"
    assert request.partition_key == "north" and request.job_name == "replica_sync_group_prune_job"
    assert request.run_config["ops"]["replica_sync_group_prune"]["config"]["sync_run_id"] == 7
    assert [r.partition_keys for r in ok.dynamic_partitions_requests] == [["north"]]
    assert on_sync_complete(SyncRun(id=8, replica_id="north", all_succeeded=False, **base)).run_requests == []
    bad = on_sync_complete(SyncRun(id=9, replica_id="Bad Id", all_succeeded=True, **base))
    assert bad.run_requests == [] and bad.dynamic_partitions_requests == []


def test_sync_complete_sensor_requests_prunes(engine, postgres):
    with instance_for_test() as instance:  # persistent: resolving partitioned run requests needs a ref
        _check_sync_complete(engine, postgres, instance)


def _check_sync_complete(engine, postgres, instance):
    ok_north = _sync_run(engine, "north")
    _sync_run(engine, "north", succeeded=False)  # partial sync: no prune
    _sync_run(engine, "south", finished=False)  # still running: not yet seen
    ok_south = _sync_run(engine, "south")
    defs = _defs(postgres)

    def context(cursor):
        return build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor,
                                    definitions=defs, resources={"postgres": postgres})


    result = sync_complete_sensor.evaluate_tick(context(None))
    requests = sorted(result.run_requests, key=lambda r: r.run_key)
    assert [(r.run_key, r.partition_key) for r in requests] == [
        (f"replica_sync_group_prune:{ok_north}", "north"), (f"replica_sync_group_prune:{ok_south}", "south")]
    assert sorted(k for r in result.dynamic_partitions_requests for k in r.partition_keys) == ["north", "south"]
    cursor = HighWaterCursor.parse(result.cursor)
    assert ok_north in cursor.seen_ids and ok_south in cursor.seen_ids and len(cursor.seen_ids) == 3
    # Next tick: nothing new until the running sync finishes successfully.
    again = sync_complete_sensor.evaluate_tick(context(result.cursor))
    assert not again.run_requests
    with engine.begin() as conn:
        late = conn.execute(sa.text("UPDATE sync_runs SET finished_at = now(), all_succeeded = true "
                                    "WHERE finished_at IS NULL RETURNING id")).scalar_one()
    third = sync_complete_sensor.evaluate_tick(context(result.cursor))
    assert [(r.run_key, r.partition_key) for r in third.run_requests] == [(f"replica_sync_group_prune:{late}", "south")]


# ---------------------------------------------------------------------------------------------
# replica_registry sensor and the 04:00 London schedule
# ---------------------------------------------------------------------------------------------


def test_replica_registry_adds_unregistered_replicas(engine, postgres, instance):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO replica_state (replica_id) SELECT 'r' || lpad(g::text, 4, '0') "
                             "FROM generate_series(1, :n) g"), {"n": MAX_NEW_REPLICAS_PER_TICK + 5})
    instance.add_dynamic_partitions("replicas", ["r0002"])
    context = build_sensor_context(instance=instance, resources={"postgres": postgres})
    result = replica_registry_sensor.evaluate_tick(context)
    [request] = result.dynamic_partitions_requests
    assert len(request.partition_keys) == MAX_NEW_REPLICAS_PER_TICK  # bounded per tick
    assert request.partition_keys[:2] == ["r0001", "r0003"]
    instance.add_dynamic_partitions("replicas", list(request.partition_keys))
    second = replica_registry_sensor.evaluate_tick(build_sensor_context(
        instance=instance, cursor=result.cursor, resources={"postgres": postgres}))
    assert [list(r.partition_keys) for r in second.dynamic_partitions_requests] == [
        [f"r{n:04d}" for n in range(MAX_NEW_REPLICAS_PER_TICK + 2, MAX_NEW_REPLICAS_PER_TICK + 6)]]
    instance.add_dynamic_partitions("replicas", list(second.dynamic_partitions_requests[0].partition_keys))
    third = replica_registry_sensor.evaluate_tick(build_sensor_context(instance=instance,
                                                                       resources={"postgres": postgres}))
    assert not third.dynamic_partitions_requests and third.skip_message


def test_maintenance_schedule_runs_each_replica_daily_at_0400_london(postgres):
    with instance_for_test() as instance:  # persistent: schedule contexts need an instance reference
        _check_schedule(postgres, instance)


def _check_schedule(postgres, instance):
    assert replica_maintenance_schedule.cron_schedule == "0 4 * * *"
    assert replica_maintenance_schedule.execution_timezone == "Europe/London"
    empty = replica_maintenance_schedule.evaluate_tick(build_schedule_context(instance=instance))
    assert not empty.run_requests and empty.skip_message
    instance.add_dynamic_partitions("replicas", ["north", "east"])
    when = datetime(2026, 7, 1, 3, 0, tzinfo=timezone.utc)  # 04:00 BST
    data = replica_maintenance_schedule.evaluate_tick(build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=_defs(postgres).get_repository_def()))
    assert [(r.partition_key, r.run_key) for r in data.run_requests] == [
        ("east", "replica_maintenance:2026-07-01:east"), ("north", "replica_maintenance:2026-07-01:north")]


def test_pruning_definitions_load(postgres):
    Definitions.validate_loadable(_defs(postgres))
    job = _defs(postgres).resolve_job_def("replica_sync_group_prune_job")
    assert job.partitions_def.name == "replicas"
    assert pruning.replica_sync_group_prune.op.pool == pruning.replica_maintenance_asset.op.pool == "replica_prune"


def test_prune_cli(engine, database_url, dagster_storage, capsys):
    """`pso prune` runs the replica's job in Dagster: the run and its materialization are in the instance."""
    from dagster import AssetKey, DagsterInstance

    from orchestration.cli import main
    from orchestration.settings import get_settings

    _replica(engine, "north", outside_patients=2)
    assert main(["prune", "north"]) == 0
    out = capsys.readouterr().out
    assert "sync_group deleted 4 rows" in out and "patient " in out
    assert main(["prune", "north", "--maintenance"]) == 0  # never maintained: due
    assert "maintenance deleted" in capsys.readouterr().out
    assert main(["prune", "north", "--maintenance"]) == 0
    assert "skipped: not due" in capsys.readouterr().out
    assert main(["prune", "nowhere"]) == 2
    assert "replica 'nowhere' has no schema 'replica_nowhere'" in capsys.readouterr().out
    instance = DagsterInstance.from_config(str(get_settings().dagster_home))
    try:
        runs = instance.get_runs()
        assert [(r.job_name, r.tags["dagster/partition"], r.status.value) for r in reversed(runs)] == [
            ("replica_sync_group_prune_job", "north", "SUCCESS"), ("replica_maintenance_job", "north", "SUCCESS"),
            ("replica_maintenance_job", "north", "SUCCESS"), ("replica_sync_group_prune_job", "nowhere", "FAILURE")]
        event = instance.get_latest_materialization_event(AssetKey("replica_sync_group_prune"))
        assert event.dagster_event.partition == "north"
        assert event.asset_materialization.metadata["rows_deleted"].value == 4
        assert instance.get_dynamic_partitions("replicas") == ["north"]  # the failed one is not left registered
    finally:
        instance.dispose()
