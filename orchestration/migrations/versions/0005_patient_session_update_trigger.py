"""Refresh requests on UPDATE of patient_sessions and session_programmes (domain.md §1.8).

0001 gave `patient_sessions` INSERT and DELETE triggers only, so a patient_session moved by UPDATE
raised no refresh request:
- a patients merge that moves the duplicate's patient_sessions to the survivor (UPDATE patient_id):
  §1.8 "Patients merged → patient (the survivor)"; the old patient is requested as well (it loses
  the session);
- a school move done by UPDATE session_id: §1.8 "A patient_session added or removed (school move …)".

The new statement-level trigger requests a patient-scoped refresh of the new and the old patient of
every row whose patient_id or session_id changed (one request per distinct patient per statement).
Postgres forbids transition tables on `UPDATE OF <columns>` triggers, so the trigger fires on every
UPDATE and its function compares old and new rows itself (as the patients trigger of 0001 does for
birth_academic_year): an UPDATE that changes neither column requests nothing.

`session_programmes` likewise had INSERT and DELETE triggers only: a programme moved to another
session, or a session's programme replaced, by UPDATE raised no session-scoped request (§1.8
"Programme added to a session"). It gets an UPDATE trigger calling 0001's session function, which
requests both the old and the new session, as `session_dates` UPDATE already does.

Migrations are frozen: the function body is written out here, not imported.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# As 0001: bulk loaders that refresh statuses themselves can switch the triggers off.
SKIP_CHECK = "IF current_setting('pso.skip_refresh_triggers', true) = 'on' THEN RETURN NULL; END IF;"

FUNCTION = "pso_request_patient_session_move_refresh"
FUNCTION_BODY = f"""
    BEGIN
        {SKIP_CHECK}
        -- Rows whose patient or session changed (matched on id; a row whose id changed counts as
        -- moved): both the old and the new patient, once each.
        INSERT INTO status_refresh_requests (scope, patient_id, reason)
        SELECT 0, patient_id, 'patient_sessions update'
        FROM (
            SELECT n.patient_id
            FROM new_rows AS n LEFT JOIN old_rows AS o ON o.id = n.id
            WHERE o.id IS NULL
               OR n.patient_id IS DISTINCT FROM o.patient_id
               OR n.session_id IS DISTINCT FROM o.session_id
            UNION
            SELECT o.patient_id
            FROM old_rows AS o LEFT JOIN new_rows AS n ON n.id = o.id
            WHERE n.id IS NULL
               OR n.patient_id IS DISTINCT FROM o.patient_id
               OR n.session_id IS DISTINCT FROM o.session_id
        ) AS moved;
        RETURN NULL;
    END
"""

# (table, event, function): one statement-level trigger each, named as in 0001.
TRIGGERS = (
    ("patient_sessions", "UPDATE", FUNCTION),
    ("session_programmes", "UPDATE", "pso_request_session_refresh"),  # created by 0001
)


def upgrade() -> None:
    op.execute(f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n{FUNCTION_BODY}\n$fn$")
    for table, event, function in TRIGGERS:
        op.execute(
            f"CREATE TRIGGER pso_refresh_{table}_{event.lower()} AFTER {event} ON {table} "
            f"REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION {function}()"
        )


def downgrade() -> None:
    for table, event, _ in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS pso_refresh_{table}_{event.lower()} ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
