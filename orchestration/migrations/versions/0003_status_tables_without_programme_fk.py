"""The cached status tables reference patients / patient_sessions only, not programmes.

domain.md §1.3 gives the status tables foreign keys to `patients` / `patient_sessions` (ON DELETE
CASCADE); the initial schema also gave four of them one to `programmes`. That key was checked on every
row a refresh inserts (a lookup and a row lock of the programme) and was about a quarter of an
empty-cache refresh's write time, while protecting nothing the refresh can break: it only ever writes
programme ids it read from `programmes` in the same transaction, readers treat a missing row as code
0, and programmes are not deleted (a deleted programme's rows would stay, unread, until removed by
hand).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ("patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses",
          "patient_session_session_statuses")


def upgrade() -> None:
    for table in TABLES:
        op.drop_constraint(f"fk_{table}_programme_id", table, type_="foreignkey")


def downgrade() -> None:
    for table in TABLES:
        op.create_foreign_key(f"fk_{table}_programme_id", table, "programmes", ["programme_id"], ["id"],
                              ondelete="CASCADE")
