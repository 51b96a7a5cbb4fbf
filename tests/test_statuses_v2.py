"""Rules v2 (statuses-v2.md): every worked example of Part 2 and of the adopted D items, as a table, plus
each rule's boundaries (31 August / 1 September, flu given last year vs this year, a consent for next
year submitted in August, a delay expiring today).

The fixture of Part 2: today 2025-11-20 (Y = 2025); patient Sam, birth_academic_year 2010 (year 10) and
date_of_birth 2010-12-15; parents Mum and Dad; session T with one date, 2025-11-20, holding the example's
programme, and patient_session Sam@T; timestamps at 12:00 London; website consents with academic_year
NULL and health answers "no" unless stated. Every case has its own Sam and sessions, in one database
refreshed once (the examples run on another day have tests of their own below).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Callable

import pytest
import sqlalchemy as sa
from test_statuses_helpers import (
    World,
    drop_module_database,
    module_database_engine,
    refresh_everything,
)

from orchestration.clock import LONDON
from orchestration.schema import (
    ConsentStatus as C,
)
from orchestration.schema import (
    RegistrationStatus as R,
)
from orchestration.schema import (
    SessionStatus as S,
)
from orchestration.schema import (
    TriageStatus as T,
)
from orchestration.schema import (
    VaccinationStatus as V,
)

TODAY = date(2025, 11, 20)
SAM_BORN = 2010
SAM_DOB = date(2010, 12, 15)
PATIENT_TABLES = {"consent": "patient_consent_statuses", "triage": "patient_triage_statuses",
                  "vaccination": "patient_vaccination_statuses"}


def london(day: str, clock: time = time(12)) -> datetime:
    """12:00 London on an ISO date (the examples' timestamps)."""
    return datetime.combine(date.fromisoformat(day), clock, tzinfo=LONDON)


class Example:
    """One example's Sam, parents and sessions (T is made up front, holding the example's programme)."""

    def __init__(self, w: World, programme: str, birth_academic_year: int = SAM_BORN, dob: date = SAM_DOB,
                 in_t: bool = True):
        self.w, self.programme = w, programme
        self.sam = w.patient(birth_academic_year=birth_academic_year, dob=dob, given="Sam", family="Example")
        self.sessions: dict[str, int] = {}
        self.patient_sessions: dict[str, int] = {}
        self.parents: dict[str, int] = {}
        self.session("T", [TODAY], join=in_t)

    def session(self, name: str, dates: list[date], programmes: list[str] | None = None, join: bool = True) -> int:
        sid = self.w.session(programmes or [self.programme], dates)
        self.sessions[name] = sid
        if join:
            self.patient_sessions[name] = self.w.patient_session(self.sam, sid)
        return sid

    def consent(self, who: str, response: str, day: str | datetime, **kw) -> int:
        when = day if isinstance(day, datetime) else london(day)
        route = "self_consent" if who == "self" else "website"
        parent = None if who == "self" else self.parents.setdefault(who, self.w.parent(f"{who} Example"))
        return self.w.consent(self.sam, kw.pop("programme", self.programme), response, route=route,
                              parent_id=parent, submitted=when, **kw)

    def record(self, outcome: str, day: str | datetime, session: str | None = None, **kw) -> int:
        when = day if isinstance(day, datetime) else london(day)
        return self.w.record(self.sam, kw.pop("programme", self.programme), outcome, performed=when,
                             session_id=self.sessions[session] if session else None, **kw)

    def triage(self, status: str, day: str, **kw) -> int:
        return self.w.triage(self.sam, self.programme, status, created=london(day), **kw)

    def attendance(self, session: str, attending: bool, day: date = TODAY) -> int:
        return self.w.attendance(self.patient_sessions[session], attending, day, self.sessions[session])


@dataclass
class Case:
    name: str
    programme: str
    build: Callable[[Example], None]
    expect: dict  # consent / triage / vaccination, "session T" (or another session's name), "registration T"
    patient: dict = field(default_factory=dict)  # Example(...) keyword arguments


def steps(*functions):
    def build(e: Example):
        for f in functions:
            f(e)
    return build


def flu_last_year(e):
    e.record("administered", "2024-11-20")


def mum_yes_2025_10_01(e):
    e.consent("Mum", "given", "2025-10-01", health_yes="yes")


def mum_gave(e):
    e.consent("Mum", "given", "2025-11-01")


def both_parents_2025_11_01(e):
    e.consent("Mum", "refused", "2025-11-01")
    e.consent("Dad", "given", "2025-11-01")


def in_session_v_administered(e):
    e.session("V", [date(2025, 10, 1)])
    e.record("administered", "2025-10-01", session="V")


def answers(*items):
    return lambda e: e.consent("Mum", "given", "2025-11-01", answers=[{"question": "Q", **i} for i in items])


def delay_until(until: date | None, consent: bool = True):
    def build(e):
        if consent:
            mum_gave(e)
        e.triage("delay_vaccination", "2025-11-01", delay_until=until)
    return build


CASES = [
    # --- C1: flu is annual; records count only up to the year in question --------------------------
    Case("1a flu given last year, nothing else", "flu", flu_last_year,
         {"vaccination": V.NONE_YET, "consent": C.NO_RESPONSE, "triage": T.NOT_REQUIRED, "session T": S.NONE_YET}),
    Case("1b 1a + Mum gives consent with a yes answer", "flu", steps(flu_last_year, mum_yes_2025_10_01),
         {"consent": C.GIVEN, "triage": T.REQUIRED, "vaccination": V.NONE_YET}),
    Case("1d HPV given in 2023 at 12 still counts", "hpv", lambda e: e.record("administered", "2023-10-05"),
         {"vaccination": V.VACCINATED}),
    # --- C2: consents and triages count only in their academic year -------------------------------
    Case("2a Mum's consent of 2024 does not count", "hpv", lambda e: e.consent("Mum", "given", "2024-10-15"),
         {"consent": C.NO_RESPONSE, "triage": T.NOT_REQUIRED, "vaccination": V.NONE_YET, "session T": S.NONE_YET}),
    Case("2b Mum gives in 2025, Dad refused in 2024", "hpv",
         lambda e: (e.consent("Mum", "given", "2025-10-15"), e.consent("Dad", "refused", "2024-10-15")),
         {"consent": C.GIVEN, "vaccination": V.NONE_YET, "session T": S.NONE_YET}),
    Case("2c do_not_vaccinate triage of 2024 does not count", "hpv",
         lambda e: (e.consent("Mum", "given", "2025-10-15"), e.triage("do_not_vaccinate", "2024-10-15")),
         {"triage": T.NOT_REQUIRED, "vaccination": V.NONE_YET, "session T": S.NONE_YET}),
    Case("2e Dad refused in 2024 for last year's session U", "hpv",
         lambda e: (e.session("U", [date(2024, 10, 10)]), e.consent("Dad", "refused", "2024-10-01")),
         {"consent": C.NO_RESPONSE, "vaccination": V.NONE_YET, "session U": S.REFUSED, "session T": S.NONE_YET}),
    # --- C3: consent not_required when vaccinated --------------------------------------------------
    Case("3a HPV given outside a session, no consents", "hpv", lambda e: e.record("administered", "2025-10-01"),
         {"consent": C.NOT_REQUIRED, "triage": T.NOT_REQUIRED, "vaccination": V.VACCINATED}),
    Case("3b vaccinated in V after Mum refused", "hpv",
         steps(in_session_v_administered, lambda e: e.consent("Mum", "refused", "2025-09-15")),
         {"consent": C.NOT_REQUIRED, "vaccination": V.VACCINATED, "session V": S.VACCINATED,
          "session T": S.NONE_YET}),
    Case("3c Td/IPV dose 1 outside a session at 14, Mum gives", "td_ipv",
         lambda e: (e.record("administered", "2025-10-01", dose_sequence=1), mum_gave(e)),
         {"consent": C.GIVEN, "triage": T.REQUIRED, "vaccination": V.NONE_YET}),
    # --- C4: session conflicting_consent -----------------------------------------------------------
    Case("4a Mum refused, Dad gave", "hpv", both_parents_2025_11_01,
         {"session T": S.CONFLICTING_CONSENT, "consent": C.CONFLICTS, "vaccination": V.COULD_NOT_VACCINATE}),
    Case("4b 4a + not attending today", "hpv", steps(both_parents_2025_11_01, lambda e: e.attendance("T", False)),
         {"session T": S.ABSENT_FROM_SESSION, "registration T": R.NOT_ATTENDING}),
    Case("4c 4a + a not_well record in T", "hpv",
         steps(both_parents_2025_11_01, lambda e: e.record("not_well", "2025-11-20", session="T")),
         {"session T": S.UNWELL}),
    Case("4d self-consent given, Mum refused", "hpv",
         lambda e: (e.consent("self", "given", "2025-11-01"), e.consent("Mum", "refused", "2025-11-01")),
         {"consent": C.GIVEN, "session T": S.NONE_YET}),
    Case("4e 4a + HPV given in another session V", "hpv", steps(both_parents_2025_11_01, in_session_v_administered),
         {"consent": C.NOT_REQUIRED, "session T": S.NONE_YET, "session V": S.VACCINATED}),
    # --- D1: triage invite_to_clinic ---------------------------------------------------------------
    Case("D1 invite_to_clinic", "hpv", lambda e: (mum_gave(e), e.triage("invite_to_clinic", "2025-11-10")),
         {"triage": T.INVITE_TO_CLINIC, "vaccination": V.NONE_YET, "session T": S.NONE_YET}),
    Case("D1 invite_to_clinic, then HPV given", "hpv",
         lambda e: (mum_gave(e), e.triage("invite_to_clinic", "2025-11-10"), e.record("administered", "2025-11-12")),
         {"triage": T.NOT_REQUIRED}),
    Case("D1 invite_to_clinic, then ready_to_vaccinate", "hpv",
         lambda e: (mum_gave(e), e.triage("invite_to_clinic", "2025-11-10"), e.triage("ready_to_vaccinate", "2025-11-12")),
         {"triage": T.SAFE_TO_VACCINATE}),
    # --- D2: a delay expires on its date -----------------------------------------------------------
    Case("D2 delay until tomorrow", "hpv", delay_until(date(2025, 11, 21)), {"triage": T.DELAY_VACCINATION}),
    Case("D2 delay until today has expired", "hpv", delay_until(TODAY), {"triage": T.REQUIRED}),
    Case("D2 delay without a date", "hpv", delay_until(None), {"triage": T.DELAY_VACCINATION}),
    Case("D2 expired delay without consent", "hpv", delay_until(date(2025, 11, 19), consent=False),
         {"triage": T.REQUIRED, "consent": C.NO_RESPONSE}),
    # --- D3: history asks for triage only for MenACWY and Td/IPV ----------------------------------
    Case("D3 flu given last year, Mum gives with all no", "flu",
         lambda e: (flu_last_year(e), e.consent("Mum", "given", "2025-10-01")), {"triage": T.NOT_REQUIRED}),
    # --- D4: Td/IPV complete after any in-session dose at 10+ ---------------------------------------
    Case("D4 Td/IPV dose 1 in T at 14", "td_ipv",
         lambda e: (mum_gave(e), e.record("administered", "2025-11-20", session="T", dose_sequence=1)),
         {"vaccination": V.VACCINATED, "consent": C.NOT_REQUIRED, "triage": T.NOT_REQUIRED, "session T": S.VACCINATED}),
    Case("D4 Td/IPV dose 1 outside a session", "td_ipv",
         lambda e: e.record("administered", "2025-11-20", dose_sequence=1), {"vaccination": V.NONE_YET}),
    Case("D4 Td/IPV dose 5 in a session at 9", "td_ipv",
         lambda e: (e.session("W", [date(2020, 1, 10)], join=False),
                    e.record("administered", "2020-01-10", session="W", dose_sequence=5)),
         {"vaccination": V.NONE_YET}),
    # --- D5: would_require_triage ------------------------------------------------------------------
    Case("D5 yes, would_require_triage false", "hpv", answers({"response": "yes", "would_require_triage": False}),
         {"triage": T.NOT_REQUIRED}),
    Case("D5 yes, no would_require_triage key", "hpv", answers({"response": "yes"}), {"triage": T.REQUIRED}),
    Case("D5 yes false and yes true", "hpv",
         answers({"response": "yes", "would_require_triage": False}, {"response": "yes", "would_require_triage": True}),
         {"triage": T.REQUIRED}),
    Case("D5 decision 6: null counts as true", "hpv", answers({"response": "Yes", "would_require_triage": None}),
         {"triage": T.REQUIRED}),
    Case("D5 decision 6: the string 'false' counts as true", "hpv",
         answers({"response": "YES", "would_require_triage": "false"}), {"triage": T.REQUIRED}),
    Case("D5 decision 6: 0 counts as true", "hpv", answers({"response": "yes", "would_require_triage": 0}),
         {"triage": T.REQUIRED}),
    # --- D7: a session's programmes in the session's year ------------------------------------------
    Case("D7 Kim, year 12 now, in last year's hpv session U", "hpv",
         lambda e: e.session("U", [date(2024, 10, 10)]),
         {"session U": S.NONE_YET, "registration U": R.UNKNOWN, "consent": None},
         patient={"birth_academic_year": 2008, "dob": date(2009, 3, 1), "in_t": False}),
    # --- boundaries -------------------------------------------------------------------------------
    Case("flu given this year (1 September) counts", "flu", lambda e: e.record("administered", "2025-09-01"),
         {"vaccination": V.VACCINATED, "consent": C.NOT_REQUIRED}),
    Case("flu given at 00:30 London on 1 September (31 August in UTC) counts", "flu",
         lambda e: e.record("administered", london("2025-09-01", time(0, 30))), {"vaccination": V.VACCINATED}),
    Case("flu given at 23:30 London on 31 August does not count", "flu",
         lambda e: e.record("already_had", london("2025-08-31", time(23, 30))), {"vaccination": V.NONE_YET}),
    Case("consent submitted 00:30 London on 1 September counts", "hpv",
         lambda e: e.consent("Mum", "given", london("2025-09-01", time(0, 30))), {"consent": C.GIVEN}),
    Case("consent submitted 31 August counts only with its stored year", "hpv",
         lambda e: (e.consent("Mum", "given", london("2025-08-31", time(23, 30)), academic_year=2025),
                    e.consent("Dad", "refused", london("2025-08-31", time(23, 30)))),
         {"consent": C.GIVEN, "vaccination": V.NONE_YET}),
    Case("a stored consent year beats the timestamp: next year's consent does not count", "hpv",
         lambda e: e.consent("Mum", "refused", "2025-11-01", academic_year=2026), {"consent": C.NO_RESPONSE}),
    Case("a triage of 31 August stored for 2025 counts", "hpv",
         lambda e: e.w.triage(e.sam, "hpv", "do_not_vaccinate", created=london("2025-08-31"), academic_year=2025),
         {"triage": T.DO_NOT_VACCINATE, "session T": S.HAD_CONTRAINDICATIONS}),
    Case("decision 8: vaccinated elsewhere + do_not_vaccinate → had_contraindications, not refused", "hpv",
         lambda e: (e.record("administered", "2025-10-01"), e.triage("do_not_vaccinate", "2025-11-01"),
                    e.consent("Mum", "refused", "2025-11-01")),
         {"session T": S.HAD_CONTRAINDICATIONS, "consent": C.NOT_REQUIRED}),
]


@pytest.fixture(scope="module")
def v2_world(pg_admin_url, template_database):
    """One database holding every case, refreshed once on 2025-11-20."""
    name = "pso_test_statuses_v2"
    engine = module_database_engine(pg_admin_url, template_database, name)
    built = {}
    with engine.begin() as conn:
        world = World(conn)
        for case in CASES:
            example = Example(world, case.programme, **case.patient)
            case.build(example)
            built[case.name] = example
    refresh_everything(engine, today=TODAY)
    with engine.connect() as conn:
        world.conn = conn
        yield world, built, engine
    engine.dispose()
    drop_module_database(pg_admin_url, name)


def read(world: World, e: Example, label: str) -> int | None:
    if label in PATIENT_TABLES:
        return world.patient_status(PATIENT_TABLES[label], e.sam, e.programme)
    kind, session = label.split(" ")
    if kind == "session":
        return world.session_status(e.patient_sessions[session], e.programme)
    return world.registration_status(e.patient_sessions[session])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_example(v2_world, case: Case):
    world, built, _ = v2_world
    e = built[case.name]
    got = {label: read(world, e, label) for label in case.expect}
    assert got == {label: None if v is None else int(v) for label, v in case.expect.items()}


def test_every_status_value_is_reached():
    """With the v1 rule table, every code of every status table (the v2 codes included) is some case's answer."""
    from test_statuses_rules import CASES as V1_CASES

    reached = {label: {int(getattr(c, label)) for c in V1_CASES if getattr(c, label) is not None}
               for label in ("consent", "triage", "vaccination", "session", "registration")}
    for case in CASES:
        for label, value in case.expect.items():
            if value is not None:
                reached[label.split(" ")[0]].add(int(value))
    assert reached == {"consent": set(map(int, C)), "triage": set(map(int, T)), "vaccination": set(map(int, V)),
                       "session": set(map(int, S)), "registration": set(map(int, R))}


def test_a_second_refresh_writes_nothing(v2_world):
    _world, _built, engine = v2_world
    for programme, result in refresh_everything(engine, today=TODAY).items():
        assert result.written == 0, programme


# --- examples run on two days -------------------------------------------------------------------


def _statuses(engine, e: Example, today: date, labels) -> dict:
    refresh_everything(engine, today=today)
    with engine.connect() as conn:
        e.w.conn = conn
        return {label: read(e.w, e, label) for label in labels}


def test_1c_flu_rollover_with_no_input_change(engine):
    """Flu given 2025-06-10: vaccinated on 31 August (Y = 2024), not from 1 September (Y = 2025)."""
    with engine.begin() as conn:
        e = Example(World(conn), "flu")
        e.record("administered", "2025-06-10")
    labels = ("vaccination", "consent")
    assert _statuses(engine, e, date(2025, 8, 31), labels) == {"vaccination": V.VACCINATED, "consent": C.NOT_REQUIRED}
    assert _statuses(engine, e, date(2025, 9, 1), labels) == {"vaccination": V.NONE_YET, "consent": C.NO_RESPONSE}


@pytest.mark.parametrize("stored_year, on_25_august, from_1_september", [
    (2025, C.NO_RESPONSE, C.GIVEN),  # written by the app for a September session
    (None, C.GIVEN, C.NO_RESPONSE),  # derived from submitted_at: "lost" on 1 September
])
def test_2d_a_consent_for_next_year_submitted_in_august(engine, stored_year, on_25_august, from_1_september):
    with engine.begin() as conn:
        e = Example(World(conn), "hpv")
        e.consent("Mum", "given", "2025-08-20", academic_year=stored_year)
    assert _statuses(engine, e, date(2025, 8, 25), ["consent"]) == {"consent": on_25_august}
    assert _statuses(engine, e, date(2025, 9, 1), ["consent"]) == {"consent": from_1_september}


def test_d2_a_delay_expires_on_its_date(engine):
    with engine.begin() as conn:
        e = Example(World(conn), "hpv")
        mum_gave(e)
        e.triage("delay_vaccination", "2025-11-01", delay_until=date(2025, 11, 21))
    assert _statuses(engine, e, TODAY, ["triage"]) == {"triage": T.DELAY_VACCINATION}
    assert _statuses(engine, e, date(2025, 11, 21), ["triage"]) == {"triage": T.REQUIRED}


# --- which rows exist (D6) -----------------------------------------------------------------------


def test_d6_patient_level_rows_for_every_patient(engine):
    """Ali (year 9, no patient_session, HPV given 2025-10-01) has rows in every programme; a year-12 child
    with no session has none."""
    with engine.begin() as conn:
        w = World(conn)
        ali = w.patient(birth_academic_year=2011, dob=date(2011, 11, 1), given="Ali")
        w.record(ali, "hpv", "administered", performed=london("2025-10-01"), session_id=None)
        older = w.patient(birth_academic_year=2008, dob=date(2009, 3, 1))
    refresh_everything(engine, today=TODAY)
    with engine.connect() as conn:
        w.conn = conn
        for table in PATIENT_TABLES.values():
            rows = dict(conn.execute(sa.text(f"SELECT programme_id, status FROM {table} WHERE patient_id = :p"),
                                     {"p": ali}).all())
            assert set(rows) == set(w.programmes.values()), table
            assert not conn.execute(sa.text(f"SELECT 1 FROM {table} WHERE patient_id = :p"), {"p": older}).first()
        expect = {"hpv": (C.NOT_REQUIRED, T.NOT_REQUIRED, V.VACCINATED)}
        for programme in w.programmes:
            want = expect.get(programme, (C.NO_RESPONSE, T.NOT_REQUIRED, V.NONE_YET))
            got = tuple(w.patient_status(t, ali, programme) for t in PATIENT_TABLES.values())
            assert got == tuple(map(int, want)), programme


def test_a_session_scoped_refresh_reads_records_of_other_sessions(engine):
    """C4 triggers: a refresh of session T alone still judges Vaccinated from the record in V (4e)."""
    from assets.statuses import StatusScope, programme_ids_by_type, refresh_statuses

    with engine.begin() as conn:
        e = Example(World(conn), "hpv")
        both_parents_2025_11_01(e)
        in_session_v_administered(e)
    with engine.connect() as conn:
        hpv = programme_ids_by_type(conn)["hpv"]
        conn.commit()
        refresh_statuses(conn, hpv, StatusScope(session_ids=(e.sessions["T"],)), TODAY)
        e.w.conn = conn
        assert read(e.w, e, "session T") == S.NONE_YET
        assert read(e.w, e, "session V") is None  # not in the scope


def test_the_benchmarks_per_row_python_baseline_agrees_with_the_sql(v2_world):
    """bench/statuses_refresh.py's Python baseline follows v2: it gives every case's patient-level statuses,
    in every programme the patient has rows for, exactly as the set-based refresh cached them."""
    from bench.statuses_refresh import python_statuses

    world, built, engine = v2_world
    compared = 0
    with engine.connect() as conn:
        for case in CASES:
            sam = built[case.name].sam
            for programme, programme_id in world.programmes.items():
                cached = {t: world.patient_status(t, sam, programme) for t in PATIENT_TABLES.values()}
                if None in cached.values():
                    continue  # not eligible: no rows
                assert python_statuses(conn, sam, programme_id, programme, TODAY) == cached, (case.name, programme)
                compared += 1
    assert compared > 3 * len(CASES)


def test_the_generators_last_year_no_longer_counts_and_the_python_baseline_agrees(database_url, engine):
    """The synthetic statuses hold last year's flu sessions, consents, triages and doses (so the demo shows
    rules v2 at work): children vaccinated against flu only last year are `none_yet` now; the refresh is
    complete (coverage), and the benchmark's Python baseline agrees with it on a sample of patients."""
    from assets.statuses import programme_ids_by_type, status_coverage
    from bench.statuses_refresh import python_statuses
    from orchestration.synthetic import seed_all

    now = datetime(2025, 11, 20, 10, tzinfo=LONDON)
    seed_all(database_url, scale=0.2, now=now, families=["orchestration.synthetic.statuses"], echo=lambda *_: None)
    refresh_everything(engine, today=TODAY)
    with engine.connect() as conn:
        flu = programme_ids_by_type(conn)["flu"]
        last_year_only = conn.execute(sa.text("""
            SELECT s.status, count(*) FROM patient_vaccination_statuses AS s
            WHERE s.programme_id = :flu AND EXISTS (
                SELECT 1 FROM vaccination_records vr WHERE vr.patient_id = s.patient_id AND vr.programme_id = :flu
                  AND vr.outcome = 0 AND vr.discarded_at IS NULL AND vr.performed_at < DATE '2025-09-01')
              AND NOT EXISTS (
                SELECT 1 FROM vaccination_records vr WHERE vr.patient_id = s.patient_id AND vr.programme_id = :flu
                  AND vr.outcome IN (0, 4) AND vr.discarded_at IS NULL AND vr.performed_at >= DATE '2025-09-01')
            GROUP BY s.status"""), {"flu": flu}).all()
        assert dict(last_year_only).keys() <= {V.NONE_YET, V.COULD_NOT_VACCINATE} and sum(n for _, n in last_year_only) > 50
        old = conn.execute(sa.text("SELECT count(*) FROM consents WHERE submitted_at < DATE '2025-09-01'")).scalar_one()
        assert old > 50
        assert all(rows == [] for rows in status_coverage(conn, TODAY).values())
        sample = conn.execute(sa.text("SELECT patient_id, programme_id, p.type FROM patient_consent_statuses "
                                      "JOIN programmes p ON p.id = programme_id ORDER BY patient_id, programme_id "
                                      "LIMIT 300")).all()
        for patient_id, programme_id, programme in sample:
            cached = {t: conn.execute(sa.text(f"SELECT status FROM {t} WHERE patient_id = :p AND programme_id = :pr"),
                                      {"p": patient_id, "pr": programme_id}).scalar_one()
                      for t in PATIENT_TABLES.values()}
            assert python_statuses(conn, patient_id, programme_id, programme, TODAY) == cached, (patient_id, programme)
