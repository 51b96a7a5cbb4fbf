"""Pruning sensors (domain.md §3.5).

- `on_sync_complete(run)`: called by the shared `sync_complete` sensor for each finished
  `sync_runs` row of source "replica". After a fully successful sync it adds the replica's
  partition (if new) and requests a sync-group prune of it. The 24 h grace after a sync-group
  switch is evaluated by the asset at run time, so a prune inside the grace is still requested
  and records a skipped `prune_runs` row.
  Every finished replica sync, successful or not, is observed on the `replica_store` source with
  its sync run id as data version (a partial sync wrote rows too), so the prune shows as stale.
- `replica_registry`: registers every replica in `replica_state` as a `replicas` partition
  (set difference against the registered keys, bounded per tick), so the daily maintenance
  check reaches replicas that have not synced yet.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from dagster import RunConfig, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from assets.pruning import SyncGroupPruneConfig, replica_sync_group_prune_job
from assets.pruning.dagster import replica_store_source
from orchestration.automation import sensor_status
from orchestration.metadata import source_observation
from orchestration.partitions import replicas_partitions
from orchestration.schema import replica_schema_name
from resources.postgres import PostgresResource
from sensors.sync import SyncReaction, SyncRun, SyncTick

log = logging.getLogger(__name__)

MAX_NEW_REPLICAS_PER_TICK = 500  # partitions are added in chunks (dagster notes)


def prune_run_key(sync_run_id: int) -> str:
    """Stable if the sync_complete cursor is reset: one prune per sync run, ever."""
    return f"replica_sync_group_prune:{sync_run_id}"


def on_sync_complete(run: SyncRun, tick: SyncTick | None = None) -> SyncReaction:
    """A prune of the replica's sync group after a fully successful sync (reads nothing from the tick),
    and an observation of the replica store the sync wrote."""
    try:
        replica_schema_name(run.replica_id or "")
    except ValueError:
        # Not a valid partition key; raising would block every other family's reactions forever.
        log.warning("sync run %s: replica id is not a valid replica id; no prune requested", run.id)
        return SyncReaction()
    observations = [source_observation(replica_store_source.key, run.id, sync_run_id=run.id, replica=run.replica_id,
                                       all_succeeded=run.all_succeeded)]
    if not run.all_succeeded:
        return SyncReaction(observations=observations)  # never prune after a partial or failed sync
    request = RunRequest(
        run_key=prune_run_key(run.id),
        job_name=replica_sync_group_prune_job.name,
        partition_key=run.replica_id,
        run_config=RunConfig(ops={"replica_sync_group_prune": SyncGroupPruneConfig(sync_run_id=run.id)}),
        tags={"pso/sync_run_id": str(run.id), "pso/replica_id": run.replica_id},
    )
    return SyncReaction(run_requests=[request],
                        dynamic_partitions_requests=[replicas_partitions.build_add_request([run.replica_id])],
                        observations=observations)


def unregistered_replicas(conn: sa.Connection, registered: set[str], limit: int = MAX_NEW_REPLICAS_PER_TICK) -> list[str]:
    ids = conn.execute(sa.text("SELECT replica_id FROM replica_state ORDER BY replica_id")).scalars().all()
    return [replica_id for replica_id in ids if replica_id not in registered][:limit]


@sensor(
    name="replica_registry",
    minimum_interval_seconds=60,
    default_status=sensor_status(),
    description="Adds a `replicas` partition for every replica_state row not yet registered.",
)
def replica_registry_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    registered = set(context.instance.get_dynamic_partitions(replicas_partitions.name))
    with postgres.connect() as conn:
        new = unregistered_replicas(conn, registered)
    if not new:
        return SkipReason(f"all replicas registered ({len(registered)})")
    # Cursor: the count registered after this tick (the set difference itself is the source of truth).
    return SensorResult(dynamic_partitions_requests=[replicas_partitions.build_add_request(new)],
                        cursor=str(len(registered) + len(new)))


sensors: list = [replica_registry_sensor]

# Jobs that on_sync_complete's run requests target: the shared sync_complete sensor must list them
# in its `jobs=` (a sensor without a target cannot return run requests).
SYNC_JOBS: list = [replica_sync_group_prune_job]
