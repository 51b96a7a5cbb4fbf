"""sync-complete: one sensor for every feed the operational side finishes (`sync_runs`).

Each newly finished row is handed to the family that owns its `source`:

| source              | handler                                  | what it requests                      |
|---------------------|------------------------------------------|---------------------------------------|
| immunisation_import | sensors.statuses.on_sync_complete        | patient-scoped status refresh         |
| renal_feed          | sensors.cohort_stats.on_sync_complete    | stats refresh of the touched units    |
| replica             | sensors.pruning.on_sync_complete         | sync-group prune of that replica      |

A handler takes the row (`SyncRun`) and the tick (`SyncTick`: the sensor's own Postgres
connection and the Dagster instance) and returns a `SyncReaction` (the types are in `sync.py`). Run keys include the sync
run's id, so they stay right if the cursor is reset (Dagster drops a repeated key).

Every handled row is also observed: the `sync_runs` source asset, and the sources the handler says
the sync changed, each with the sync run's id as data version (a new version for every run, since
each row is handled once), so the assets built from them show as stale until refreshed.

Rows can finish out of id order (a long import started first finishes last), so the cursor
is a high-water mark on `finished_at` plus the ids already handled inside a look-back window,
rather than a plain "id > last".
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from dagster import (
    AddDynamicPartitionsRequest,
    AssetObservation,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.cohort_stats import facility_stats_job
from assets.pruning import replica_sync_group_prune_job
from assets.pruning.dagster import sync_runs_source
from assets.statuses import status_refresh_job
from orchestration.automation import sensor_status
from orchestration.metadata import source_observation
from resources.postgres import PostgresResource
from sensors import cohort_stats, pruning, statuses
from sensors.cursors import HighWaterCursor
from sensors.sync import SyncHandler, SyncRun, SyncTick

MAX_ROWS_PER_TICK = 200  # bounded well under the 60 s sensor limit


def sync_handlers() -> dict[str, SyncHandler]:
    """The family that owns each source (a source with no handler is logged and skipped)."""
    return {
        "immunisation_import": statuses.on_sync_complete,
        "renal_feed": cohort_stats.on_sync_complete,
        "replica": pruning.on_sync_complete,
    }


def fetch_finished_sync_runs(conn: sa.Connection, cursor: HighWaterCursor,
                             limit: int = MAX_ROWS_PER_TICK) -> list[SyncRun]:
    """Finished sync runs not yet handled, oldest first."""
    since = cursor.since
    rows = conn.execute(
        sa.text(
            """
            SELECT id, source, replica_id, started_at, finished_at, all_succeeded, touched
            FROM sync_runs
            WHERE finished_at IS NOT NULL
              AND (CAST(:since AS timestamptz) IS NULL OR finished_at >= CAST(:since AS timestamptz))
              AND NOT (id = ANY(CAST(:seen AS bigint[])))
            ORDER BY finished_at, id
            LIMIT :limit
            """
        ),
        {"since": since, "seen": cursor.seen_ids, "limit": limit},
    ).mappings()
    return [SyncRun(**row) for row in rows]


def sync_run_observation(run: SyncRun) -> AssetObservation:
    """The `sync_runs` row the sensor handled (ids and counts only: `touched` holds patient ids)."""
    return source_observation(sync_runs_source.key, run.id, sync_run_id=run.id, source=run.source,
                              all_succeeded=run.all_succeeded, touched=len(run.touched or []))


def merge_partition_requests(requests: list[Any]) -> list[AddDynamicPartitionsRequest]:
    """One add request per partitions definition, each key once: several syncs of one replica or
    unit in a tick would otherwise ask for the same key twice, which Dagster rejects."""
    keys: dict[str, dict[str, None]] = {}
    for request in requests:
        keys.setdefault(request.partitions_def_name, {}).update(dict.fromkeys(request.partition_keys))
    return [AddDynamicPartitionsRequest(partitions_def_name=name, partition_keys=list(found))
            for name, found in keys.items()]


@sensor(
    name="sync_complete",
    minimum_interval_seconds=30,
    default_status=sensor_status(),
    # Every job a family handler may target (run requests name their job).
    jobs=[status_refresh_job, facility_stats_job, replica_sync_group_prune_job],
    description="Reacts to each newly finished sync_runs row: status refresh for an immunisation import, "
    "stats refresh for a renal feed, sync-group prune for a replica sync.",
)
def sync_complete_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    cursor = HighWaterCursor.parse(context.cursor)
    handlers = sync_handlers()
    run_requests: list[RunRequest] = []
    partition_requests: list[Any] = []
    observations: list[AssetObservation] = []
    with postgres.connect() as conn:
        runs = fetch_finished_sync_runs(conn, cursor)
        if not runs:
            return SkipReason("no newly finished sync runs")
        tick = SyncTick(conn, context.instance)
        for run in runs:
            observations.append(sync_run_observation(run))
            handler = handlers.get(run.source)
            if handler is None:
                context.log.info(f"sync run {run.id}: no handler for source {run.source!r}; skipped")
                continue
            reaction = handler(run, tick)
            run_requests.extend(reaction.run_requests)
            partition_requests.extend(reaction.dynamic_partitions_requests)
            observations.extend(reaction.observations)
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=merge_partition_requests(partition_requests),
        asset_events=observations,
        cursor=cursor.advance([(r.id, r.finished_at) for r in runs]).dump(),
    )


sensors = [sync_complete_sensor]
