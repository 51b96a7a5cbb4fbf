"""Status rules v2 (statuses-v2.md): new input columns, output codes, a trigger event, and one full
recompute of an existing cache.

- `consents.academic_year`, `triages.academic_year` (C2; NULL = derive the year from the timestamp)
  and `triages.delay_vaccination_until` (D2), with a partial index for the day-change sensor.
- Codes: input triage `invite_to_clinic 4` (D1); output consent `not_required 4` (C3), triage
  `invite_to_clinic 5` (D1), session `conflicting_consent 8` (C4). The CHECK constraints are replaced.
- A patient created raises a patient-scoped refresh request (D6: patient-level rows for every patient).
  Updates of the new columns already raise one: the consents and triages UPDATE triggers of 0001 fire
  on any column.
- `status_rules` (read and written by the run role): the version of the rules the caches were last fully computed under. An existing
  deployment (a cache with rows) gets no row, so the code's rules version (2) differs from it: the
  refresh-request sensor queues one `all` request, and the full refresh that handles it records the
  version. Every status is recomputed once under the new rules with no manual step. A fresh database
  (empty cache) is recorded at version 2: there is nothing to recompute.

Migrations are frozen: codes and bodies are written out here, not imported.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

SKIP_CHECK = "IF current_setting('pso.skip_refresh_triggers', true) = 'on' THEN RETURN NULL; END IF;"

# (table, codes after 0006, codes before): every CHECK named ck_<table>_status.
CODES = (
    ("triages", range(5), range(4)),
    ("patient_consent_statuses", range(5), range(4)),
    ("patient_triage_statuses", range(6), range(5)),
    ("patient_session_session_statuses", range(9), range(8)),
)

FUNCTION = "pso_request_new_patient_refresh"
FUNCTION_BODY = f"""
    BEGIN
        {SKIP_CHECK}
        INSERT INTO status_refresh_requests (scope, patient_id, reason)
        SELECT 0, id, 'patients insert' FROM new_rows;
        RETURN NULL;
    END
"""
TRIGGER = "pso_refresh_patients_insert"
# The run role of 0002 records the rules version in a full refresh's last batch.
RUNNER_ROLE = "pso_runner"
RUNNER_GRANTS = (("status_rules", "SELECT, INSERT, UPDATE"),)
RULES_REQUEST_REASON = "status rules v2"  # as assets/statuses/refresh.py words the request
STATUS_TABLES = ("patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses",
                 "patient_session_session_statuses", "patient_session_registration_statuses")


def _replace_check(table: str, codes: range) -> None:
    # op.f: the name is final (not run through the metadata's naming convention again).
    op.drop_constraint(op.f(f"ck_{table}_status"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_status"), table, f"status IN ({', '.join(map(str, codes))})")


def upgrade() -> None:
    op.add_column("consents", sa.Column("academic_year", sa.SmallInteger(), nullable=True))
    op.add_column("triages", sa.Column("academic_year", sa.SmallInteger(), nullable=True))
    op.add_column("triages", sa.Column("delay_vaccination_until", sa.Date(), nullable=True))
    # The day-change sensor looks up the delays ending on the days it handles.
    op.create_index(op.f("ix_triages_delay_vaccination_until"), "triages", ["delay_vaccination_until"],
                    postgresql_where=sa.text("delay_vaccination_until IS NOT NULL"))
    for table, codes, _ in CODES:
        _replace_check(table, codes)
    op.execute(f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n{FUNCTION_BODY}\n$fn$")
    op.execute(f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON patients REFERENCING NEW TABLE AS new_rows "
               f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()")
    op.create_table(
        "status_rules",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("version", sa.SmallInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_status_rules_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_status_rules")),
    )
    for table, privileges in RUNNER_GRANTS:
        op.execute(f"GRANT {privileges} ON {table} TO {RUNNER_ROLE}")
    cached = " OR ".join(f"EXISTS (SELECT 1 FROM {t})" for t in STATUS_TABLES)
    op.execute(f"INSERT INTO status_rules (id, version) SELECT 1, 2 WHERE NOT ({cached})")


def downgrade() -> None:
    # Cached rows holding a v2-only code go back to the v1 default (0): the next refresh under v1 rules
    # recomputes them. An input triage `invite_to_clinic` becomes `delay_vaccination`, the v1 status
    # upstream says it behaves like (operational rows are never deleted).
    op.execute(f"DELETE FROM status_refresh_requests WHERE reason = '{RULES_REQUEST_REASON}' "
               f"AND processed_at IS NULL")
    op.drop_table("status_rules")
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON patients")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    for table, _, codes in CODES:
        if table == "triages":
            op.execute("UPDATE triages SET status = 3 WHERE status = 4")
        else:
            op.execute(f"UPDATE {table} SET status = 0 WHERE status NOT IN ({', '.join(map(str, codes))})")
        _replace_check(table, codes)
    op.drop_index(op.f("ix_triages_delay_vaccination_until"), "triages")
    op.drop_column("triages", "delay_vaccination_until")
    op.drop_column("triages", "academic_year")
    op.drop_column("consents", "academic_year")
