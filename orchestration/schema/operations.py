"""Tables every domain shares: the sync runs the sync-complete sensor reads, and alerts.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Identity,
    Index,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from orchestration.schema.base import (
    TIMESTAMPTZ,
    metadata,
    now_default,
    sql_in,
)

SYNC_SOURCES = ("replica", "immunisation_import", "renal_feed")

# Shared by every domain: the sync-complete sensor reads newly finished rows (§1.8).
sync_runs = Table(
    "sync_runs", metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("source", Text, nullable=False),
    Column("replica_id", Text, nullable=True),
    Column("started_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("finished_at", TIMESTAMPTZ, nullable=True),
    Column("all_succeeded", Boolean, nullable=False, server_default=sa.false()),
    Column("touched", JSONB, nullable=True),  # patient ids or facility codes the sync changed
    CheckConstraint(sql_in("source", SYNC_SOURCES), name="source"),
    CheckConstraint("source <> 'replica' OR replica_id IS NOT NULL", name="replica_id"),
    Index(None, "finished_at", "id"),
)


# Alerts (run failures, letters still created).

alerts = Table(
    "alerts", metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("run_id", Text, nullable=True),
    Column("message", Text, nullable=False),
    Column("details", JSONB, nullable=True),
    Index(None, "kind", "created_at"),
)
