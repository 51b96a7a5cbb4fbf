"""§3.5 Simple replicas: the public bookkeeping of replica pruning, and the replica tables.

`replica_metadata` holds the Simple replica tables. Each replica lives in a Postgres schema
of its own (its names clash with UKRDC's `patient` and `facility`), created at run time by
`create_replica_schema`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from orchestration.schema.base import (
    NAMING_CONVENTION,
    TIMESTAMPTZ,
    metadata,
    now_default,
    sql_in,
)

PRUNE_KINDS = ("sync_group", "maintenance")
SYNC_STATUSES = ("PENDING", "DONE", "INVALID")
APPOINTMENT_STATUSES = ("scheduled", "cancelled", "visited", "unknown")

# =============================================================================================
# §3.5 Simple-style replica pruning (public bookkeeping; replica tables are further below)
# =============================================================================================

REPLICA_ID_PATTERN = r"[a-z0-9_]{1,40}"

replica_state = Table(
    "replica_state", metadata,
    Column("replica_id", Text, primary_key=True),
    Column("current_facility_uuid", UUID(as_uuid=True), nullable=True),
    Column("sync_group_switched_at", TIMESTAMPTZ, nullable=True),
    Column("last_maintenance_at", TIMESTAMPTZ, nullable=True),
    CheckConstraint(f"replica_id ~ '^{REPLICA_ID_PATTERN}$'", name="replica_id"),
)

prune_runs = Table(
    "prune_runs", metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("replica_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("sync_run_id", BigInteger, nullable=True),  # the sync that triggered a sync-group prune
    Column("started_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("finished_at", TIMESTAMPTZ, nullable=True),
    Column("deleted", JSONB, nullable=True),  # {table: rows deleted}
    Column("skipped_reason", Text, nullable=True),
    CheckConstraint(sql_in("kind", PRUNE_KINDS), name="kind"),
    Index(None, "replica_id", "started_at"),
)


# =============================================================================================
# §3.5 Simple replica tables: one Postgres schema per replica
# =============================================================================================

# schema=None here; create_replica_schema maps it to "replica_<id>" at execution time.
replica_metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sync_status() -> Column:
    return Column("sync_status", Text, nullable=False)


def _sync_status_check() -> CheckConstraint:
    return CheckConstraint(sql_in("sync_status", SYNC_STATUSES), name="sync_status")


replica_facility = Table(
    "facility", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("sync_group", Text, nullable=True, index=True),
)

replica_patient_address = Table(
    "patient_address", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
)

replica_patient = Table(
    "patient", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("address_uuid", UUID(as_uuid=True), ForeignKey("patient_address.uuid"), nullable=False, index=True),
    Column("registered_facility_id", UUID(as_uuid=True), nullable=True, index=True),
    Column("assigned_facility_id", UUID(as_uuid=True), nullable=True, index=True),
    _sync_status(),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
    Column("retain_until", TIMESTAMPTZ, nullable=True),
    _sync_status_check(),
)


def _patient_owned_table(name: str) -> Table:
    """A replica table of soft-deletable rows that go with their patient (foreign key, cascade)."""
    return Table(
        name, replica_metadata,
        Column("uuid", UUID(as_uuid=True), primary_key=True),
        Column("patient_uuid", UUID(as_uuid=True), ForeignKey("patient.uuid", ondelete="CASCADE"), nullable=False,
               index=True),
        Column("deleted_at", TIMESTAMPTZ, nullable=True),
    )


replica_patient_phone_number = _patient_owned_table("patient_phone_number")
replica_business_id = _patient_owned_table("business_id")

# Like Simple's Room database, these have no foreign key to patient: rows may arrive before
# their patient, and orphans are purged explicitly (DONE only).
replica_appointment = Table(
    "appointment", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("patient_uuid", UUID(as_uuid=True), nullable=False),
    Column("facility_uuid", UUID(as_uuid=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
    _sync_status(),
    CheckConstraint(sql_in("status", APPOINTMENT_STATUSES), name="status"),
    _sync_status_check(),
    Index(None, "patient_uuid", "created_at", "uuid"),  # "latest appointment per patient"
)


def _patient_child_table(name: str) -> Table:
    """A replica table of soft-deletable per-patient rows (no foreign key to patient)."""
    return Table(
        name, replica_metadata,
        Column("uuid", UUID(as_uuid=True), primary_key=True),
        Column("patient_uuid", UUID(as_uuid=True), nullable=False, index=True),
        Column("deleted_at", TIMESTAMPTZ, nullable=True),
        _sync_status(),
        _sync_status_check(),
    )


replica_blood_pressure_measurement = _patient_child_table("blood_pressure_measurement")
replica_blood_sugar_measurement = _patient_child_table("blood_sugar_measurement")
replica_medical_history = _patient_child_table("medical_history")
replica_call_result = _patient_child_table("call_result")

replica_prescribed_drug = Table(
    "prescribed_drug", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("patient_uuid", UUID(as_uuid=True), nullable=False, index=True),
    Column("is_deleted", Boolean, nullable=False, server_default=sa.false()),
    _sync_status(),
    _sync_status_check(),
)

_REPLICA_ID_RE = re.compile(rf"^{REPLICA_ID_PATTERN}$")


def replica_schema_name(replica_id: str) -> str:
    """The Postgres schema of a replica: "replica_" + id.

    The id is validated (lower-case letters, digits, underscore; 1–40 characters) because it
    becomes part of SQL identifiers.
    """
    if not isinstance(replica_id, str) or not _REPLICA_ID_RE.match(replica_id):
        raise ValueError(
            f"replica id must be 1-40 lower-case letters, digits or underscores, got {replica_id!r}"
        )
    return f"replica_{replica_id}"


@contextmanager
def replica_connection(conn: sa.Connection, replica_id: str) -> Iterator[sa.Connection]:
    """Within the block, `conn` runs the replica tables (`replica_metadata`) in the replica's schema.

    SQLAlchemy 2 changes a Connection's execution options in place, so the schema translation
    is undone on exit; otherwise the caller's later statements on public tables would be sent
    to the replica schema too.

        with replica_connection(conn, "north") as replica:
            replica.execute(sa.delete(replica_patient).where(...))
    """
    previous = conn.get_execution_options().get("schema_translate_map")
    conn.execution_options(schema_translate_map={None: replica_schema_name(replica_id)})
    try:
        yield conn
    finally:
        conn.execution_options(schema_translate_map=previous)


def create_replica_schema(conn: sa.Connection, replica_id: str) -> str:
    """Create the replica's schema and tables if they do not exist; return the schema name.

    Idempotent. Runs in the caller's transaction (the caller commits).
    """
    name = replica_schema_name(replica_id)
    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{name}"'))
    with replica_connection(conn, replica_id) as replica:
        replica_metadata.create_all(replica, checkfirst=True)
    return name


def drop_replica_schema(conn: sa.Connection, replica_id: str) -> None:
    """Drop the replica's schema and everything in it, if it exists."""
    name = replica_schema_name(replica_id)
    conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))

