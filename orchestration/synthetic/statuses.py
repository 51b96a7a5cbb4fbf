"""Synthetic Mavis data (domain.md §1.2, statuses-v2.md): schools' sessions, patients across year groups,
parents, consents, triages, vaccination records of every outcome, attendances (incl. today), and the
previous academic year (a flu session per school with last year's consents, triages and doses, none of
which count this year under rules v2).

Demo scale: 3,000 patients. Scale 20 (bench): 60,000 patients, ~51,000 of them (years 0–11) in flu.
Names are obviously fake. Ids are assigned here (COPY needs them for foreign keys) above the
current maximum, and the identity sequences are moved past them at the end.
"""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone

from orchestration.clock import LONDON, academic_year

PROGRAMME_TYPES = ("flu", "hpv", "menacwy", "td_ipv")
SECONDARY_PROGRAMMES = ("hpv", "menacwy", "td_ipv")
GIVEN_NAMES = ("Testy", "Sample", "Demo", "Fixture", "Mocky", "Placeholder", "Dummy", "Example")
FAMILY_NAMES = ("Fakename", "Synthetica", "Notreal", "Madeup", "Lorem", "Ipsum")
PATIENTS_PER_SCHOOL = 300


def _next_id(conn, table: str) -> int:
    return conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0]


def _bump_sequence(conn, table: str) -> None:
    conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT coalesce(max(id), 1) FROM {table}))")


