"""The refresh-request triggers (domain.md §1.8), event by event, against the real database.

Each case builds the same small Mavis world (tests/test_statuses_helpers.World), empties
`status_refresh_requests`, runs the event's statement(s) and compares the requests raised, one row
per (scope, patient, session), with what §1.8 asks for. Triggers are statement-level: one request per
distinct patient (or session) and statement.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestration.migrate import downgrade, upgrade
from test_statuses_helpers import TODAY, World

PATIENT, SESSION = 0, 1  # orchestration.schema.RefreshScope
YESTERDAY = TODAY - timedelta(days=1)


def _build(conn: sa.Connection) -> dict[str, int]:
    """p1 and p3 in the main session (p1 with a consent, triage, record and attendance), p2 in `other`."""
    w = World(conn)
    ids = {"main": w.main_session, "other": w.session(["hpv"], [TODAY])}
    ids.update(p1=w.patient(), p2=w.patient(given="Second"), p3=w.patient(given="Third"))
    ids["ps1"] = w.patient_session(ids["p1"])
    ids["ps2"] = w.patient_session(ids["p2"], ids["other"])
    ids["ps3"] = w.patient_session(ids["p3"])
    ids["consent1"] = w.consent(ids["p1"], "hpv", "given")
    ids["triage1"] = w.triage(ids["p1"], "hpv", "ready_to_vaccinate")
    ids["record1"] = w.record(ids["p1"], "hpv", "administered")
    ids["attendance1"] = w.attendance(ids["ps1"], True)  # today, main session
    ids["date_today"] = w.session_dates[(w.main_session, TODAY)]
    ids["date_yesterday"] = w.session_dates[(w.main_session, YESTERDAY)]  # no attendance on it
    ids.update({f"programme_{t}": pid for t, pid in w.programmes.items()})
    ids["session_programme_hpv"] = conn.execute(sa.text(
        "SELECT id FROM session_programmes WHERE session_id = :s AND programme_id = :p"),
        {"s": w.main_session, "p": w.programmes["hpv"]}).scalar_one()
    # Fixture data is not an event stream: start the request table empty.
    conn.execute(sa.text("DELETE FROM status_refresh_requests"))
    return ids


def _requests(conn: sa.Connection) -> list[tuple]:
    return sorted(tuple(r) for r in conn.execute(sa.text(
        "SELECT scope, patient_id, session_id FROM status_refresh_requests WHERE processed_at IS NULL")))


def _expected(expected: list[tuple], ids: dict[str, int]) -> list[tuple]:
    return sorted((scope, ids.get(patient), ids.get(session)) for scope, patient, session in expected)


INSERT_CONSENT = ("INSERT INTO consents (patient_id, programme_id, response, route) "
                  "VALUES (:p2, :programme_hpv, 0, 0)")
# The main session's hpv programme becomes the other session's flu programme.
MOVE_PROGRAMME = ("UPDATE session_programmes SET session_id = :other, programme_id = :programme_flu "
                  "WHERE id = :session_programme_hpv")
MERGE_P1_INTO_P2 = [  # upstream PatientMerger: move everything to the survivor, then delete the duplicate
    "UPDATE consents SET patient_id = :p2 WHERE patient_id = :p1",
    "UPDATE triages SET patient_id = :p2 WHERE patient_id = :p1",
    "UPDATE vaccination_records SET patient_id = :p2 WHERE patient_id = :p1",
    "UPDATE patient_sessions SET patient_id = :p2 WHERE patient_id = :p1",
    "DELETE FROM patients WHERE id = :p1",
]

# (event, statements run in order, expected requests as (scope, patient name, session name)).
CASES = [
    # Consent recorded, created from a consent form, withdrawn or invalidated.
    ("consent recorded", [INSERT_CONSENT], [(PATIENT, "p2", None)]),
    ("consent withdrawn", ["UPDATE consents SET withdrawn_at = now() WHERE id = :consent1"],
     [(PATIENT, "p1", None)]),
    ("consent invalidated", ["UPDATE consents SET invalidated_at = now() WHERE id = :consent1"],
     [(PATIENT, "p1", None)]),
    ("consent deleted", ["DELETE FROM consents WHERE id = :consent1"], [(PATIENT, "p1", None)]),
    # Triage recorded or invalidated.
    ("triage recorded", ["INSERT INTO triages (patient_id, programme_id, status) VALUES (:p2, :programme_hpv, 1)"],
     [(PATIENT, "p2", None)]),
    ("triage updated", ["UPDATE triages SET status = 1 WHERE id = :triage1"], [(PATIENT, "p1", None)]),
    ("triage invalidated", ["UPDATE triages SET invalidated_at = now() WHERE id = :triage1"],
     [(PATIENT, "p1", None)]),
    # v2 §1.8: the year of a consent or triage, and the end of a delay, decide what counts.
    ("consent academic_year changed", ["UPDATE consents SET academic_year = 2027 WHERE id = :consent1"],
     [(PATIENT, "p1", None)]),
    ("consent submitted_at changed", ["UPDATE consents SET submitted_at = now() WHERE id = :consent1"],
     [(PATIENT, "p1", None)]),
    ("triage academic_year changed", ["UPDATE triages SET academic_year = 2027 WHERE id = :triage1"],
     [(PATIENT, "p1", None)]),
    ("triage delay_vaccination_until changed",
     ["UPDATE triages SET status = 3, delay_vaccination_until = DATE '2026-12-01' WHERE id = :triage1"],
     [(PATIENT, "p1", None)]),
    # Vaccination record created, edited or discarded.
    ("vaccination record created",
     ["INSERT INTO vaccination_records (patient_id, programme_id, session_id, outcome, performed_at) "
      "VALUES (:p3, :programme_flu, :main, 0, now())"], [(PATIENT, "p3", None)]),
    ("vaccination record edited", ["UPDATE vaccination_records SET outcome = 1 WHERE id = :record1"],
     [(PATIENT, "p1", None)]),
    ("vaccination record discarded", ["UPDATE vaccination_records SET discarded_at = now() WHERE id = :record1"],
     [(PATIENT, "p1", None)]),
    ("vaccination record deleted", ["DELETE FROM vaccination_records WHERE id = :record1"],
     [(PATIENT, "p1", None)]),
    # Attendance recorded, changed or cleared (the patient is found through its patient_session).
    ("attendance recorded",
     ["INSERT INTO session_attendances (patient_session_id, session_date_id, attending) "
      "VALUES (:ps3, :date_today, false)"], [(PATIENT, "p3", None)]),
    ("attendance changed", ["UPDATE session_attendances SET attending = false WHERE id = :attendance1"],
     [(PATIENT, "p1", None)]),
    ("attendance moved to another patient_session",
     ["UPDATE session_attendances SET patient_session_id = :ps3 WHERE id = :attendance1"],
     [(PATIENT, "p1", None), (PATIENT, "p3", None)]),
    ("attendance cleared", ["DELETE FROM session_attendances WHERE id = :attendance1"], [(PATIENT, "p1", None)]),
    # A patient_session added or removed (school move, patient created from a consent form).
    ("patient_session added", ["INSERT INTO patient_sessions (patient_id, session_id) VALUES (:p2, :main)"],
     [(PATIENT, "p2", None)]),
    ("patient created from a consent form",
     ["INSERT INTO patients (given_name, family_name, date_of_birth, birth_academic_year) "
      "VALUES ('New', 'Child', DATE '2011-10-01', 2011)",
      "INSERT INTO patient_sessions (patient_id, session_id) "
      "SELECT max(id), :main FROM patients"],
     [(PATIENT, "new_patient", None)] * 2),
    # v2 D6: every patient has patient-level rows, so a patient created (with no session) is requested.
    ("patient created", ["INSERT INTO patients (given_name, family_name, date_of_birth, birth_academic_year) "
                         "VALUES ('New', 'Child', DATE '2011-10-01', 2011)"], [(PATIENT, "new_patient", None)]),
    # The attendance rows cascade with it: the patient_sessions trigger alone covers the patient.
    ("patient_session removed", ["DELETE FROM patient_sessions WHERE id = :ps1"], [(PATIENT, "p1", None)]),
    ("school move: delete then insert",
     ["DELETE FROM patient_sessions WHERE id = :ps1",
      "INSERT INTO patient_sessions (patient_id, session_id) VALUES (:p1, :other)"],
     [(PATIENT, "p1", None), (PATIENT, "p1", None)]),
    ("school move by UPDATE session_id", ["UPDATE patient_sessions SET session_id = :other WHERE id = :ps1"],
     [(PATIENT, "p1", None)]),
    ("class moved by one UPDATE: one request per patient",
     ["UPDATE patient_sessions SET session_id = :other WHERE session_id = :main"],
     [(PATIENT, "p1", None), (PATIENT, "p3", None)]),
    ("patient_session UPDATE changing nothing", ["UPDATE patient_sessions SET patient_id = patient_id"], []),
    # Patients merged: the survivor (and the duplicate, which loses the rows).
    ("merge: patient_sessions moved to the survivor",
     ["UPDATE patient_sessions SET patient_id = :p2 WHERE patient_id = :p1"],
     [(PATIENT, "p1", None), (PATIENT, "p2", None)]),
    ("merge: every row moved, duplicate deleted", MERGE_P1_INTO_P2,
     [(PATIENT, "p1", None), (PATIENT, "p2", None)] * 4),
    # birth_academic_year changed (and only that column of patients).
    ("birth_academic_year changed", ["UPDATE patients SET birth_academic_year = 2012 WHERE id = :p1"],
     [(PATIENT, "p1", None)]),
    ("other patient columns changed", ["UPDATE patients SET family_name = 'Renamed', given_name = 'X'"], []),
    # Programme added to a session (session scope).
    ("session_programme added", ["INSERT INTO session_programmes (session_id, programme_id) "
                                 "VALUES (:other, :programme_flu)"], [(SESSION, None, "other")]),
    ("session_programme removed", ["DELETE FROM session_programmes WHERE id = :session_programme_hpv"],
     [(SESSION, None, "main")]),
    ("session_programme moved to another session", [MOVE_PROGRAMME],
     [(SESSION, None, "main"), (SESSION, None, "other")]),
    # Session dates added, changed or removed (session scope).
    ("session date added", ["INSERT INTO session_dates (session_id, value) VALUES (:main, DATE '2026-12-01')"],
     [(SESSION, None, "main")]),
    ("session date changed",
     ["UPDATE session_dates SET value = DATE '2026-12-01' WHERE id = :date_yesterday"], [(SESSION, None, "main")]),
    ("session date moved to another session",
     ["UPDATE session_dates SET session_id = :other WHERE id = :date_yesterday"],
     [(SESSION, None, "main"), (SESSION, None, "other")]),
    ("session date removed", ["DELETE FROM session_dates WHERE id = :date_yesterday"], [(SESSION, None, "main")]),
]


@pytest.mark.parametrize("event, statements, expected", CASES, ids=[c[0] for c in CASES])
def test_event_requests_refresh(engine, event, statements, expected):
    with engine.begin() as conn:
        ids = _build(conn)
        for statement in statements:
            conn.execute(sa.text(statement), {k: v for k, v in ids.items() if f":{k}" in statement})
        ids["new_patient"] = conn.execute(sa.text("SELECT max(id) FROM patients")).scalar_one()
        assert _requests(conn) == _expected(expected, ids), event


def test_skip_switch_covers_the_new_update_triggers(engine):
    with engine.begin() as conn:
        ids = _build(conn)
        conn.execute(sa.text("SET LOCAL pso.skip_refresh_triggers = 'on'"))
        conn.execute(sa.text("UPDATE patient_sessions SET patient_id = :p2 WHERE patient_id = :p1"), ids)
        conn.execute(sa.text(MOVE_PROGRAMME), ids)
        assert _requests(conn) == []


def test_0005_adds_the_update_triggers_and_downgrades(empty_database_url):
    """At 0004 a merge of patient_sessions raised nothing; 0005 adds the request, its downgrade removes it."""
    engine = sa.create_engine(empty_database_url, connect_args={"prepare_threshold": None})
    merge = sa.text("UPDATE patient_sessions SET patient_id = :p2 WHERE patient_id = :p1")
    move_programme = sa.text(MOVE_PROGRAMME)
    try:
        upgrade(empty_database_url, "0004")
        for revision, raises in [("0004", False), ("0005", True)]:
            if revision == "0005":
                upgrade(empty_database_url, "0005")
            with engine.connect() as conn:
                ids = _build(conn)
                conn.execute(merge, ids)
                conn.execute(move_programme, ids)
                expected = [(PATIENT, ids["p1"], None), (PATIENT, ids["p2"], None),
                            (SESSION, None, ids["main"]), (SESSION, None, ids["other"])]
                assert _requests(conn) == (sorted(expected) if raises else []), revision
                conn.rollback()
        downgrade(empty_database_url, "0004")
        with engine.connect() as conn:
            ids = _build(conn)
            conn.execute(merge, ids)
            assert _requests(conn) == []
            assert conn.execute(sa.text(
                "SELECT count(*) FROM pg_proc WHERE proname = 'pso_request_patient_session_move_refresh'"
            )).scalar_one() == 0
            conn.rollback()
    finally:
        engine.dispose()
