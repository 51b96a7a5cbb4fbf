"""Sources observed (issue 17 item 5): a sensor that sees a source change returns observations of the
source assets it touched, with a data version; an idle tick observes nothing; every observed key is an
asset of the definitions; and a derived asset built from an older version shows as stale."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import sqlalchemy as sa
from dagster import (
    AssetKey,
    AssetObservation,
    DagsterInstance,
    Definitions,
    SkipReason,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.temporal_context import TemporalContext

from assets import cohort_stats as cs
from orchestration.definitions import defs
from orchestration.metadata import DATA_VERSION_TAG
from resources.postgres import PostgresResource
from sensors import cohort_stats as sensors_cs
from sensors.statuses import programme_added_sensor
from sensors.sync_complete import sync_complete_sensor
from test_statuses_helpers import World, sensor_context
from tests.test_cohort_stats import add_patient, small_unit
from tests.test_cohort_stats_dagster import registry_tick
from tests.test_cohort_stats_dagster import frozen  # noqa: F401 - a fixture, used by name

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
DEFINED_KEYS = set(defs.resolve_asset_graph().get_all_asset_keys())


def observed(result) -> dict[tuple[str, ...], list[str]]:
    """{asset key path: [data versions, in order]} of a tick's observations; each key must be defined."""
    versions: dict[tuple[str, ...], list[str]] = {}
    for event in getattr(result, "asset_events", None) or []:
        assert isinstance(event, AssetObservation)
        assert event.asset_key in DEFINED_KEYS, event.asset_key
        versions.setdefault(tuple(event.asset_key.path), []).append(event.tags[DATA_VERSION_TAG])
    return versions


def _sync(conn, source, touched=None, replica_id=None, succeeded=True) -> int:
    return conn.execute(sa.text(
        "INSERT INTO sync_runs (source, replica_id, started_at, finished_at, all_succeeded, touched) "
        "VALUES (:s, :r, :t, :t, :ok, CAST(:touched AS jsonb)) RETURNING id"),
        {"s": source, "r": replica_id, "t": T0, "ok": succeeded,
         "touched": None if touched is None else json.dumps(touched)}).scalar_one()


def test_programme_added_observes_session_programmes_with_its_newest_row_id(engine, database_url):
    with engine.begin() as conn:
        world = World(conn)
        other = world.session(["hpv"])
        newest = conn.execute(sa.text("SELECT max(id) FROM session_programmes")).scalar_one()
    instance = DagsterInstance.ephemeral()
    first = programme_added_sensor(sensor_context(database_url, instance))
    assert observed(first) == {("session_programmes",): [str(newest)]}
    instance.add_dynamic_partitions("programmes", [k for r in first.dynamic_partitions_requests
                                                   for k in r.partition_keys])
    # Idle: nothing new, nothing observed.
    idle = programme_added_sensor(sensor_context(database_url, instance, first.cursor))
    assert isinstance(idle, SkipReason)
    with engine.begin() as conn:
        world.conn = conn
        row_id = world.add_programme(other, "flu")
    later = programme_added_sensor(sensor_context(database_url, instance, first.cursor))
    assert observed(later) == {("session_programmes",): [str(row_id)]}
    [event] = later.asset_events
    assert event.metadata["rows"].value == 1 and event.metadata["new_programmes"].value == 0


def test_sync_complete_observes_sync_runs_and_the_sources_each_sync_wrote(engine, database_url):
    with engine.begin() as conn:
        small_unit(conn, "RAJ01", patients=2)
        conn.execute(sa.text("INSERT INTO replica_state (replica_id) VALUES ('north')"))
        imported = _sync(conn, "immunisation_import", touched=[31, 7])
        empty_import = _sync(conn, "immunisation_import", touched=[])  # changed nothing: sync_runs only
        feed = _sync(conn, "renal_feed", touched=["RAJ01"])
        synced = _sync(conn, "replica", replica_id="north")
        partial = _sync(conn, "replica", replica_id="north", succeeded=False)  # wrote rows, no prune
    with engine.connect() as conn:
        counts = cs.ukrdc_record_counts(conn)
    with instance_for_test() as instance:
        context = build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                       resources={"postgres": PostgresResource(database_url=database_url)})
        result = sync_complete_sensor.evaluate_tick(context)
        assert observed(result) == {
            ("sync_runs",): [str(i) for i in (imported, empty_import, feed, synced, partial)],
            ("patients",): [str(imported)],
            ("vaccination_records",): [str(imported)],
            ("ukrdc", "patientrecord"): [sensors_cs.record_counts_version(counts)],
            ("ukrdc", "patient"): [str(feed)],
            ("ukrdc", "treatment"): [str(feed)],
            ("ukrdc", "dialysissession"): [str(feed)],
            ("replica_store",): [str(synced), str(partial)],
        }
        figures = {(tuple(e.asset_key.path), e.tags[DATA_VERSION_TAG]): e.metadata for e in result.asset_events}
        assert figures[(("vaccination_records",), str(imported))]["patients"].value == 2
        assert figures[(("sync_runs",), str(imported))]["touched"].value == 2
        assert figures[(("ukrdc", "patientrecord"), sensors_cs.record_counts_version(counts))]["ukrdc_records"].value == 2
        assert [r.run_key for r in result.run_requests if r.job_name == "replica_sync_group_prune_job"] == [
            f"replica_sync_group_prune:{synced}"]
        # Idle: the same rows are not handled (or observed) twice.
        again = build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                     cursor=result.cursor,
                                     resources={"postgres": PostgresResource(database_url=database_url)})
        idle = sync_complete_sensor.evaluate_tick(again)
        assert idle.skip_message and observed(idle) == {}