def generate(ctx) -> None:
    conn, rng, now, today = ctx.conn, ctx.rng, ctx.now, ctx.today
    year_now = academic_year(today)

    # Programmes: reuse rows that exist (the schema has no seed rows for them).
    programme_ids = dict(conn.execute("SELECT type, id FROM programmes").fetchall())
    for type_ in PROGRAMME_TYPES:
        if type_ not in programme_ids:
            programme_ids[type_] = conn.execute("INSERT INTO programmes (type) VALUES (%s) RETURNING id",
                                                (type_,)).fetchone()[0]

    schools = max(1, ctx.n(10))
    patients_total = schools * PATIENTS_PER_SCHOOL

    # Sessions: per school a flu session (every year group) and a secondary session (hpv, menacwy, td_ipv).
    session_id = _next_id(conn, "sessions")
    sessions = []  # (id, programmes, dates)
    session_date_id = _next_id(conn, "session_dates")
    session_dates = []  # (id, session_id, value)
    for school in range(schools):
        for programmes in (("flu",), SECONDARY_PROGRAMMES):
            offsets = {0} if school % 3 == 0 else set()  # a third of schools have a session today
            while len(offsets) < 2:
                offsets.add(rng.randint(-40, 40))
            dates = sorted(today + timedelta(days=o) for o in offsets)
            sessions.append((session_id, programmes, dates, school))
            for value in dates:
                session_dates.append((session_date_id, session_id, value))
                session_date_id += 1
            session_id += 1
    ctx.copy("sessions", ["id"], ((s[0],) for s in sessions))
    ctx.copy("session_programmes", ["session_id", "programme_id", "created_at"],
             ((s[0], programme_ids[p], now) for s in sessions for p in s[1]))
    ctx.copy("session_dates", ["id", "session_id", "value"], session_dates)
    dates_by_session: dict[int, list[tuple[int, date]]] = {}
    for sd_id, sid, value in session_dates:
        dates_by_session.setdefault(sid, []).append((sd_id, value))

    # Patients across year groups 0–13 (12 and 13 are eligible for nothing).
    patient_id = _next_id(conn, "patients")
    patients = []  # (id, year_group, school, dob)
    for i in range(patients_total):
        year_group = rng.randint(0, 13)
        bay = year_now - 5 - year_group
        dob = date(bay, 9, 1) + timedelta(days=rng.randint(0, 364))
        patients.append((patient_id + i, year_group, i % schools, dob, bay))
    ctx.copy("patients", ["id", "given_name", "family_name", "date_of_birth", "birth_academic_year"],
             ((p[0], rng.choice(GIVEN_NAMES), f"{rng.choice(FAMILY_NAMES)}-{p[0]}", p[3], p[4]) for p in patients))

    parent_id = _next_id(conn, "parents")
    parents = {}  # patient id → list of parent ids
    parent_rows = []
    for p in patients:
        ids = []
        for k in range(rng.choice((1, 1, 2))):
            name = None if rng.random() < 0.05 else f"Parent {chr(65 + k)} Fakename-{p[0]}"
            parent_rows.append((parent_id, name))
            ids.append(parent_id)
            parent_id += 1
        parents[p[0]] = ids
    ctx.copy("parents", ["id", "full_name"], parent_rows)

    # Patient sessions: every patient in their school's flu session; years 7+ also in the secondary one.
    flu_session = {s[3]: s for s in sessions if s[1] == ("flu",)}
    secondary_session = {s[3]: s for s in sessions if s[1] == SECONDARY_PROGRAMMES}
    ps_id = _next_id(conn, "patient_sessions")
    patient_sessions = []  # (id, patient, session)
    for p in patients:
        patient_sessions.append((ps_id, p[0], flu_session[p[2]]))
        ps_id += 1
        if p[1] >= 7:
            patient_sessions.append((ps_id, p[0], secondary_session[p[2]]))
            ps_id += 1
    ctx.copy("patient_sessions", ["id", "patient_id", "session_id"],
             ((ps[0], ps[1], ps[2][0]) for ps in patient_sessions))

    def eligible(year_group: int) -> list[str]:
        ranges = {"flu": (0, 11), "hpv": (8, 11), "menacwy": (9, 11), "td_ipv": (9, 11)}
        return [t for t, (lo, hi) in ranges.items() if lo <= year_group <= hi]

    def past(days_back_max: int) -> datetime:
        return now - timedelta(days=rng.uniform(0.1, days_back_max))

    consents, triages = [], []
    for p in patients:
        for programme in eligible(p[1]):
            if rng.random() < 0.25:
                continue  # no response yet
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                self_consent = p[1] >= 9 and rng.random() < 0.05
                response = rng.choices((0, 1, 2), weights=(75, 20, 5))[0]
                withdrawn = response == 1 and rng.random() < 0.15
                medicines = {"question": "Does your child take any medicines?",
                             "response": rng.choice(("Yes", "yes")) if rng.random() < 0.1 else "no"}
                if rng.random() < 0.3:
                    medicines["would_require_triage"] = False  # v2 D5: a "yes" that needs no triage
                answers = [{"question": "Does your child have any allergies?", "response": "no"}, medicines]
                submitted = past(60)
                consents.append((
                    p[0], programme_ids[programme], None if self_consent else rng.choice(parents[p[0]]),
                    response, 4 if self_consent else rng.choice((0, 0, 1, 2, 3)), json.dumps(answers),
                    submitted + timedelta(hours=1) if rng.random() < 0.05 else None,
                    submitted if withdrawn else None, submitted, submitted,
                    # v2 C2: half written by the app with the session's year, half left to be derived.
                    academic_year(submitted.astimezone(LONDON).date()) if rng.random() < 0.5 else None,
                ))
            if rng.random() < 0.12:
                for _ in range(rng.choice((1, 1, 2))):
                    triages.append(_triage(rng, p[0], programme_ids[programme], past(30), today))
    _copy_consents_and_triages(ctx, consents, triages)

    # Vaccination records of every outcome, in sessions already held (never in the future).
    records, attendances = [], []
    now_london_date = today
    for ps in patient_sessions:
        pid, session = ps[1], ps[2]
        patient = patients[pid - patients[0][0]]
        held = [(sd_id, d) for sd_id, d in dates_by_session[session[0]] if d <= now_london_date]
        for programme in session[1]:
            if programme not in eligible(patient[1]) or not held or rng.random() < 0.55:
                continue
            sd_id, day = rng.choice(held)
            performed = datetime.combine(day, time(rng.randint(9, 14), rng.randint(0, 59)), tzinfo=LONDON)
            performed = min(performed.astimezone(timezone.utc), now - timedelta(minutes=1))
            outcome = rng.choices(range(7), weights=(60, 8, 6, 4, 6, 4, 6))[0]
            dose = rng.choice((None, None, 1, 2, 3, 5)) if programme == "td_ipv" else None
            records.append((pid, programme_ids[programme], session[0], outcome, performed, dose,
                            performed + timedelta(hours=3) if rng.random() < 0.03 else None, performed))
        for sd_id, day in held:
            if rng.random() < 0.7:
                attendances.append((ps[0], sd_id, rng.random() < 0.85))
    # Some records from elsewhere (GP, previous school): no session.
    for p in rng.sample(patients, k=min(len(patients), ctx.n(80))):
        for programme in eligible(p[1])[:1]:
            performed = now - timedelta(days=rng.randint(200, 1500))
            records.append((p[0], programme_ids[programme], None, rng.choice((0, 4)), performed,
                            5 if programme == "td_ipv" else None, None, performed))
    ctx.copy("vaccination_records", ["patient_id", "programme_id", "session_id", "outcome", "performed_at",
                                     "dose_sequence", "discarded_at", "created_at"], records)
    ctx.copy("session_attendances", ["patient_session_id", "session_date_id", "attending"], attendances)

    last_year(ctx, programme_ids["flu"], schools, patients, parents)
    for table in ("sessions", "session_dates", "patients", "parents", "patient_sessions"):
        _bump_sequence(conn, table)


