"""Dagster wiring of replica pruning: the two assets on the dynamic `replicas` partitions, their check and jobs.

Both assets run in pool "replica_prune":
- `replica_sync_group_prune`: requested by the sync-complete sensor after every fully successful replica sync;
- `replica_maintenance`: the daily 04:00 London check, which purges when the weekly maintenance is due.
Every run writes one `prune_runs` row; the asset metadata shows the same counts.
"""

from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Backoff,
    Config,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
    asset_check,
    define_asset_job,
)
from pydantic import Field

from assets.pruning.rules import (
    PruneOutcome,
    ReplicaInputError,
    overdue_replicas,
    replica_maintenance,
    sync_group_prune,
)
from orchestration import schema
from orchestration.clock import now_utc
from orchestration.metadata import counts_table, family_spec, source_spec
from orchestration.partitions import replicas_partitions
from resources.postgres import PostgresResource

GROUP = "pruning"
FAMILY = "pruning"

replica_state_source = source_spec(
    "replica_state", FAMILY, table=schema.replica_state, group_name=GROUP,
    description="Operational: one row per replica (current facility, sync-group switch time, last maintenance).",
)
sync_runs_source = source_spec(
    "sync_runs", FAMILY, table=schema.sync_runs, group_name=GROUP,
    description="Operational: syncs and imports finished by the operational side (shared by every family).",
)
replica_store_source = source_spec(
    "replica_store", FAMILY, group_name=GROUP,
    description="Operational: a replica's Simple tables (schema replica_<id>), written by its sync.",
)

PRUNE_RETRY = RetryPolicy(max_retries=3, delay=15, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL)
PENDING_CHECK = "no_pending_rows_deleted"


class SyncGroupPruneConfig(Config):
    sync_run_id: int | None = Field(default=None, description="The sync run that triggered this prune (sensor runs)")
    grace_hours: float = Field(default=24.0, gt=0, description="No prune until this long after a sync-group switch")


class MaintenanceConfig(Config):
    force: bool = Field(default=False, description="Purge even if the last maintenance is under 7 days old")


@contextmanager
def _bad_input_is_final():
    """Bad input fails the run at once: retrying (RetryPolicy is for dropped connections) cannot fix it."""
    try:
        yield
    except ReplicaInputError as error:
        raise Failure(description=str(error), allow_retries=False) from error


def _result(outcome: PruneOutcome, asset_key: str) -> MaterializeResult:
    lost = outcome.pending_rows_lost
    metadata: dict[str, Any] = {
        "prune_run_id": outcome.prune_run_id,
        "skipped_reason": outcome.skipped_reason or "",
        "rows_deleted": outcome.total_deleted,
        "deleted": MetadataValue.json(outcome.deleted),
        # The same counts as a table the UI sorts: one row per replica table.
        "tables": counts_table({t: {"deleted": outcome.deleted.get(t, 0),
                                    "pending_before": outcome.pending_before.get(t, 0),
                                    "pending_after": outcome.pending_after.get(t, 0)}
                                for t in sorted({*outcome.deleted, *outcome.pending_before, *outcome.pending_after})}),
        "pending_before": MetadataValue.json(outcome.pending_before),
        "pending_after": MetadataValue.json(outcome.pending_after),
        "duration_s": round((outcome.finished_at - outcome.started_at).total_seconds(), 3),
    }
    if outcome.steps:
        metadata["deleted_per_step"] = MetadataValue.json(outcome.steps)
    if outcome.vacuumed or outcome.vacuum_failed:
        metadata["vacuumed"] = ", ".join(outcome.vacuumed)
        metadata["vacuum_failed"] = ", ".join(outcome.vacuum_failed)
    check = AssetCheckResult(
        asset_key=asset_key, check_name=PENDING_CHECK, passed=not lost, severity=AssetCheckSeverity.ERROR,
        metadata={"pending_lost": MetadataValue.json(lost), "pending_before": MetadataValue.json(outcome.pending_before),
                  "pending_after": MetadataValue.json(outcome.pending_after)},
    )
    return MaterializeResult(metadata=metadata, check_results=[check])


def _replica_asset(name: str, check_description: str, description: str):
    """@asset on the `replicas` partitions, in pool "replica_prune", with the PENDING-rows check."""
    return asset(
        name=name,
        group_name=GROUP,
        partitions_def=replicas_partitions,
        pool="replica_prune",
        deps=[replica_state_source, sync_runs_source, replica_store_source],
        retry_policy=PRUNE_RETRY,
        kinds={"postgres"},
        check_specs=[AssetCheckSpec(PENDING_CHECK, asset=name, description=check_description)],
        description=description,
        **family_spec(FAMILY),
    )


def _report(context: AssetExecutionContext, outcome: PruneOutcome, asset_key: str) -> MaterializeResult:
    context.log.info(f"replica {outcome.replica_id}: " + (f"skipped ({outcome.skipped_reason})" if outcome.skipped
                                                          else f"{outcome.total_deleted} rows deleted"))
    return _result(outcome, asset_key)


@_replica_asset(
    "replica_sync_group_prune",
    check_description="PENDING rows in the replica before the prune = after",
    description="Deletes the replica's patients outside its current sync group (PENDING kept), orphan "
                "addresses and DONE orphans, after each fully successful sync and past the grace period.",
)
def replica_sync_group_prune(context: AssetExecutionContext, config: SyncGroupPruneConfig,
                             postgres: PostgresResource) -> MaterializeResult:
    with postgres.connect() as conn, _bad_input_is_final():
        outcome = sync_group_prune(conn, context.partition_key, now_utc(), timedelta(hours=config.grace_hours),
                                   config.sync_run_id)
    return _report(context, outcome, "replica_sync_group_prune")


@_replica_asset(
    "replica_maintenance",
    check_description="PENDING rows in the replica before the purge = after",
    description="Weekly purge of soft-deleted, expired, superseded and orphaned DONE rows of a replica; "
                "each daily run decides whether it is due (last maintenance NULL or > 7 days ago).",
)
def replica_maintenance_asset(context: AssetExecutionContext, config: MaintenanceConfig,
                              postgres: PostgresResource) -> MaterializeResult:
    with postgres.connect() as conn, _bad_input_is_final():
        outcome = replica_maintenance(conn, context.partition_key, now_utc(), force=config.force)
    return _report(context, outcome, "replica_maintenance")


@asset_check(asset=replica_maintenance_asset, name="maintenance_not_overdue",
             description="Names the replicas never maintained or not maintained for more than 8 days.")
def maintenance_not_overdue(postgres: PostgresResource) -> AssetCheckResult:
    with postgres.connect() as conn:
        rows = overdue_replicas(conn)
    return AssetCheckResult(
        passed=not rows, severity=AssetCheckSeverity.WARN,
        metadata={"overdue_replicas": MetadataValue.json([r["replica_id"] for r in rows]),
                  "never_maintained": MetadataValue.json([r["replica_id"] for r in rows
                                                          if r["last_maintenance_at"] is None])},
    )


replica_sync_group_prune_job = define_asset_job(
    "replica_sync_group_prune_job", selection=[replica_sync_group_prune],
    description="Sync-group prune of one replica (requested by the sync_complete sensor).",
)
replica_maintenance_job = define_asset_job(
    "replica_maintenance_job", selection=[replica_maintenance_asset],
    description="Daily maintenance check of one replica (runs the weekly purge when due).",
)

assets: list = [replica_state_source, sync_runs_source, replica_store_source, replica_sync_group_prune,
                replica_maintenance_asset]
asset_checks: list = [maintenance_not_overdue]
jobs: list = [replica_sync_group_prune_job, replica_maintenance_job]
