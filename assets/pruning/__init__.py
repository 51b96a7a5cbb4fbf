"""Simple-style replica pruning (domain.md §3.5): sync-group prune and weekly maintenance.

Each replica is a Postgres schema ("replica_<id>") holding one sync group's working set, and a
partition of the dynamic `replicas` partitions. Two assets act on it, both in pool "replica_prune":

- `replica_sync_group_prune`: requested by the sync-complete sensor after every fully successful
  replica sync. Deletes patients outside the current facility's sync group (PENDING is always kept),
  then orphan addresses and DONE orphans. Honours the grace period after a sync-group switch,
  evaluated here at run time (a skipped prune is recorded too).
- `replica_maintenance`: the daily 04:00 London check; purges when the last maintenance is NULL or
  more than 7 days old, and no sync of the replica is still running. Upstream's two bugs are fixed:
  `last_maintenance_at` is set only by a completed purge, and step 7 deletes DONE orphans only.

`rules` holds the plain functions (a SQLAlchemy Connection in, a `PruneOutcome` out); `dagster` the
assets, their check and jobs.
"""

from assets.pruning.dagster import (
    MaintenanceConfig,
    SyncGroupPruneConfig,
    asset_checks,
    assets,
    jobs,
    maintenance_not_overdue,
    replica_maintenance_asset,
    replica_maintenance_job,
    replica_sync_group_prune,
    replica_sync_group_prune_job,
)
from assets.pruning.rules import (
    PruneOutcome,
    ReplicaInputError,
    maintenance_due,
    overdue_replicas,
    replica_maintenance,
    replica_schema_exists,
    sync_group_prune,
    vacuum_tables,
)

__all__ = [
    "MaintenanceConfig", "PruneOutcome", "ReplicaInputError", "SyncGroupPruneConfig", "asset_checks", "assets",
    "jobs", "maintenance_due", "maintenance_not_overdue", "overdue_replicas", "replica_maintenance",
    "replica_maintenance_asset", "replica_maintenance_job", "replica_schema_exists", "replica_sync_group_prune",
    "replica_sync_group_prune_job", "sync_group_prune", "vacuum_tables",
]
