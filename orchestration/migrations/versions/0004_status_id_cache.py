"""The cached status tables' id sequences hand out ids 1,000 at a time per connection.

A refresh inserts up to 10,000 rows per table and batch, on two or more connections at once; with the
default cache of 1 every row's id is one more lock of the sequence's single page, shared by all of them.
Ids stay unique; they are no longer dense or in insertion order across connections, which nothing reads.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ("patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses",
          "patient_session_session_statuses", "patient_session_registration_statuses")
CACHE = 1000  # orchestration.schema.STATUS_ID_CACHE when this revision was written


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET CACHE {CACHE}")


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET CACHE 1")
