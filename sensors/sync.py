"""What the sync-complete sensor hands to a family's handler, and what the handler answers.

The family sensors (statuses, cohort_stats, pruning) and `sync_complete` both import these types,
so neither imports the other's module for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import sqlalchemy as sa
from dagster import AssetObservation, DagsterInstance, RunRequest


@dataclass(frozen=True)
class SyncRun:
    id: int
    source: str
    replica_id: str | None
    started_at: datetime
    finished_at: datetime
    all_succeeded: bool
    touched: list[Any] | None


@dataclass
class SyncReaction:
    run_requests: list[RunRequest] = field(default_factory=list)
    dynamic_partitions_requests: list[Any] = field(default_factory=list)
    # The source assets the sync changed, observed with the sync run's id as their data version
    # (`orchestration.metadata.source_observation`), so their dependents show as stale in the UI.
    observations: list[AssetObservation] = field(default_factory=list)


@dataclass(frozen=True)
class SyncTick:
    """What a handler may read during the tick: the sensor's connection (from its `postgres`
    resource, one for the whole tick) and the instance (e.g. the registered dynamic partitions)."""

    conn: sa.Connection
    instance: DagsterInstance


SyncHandler = Callable[[SyncRun, SyncTick], SyncReaction]
