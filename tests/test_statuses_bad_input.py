"""Bad input to the status rules (issue 3, deliverable 6): each kind is named by id in the inputs check,
and an attendance on another session's date does not count — against a real Postgres."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from assets.statuses import bad_status_inputs
from orchestration.schema import RegistrationStatus as R, SessionStatus as S
from test_statuses_helpers import BASE, TODAY, World, refresh_everything

NOW = BASE + timedelta(days=20)
FUTURE = 30  # days after BASE: ten days after NOW


def loosen(conn, table: str, column: str) -> None:
    """What a loader that bypasses the schema leaves possible: no NOT NULL and no CHECK on the column."""
    conn.execute(sa.text(f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL"))
    for name in conn.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) AND contype = 'c' "
            "AND pg_get_constraintdef(oid) LIKE '%' || :c || '%'"), {"t": table, "c": column}).scalars().all():
        conn.execute(sa.text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))


def set_column(conn, table: str, row_id: int, column: str, value) -> int:
    loosen(conn, table, column)
    conn.execute(sa.text(f"UPDATE {table} SET {column} = :v WHERE id = :id"), {"v": value, "id": row_id})
    return row_id


def consent(w, p):
    return w.consent(p, "hpv", "given", parent_id=w.parent("A Parent"))


def other_sessions_date(w, p):
    other = w.session(["hpv"], [TODAY])
    ps = w.conn.execute(sa.text("SELECT id FROM patient_sessions WHERE patient_id = :p"), {"p": p}).scalar_one()
    return w.attendance(ps, False, session_id=other)


CASES = {
    "consents with an unknown or missing response or route": [
        lambda w, p: set_column(w.conn, "consents", consent(w, p), "response", 7),
        lambda w, p: set_column(w.conn, "consents", consent(w, p), "response", None),
        lambda w, p: set_column(w.conn, "consents", consent(w, p), "route", None),
    ],
    "triages with an unknown or missing status": [
        lambda w, p: set_column(w.conn, "triages", w.triage(p, "hpv", "ready_to_vaccinate"), "status", 9),
        lambda w, p: set_column(w.conn, "triages", w.triage(p, "hpv", "ready_to_vaccinate"), "status", None),
    ],
    "vaccination records with an unknown or missing outcome": [
        lambda w, p: set_column(w.conn, "vaccination_records", w.record(p, "hpv", "administered"), "outcome", 8),
        lambda w, p: set_column(w.conn, "vaccination_records", w.record(p, "hpv", "administered"), "outcome", None),
    ],
    "consents whose health_answers is not a list": [
        lambda w, p: set_column(w.conn, "consents", consent(w, p), "health_answers", '{"response": "yes"}'),
    ],
    "vaccination records performed in the future": [
        lambda w, p: w.record(p, "hpv", "administered", performed=FUTURE),
    ],
    "consents submitted or created in the future": [
        lambda w, p: w.consent(p, "hpv", "given", submitted=FUTURE),
        lambda w, p: w.consent(p, "hpv", "given", submitted=1, created=FUTURE),
    ],
    "triages with a delay_vaccination_until but another status": [
        lambda w, p: w.triage(p, "hpv", "needs_follow_up", delay_until=TODAY),
    ],
    "triages created in the future": [
        lambda w, p: w.triage(p, "hpv", "do_not_vaccinate", created=FUTURE),
    ],
    "attendances on a date of another session": [other_sessions_date],
    "vaccination records whose session lacks the programme": [
        lambda w, p: w.record(p, "hpv", "administered", session_id=w.session(["flu"])),
    ],
    "patient sessions without a session programme": [
        lambda w, p: w.patient_session(p, w.session([])),
    ],
}


@pytest.mark.parametrize(("label", "index"), [(label, i) for label, makers in CASES.items() for i in range(len(makers))])
def test_each_kind_of_bad_input_is_named_by_id(engine, label, index):
    with engine.begin() as conn:
        w = World(conn)
        p = w.patient()
        w.patient_session(p)
        assert bad_status_inputs(conn, NOW) == {}
        bad = CASES[label][index](w, p)
        assert bad_status_inputs(conn, NOW) == {label: [bad]}


def test_an_attendance_on_another_sessions_date_does_not_count(engine):
    with engine.begin() as conn:
        w = World(conn)
        p = w.patient()
        w.patient_session(p)
        ps = other_sessions_date(w, p)
        ps = conn.execute(sa.text("SELECT patient_session_id FROM session_attendances WHERE id = :a"),
                          {"a": ps}).scalar_one()
    refresh_everything(engine)
    with engine.connect() as conn:
        w.conn = conn
        # Not absent_from_session / not_attending: the patient_session's own session has no attendance today.
        assert w.session_status(ps, "hpv") == S.NONE_YET
        assert w.registration_status(ps) == R.UNKNOWN