def _triage(rng, patient_id: int, programme_id: int, created: datetime, today: date) -> tuple:
    """A triage row of any input status (v2: invite_to_clinic 4); a delay usually ends on a date (D2),
    some of them already past."""
    status = rng.randint(0, 4)
    until = today + timedelta(days=rng.randint(-10, 20)) if status == 3 and rng.random() < 0.8 else None
    return (patient_id, programme_id, status, created + timedelta(hours=2) if rng.random() < 0.1 else None,
            created, None, until)


def _copy_consents_and_triages(ctx, consents: list[tuple], triages: list[tuple]) -> None:
    ctx.copy("consents", ["patient_id", "programme_id", "parent_id", "response", "route", "health_answers",
                          "invalidated_at", "withdrawn_at", "submitted_at", "created_at", "academic_year"], consents)
    ctx.copy("triages", ["patient_id", "programme_id", "status", "invalidated_at", "created_at", "academic_year",
                         "delay_vaccination_until"], triages)


def last_year(ctx, flu_id: int, schools: int, patients: list[tuple], parents: dict[int, list[int]]) -> None:
    """The previous academic year: per school a flu session held last autumn, with the children then in flu
    year groups; their consents (some with the stored year), a few triages, and doses given there (mostly
    administered). Under rules v2 none of it counts this year: last year's flu doses no longer make a child
    vaccinated, and last year's consents and triages no longer count."""
    conn, rng, today = ctx.conn, ctx.rng, ctx.today
    previous = academic_year(today) - 1
    session_id, sd_id, ps_id = (_next_id(conn, t) for t in ("sessions", "session_dates", "patient_sessions"))
    held = {}  # school → (session id, session date id, date)
    for school in range(schools):
        held[school] = (session_id + school, sd_id + school,
                        date(previous, 10, 1) + timedelta(days=rng.randint(0, 60)))
    ctx.copy("sessions", ["id"], ((s,) for s, _, _ in held.values()))
    ctx.copy("session_programmes", ["session_id", "programme_id", "created_at"],
             ((s, flu_id, ctx.now) for s, _, _ in held.values()))
    ctx.copy("session_dates", ["id", "session_id", "value"], ((d, s, v) for s, d, v in held.values()))
    patient_sessions, consents, triages, records, attendances = [], [], [], [], []
    for p in patients:
        if not 0 <= p[1] - 1 <= 11 or rng.random() < 0.2:
            continue  # not in a flu year group last year, or not at that session
        sid, sdid, day = held[p[2]]
        patient_sessions.append((ps_id, p[0], sid))
        at_noon = datetime.combine(day, time(12), tzinfo=LONDON).astimezone(timezone.utc)
        if rng.random() < 0.7:
            submitted = at_noon - timedelta(days=rng.randint(5, 30))
            consents.append((p[0], flu_id, rng.choice(parents[p[0]]), rng.choices((0, 1), weights=(85, 15))[0], 0,
                             json.dumps([{"question": "Does your child have asthma?", "response": "no"}]),
                             None, None, submitted, submitted, previous if rng.random() < 0.5 else None))
        if rng.random() < 0.05:
            triages.append(_triage(rng, p[0], flu_id, at_noon - timedelta(days=2), today))
        if rng.random() < 0.6:
            outcome = rng.choices((0, 4, 2), weights=(85, 5, 10))[0]
            records.append((p[0], flu_id, sid, outcome, at_noon, None, None, at_noon))
            attendances.append((ps_id, sdid, True))
        ps_id += 1
    ctx.copy("patient_sessions", ["id", "patient_id", "session_id"], patient_sessions)
    _copy_consents_and_triages(ctx, consents, triages)
    ctx.copy("vaccination_records", ["patient_id", "programme_id", "session_id", "outcome", "performed_at",
                                     "dose_sequence", "discarded_at", "created_at"], records)
    ctx.copy("session_attendances", ["patient_session_id", "session_date_id", "attending"], attendances)