def test_registry_observes_record_counts_only_when_they_change(engine, resources, frozen):
    with engine.begin() as conn:
        small_unit(conn, "BIG", patients=4)
    with instance_for_test() as instance:
        first = registry_tick(instance, resources)
        with engine.connect() as conn:
            version = sensors_cs.record_counts_version(cs.ukrdc_record_counts(conn))
        assert observed(first) == {("ukrdc", "patientrecord"): [version]}
        # registry_tick recorded it as the daemon would: the next tick with the same counts records nothing.
        second = registry_tick(instance, resources)
        assert observed(second) == {}
        with engine.begin() as conn:
            add_patient(conn, "new-1", "BIG")
        changed = registry_tick(instance, resources)
        [new_version] = observed(changed)[("ukrdc", "patientrecord")]
        assert new_version != version
        assert changed.asset_events[0].metadata["ukrdc_records"].value == 5
        assert observed(registry_tick(instance, resources)) == {}


def _status(instance, definitions, key: AssetKey) -> StaleStatus:
    """The stale status the UI shows (the same resolver the webserver uses)."""
    graph = definitions.resolve_asset_graph()
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=datetime.now(timezone.utc), last_event_id=None),
                          instance=instance, asset_graph=graph)
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view).get_status(key)


def _input_version(instance, key: AssetKey, dep: AssetKey) -> str:
    tags = instance.get_latest_materialization_event(key).asset_materialization.tags
    return tags[f"dagster/input_data_version/{dep.to_user_string()}"]


def observable_ukrdc():
    """The definitions' observable sources (orchestration/definitions.py declares every source so)."""
    from dagster import AssetKey

    from orchestration.definitions import defs

    return defs.resolve_assets_def(AssetKey(["ukrdc", "patientrecord"]))


def test_a_derived_asset_records_the_observed_version_and_shows_stale_when_it_moves(engine, database_url, resources,
                                                                                  frozen):
    """The point of the observations: a materialization records the version of its source it was built
    from, and lineage tells when the source moved past it. Dagster's stale-status resolver reads a source's
    data version from observations only if the source is *observable*; a plain AssetSpec source keeps
    `INITIAL` there (so its dependents would show stale after any observation): the definitions declare
    every source observable."""
    with engine.begin() as conn:
        small_unit(conn, "BIG", patients=4)
    assets = [observable_ukrdc(), cs.facility_record_counts]
    definitions = Definitions(assets=assets, resources=resources)
    counts_key, records = cs.facility_record_counts.key, sensors_cs.RECORDS
    with instance_for_test() as instance:
        [first] = observed(registry_tick(instance, resources))[tuple(records.path)]
        assert materialize(assets, resources=resources, instance=instance, selection=[counts_key]).success
        assert _input_version(instance, counts_key, records) == first
        assert _status(instance, definitions, counts_key) == StaleStatus.FRESH
        registry_tick(instance, resources)  # counts unchanged: nothing recorded, still fresh
        assert _status(instance, definitions, counts_key) == StaleStatus.FRESH
        with engine.begin() as conn:
            add_patient(conn, "new-1", "BIG")
        registry_tick(instance, resources)
        assert _status(instance, definitions, counts_key) == StaleStatus.STALE
        assert materialize(assets, resources=resources, instance=instance, selection=[counts_key]).success
        assert _status(instance, definitions, counts_key) == StaleStatus.FRESH
        # A renal feed handled by sync_complete derives the same version as the registry, so the
        # registry's next tick agrees with it and records nothing.
        with engine.begin() as conn:
            add_patient(conn, "new-2", "BIG")
            _sync(conn, "renal_feed", touched=["BIG"])
        context = build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                       resources={"postgres": PostgresResource(database_url=database_url)})
        for event in sync_complete_sensor.evaluate_tick(context).asset_events:
            instance.report_runless_asset_event(event)
        assert _status(instance, definitions, counts_key) == StaleStatus.STALE
        assert observed(registry_tick(instance, resources)) == {}


def test_every_source_table_of_the_definitions_is_observable():
    """So an observation's data version means the same to lineage as to the materializations built on it."""
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    sources = [key for key in graph.get_all_asset_keys() if not graph.get(key).is_materializable]
    assert len(sources) >= 20
    assert [key for key in sources if not graph.get(key).is_observable] == []
