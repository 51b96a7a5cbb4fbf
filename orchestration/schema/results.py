"""§5 SimpleReport: the multiplex results tables, the seeded diseases and the SNOMED codes.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from orchestration.schema.base import (
    TIMESTAMPTZ,
    metadata,
    now_default,
    sql_in,
    uuid_id_column,
)

TEST_RESULTS = ("POSITIVE", "NEGATIVE", "UNDETERMINED")
CORRECTION_STATUSES = ("ORIGINAL", "CORRECTED", "REMOVED")

# The seeded `supported_disease` rows (§5.2). Fixed ids keep every database identical.
COVID19_DISEASE_ID = uuid.UUID("6d7f5a1e-3c55-4a4b-9f4e-000000000001")
FLU_A_DISEASE_ID = uuid.UUID("6d7f5a1e-3c55-4a4b-9f4e-000000000002")
FLU_B_DISEASE_ID = uuid.UUID("6d7f5a1e-3c55-4a4b-9f4e-000000000003")
SUPPORTED_DISEASES = (
    (COVID19_DISEASE_ID, "COVID-19", "96741-4"),
    (FLU_A_DISEASE_ID, "Flu A", "LP14239-5"),
    (FLU_B_DISEASE_ID, "Flu B", "LP14240-3"),
)




def _audit_columns() -> list[Column]:
    """SimpleReport's audit columns (`created_by`/`updated_by` are api_user ids upstream)."""
    return [
        Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
        Column("created_by", UUID(as_uuid=True), nullable=True),
        Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
        Column("updated_by", UUID(as_uuid=True), nullable=True),
    ]


supported_disease = Table(
    "supported_disease", metadata,
    uuid_id_column("internal_id"),
    Column("name", Text, nullable=False, unique=True),
    Column("loinc", Text, nullable=False, unique=True),
)

test_order = Table(
    "test_order", metadata,
    uuid_id_column("internal_id"),
    *_audit_columns(),
    Column("result", Text, nullable=True),
    # The order's current event. test_order and test_event refer to each other, so this
    # foreign key is added after both tables exist (use_alter).
    Column("test_event_id", UUID(as_uuid=True),
           ForeignKey("test_event.internal_id", use_alter=True, name="fk_test_order_test_event_id"),
           nullable=True, unique=True),
    CheckConstraint("result IS NULL OR " + sql_in("result", TEST_RESULTS), name="result"),
    Index(None, "created_at"),
)

test_event = Table(
    "test_event", metadata,
    uuid_id_column("internal_id"),
    *_audit_columns(),
    Column("test_order_id", UUID(as_uuid=True), ForeignKey("test_order.internal_id"), nullable=False, index=True),
    Column("result", Text, nullable=True),
    Column("correction_status", Text, nullable=False, server_default=text("'ORIGINAL'")),
    Column("prior_corrected_test_event_id", UUID(as_uuid=True), ForeignKey("test_event.internal_id"), nullable=True),
    CheckConstraint("result IS NULL OR " + sql_in("result", TEST_RESULTS), name="result"),
    CheckConstraint(sql_in("correction_status", CORRECTION_STATUSES), name="correction_status"),
    Index(None, "created_at"),
)

result = Table(
    "result", metadata,
    uuid_id_column("internal_id"),
    *_audit_columns(),
    Column("is_deleted", Boolean, nullable=False, server_default=sa.false()),
    Column("test_event_id", UUID(as_uuid=True), ForeignKey("test_event.internal_id"), nullable=True, index=True),
    Column("test_order_id", UUID(as_uuid=True), ForeignKey("test_order.internal_id"), nullable=True, index=True),
    Column("disease_id", UUID(as_uuid=True), ForeignKey("supported_disease.internal_id"), nullable=False,
           index=True),
    Column("result", Text, nullable=False),  # SNOMED code
    Column("test_result", Text, nullable=False),
    # NULLs are distinct in Postgres, so this does not stop duplicates when an id is NULL:
    # the backfill's anti-join does that (§5.4 rule 3).
    UniqueConstraint("test_event_id", "test_order_id", "disease_id"),
    CheckConstraint(sql_in("test_result", TEST_RESULTS), name="test_result"),
)

# SNOMED code stored in result.result for each test_result (§5.3).
SNOMED_BY_TEST_RESULT = {
    "POSITIVE": "260373001",
    "NEGATIVE": "260415000",
    "UNDETERMINED": "455371000124106",
}
