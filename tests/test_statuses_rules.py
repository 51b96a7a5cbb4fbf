"""Table-driven rule tests for the cached statuses (domain.md §1.4–1.6), against a real Postgres.

Every case builds its own patient (all in one database), one full refresh of every programme runs,
and each case's cached statuses are compared with the expected codes. Cases name the rule, fix or
quirk they reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Callable

import pytest
import sqlalchemy as sa
from test_statuses_helpers import (
    TODAY,
    World,
    drop_module_database,
    module_database_engine,
    refresh_everything,
)

from assets.statuses import DATE_DEPENDENT_TABLES
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


@dataclass
class Case:
    name: str
    build: Callable[[World, int, int], None]  # (world, patient_id, patient_session_id)
    programme: str = "hpv"
    consent: int | None = None
    triage: int | None = None
    vaccination: int | None = None
    session: int | None = None
    registration: int | None = None
    extra: dict = field(default_factory=dict)


def nothing(w, p, ps):
    pass


def both_parents(first: str, second: str, programme: str = "hpv"):
    def build(w, p, ps):
        w.consent(p, programme, first, parent_id=w.parent("Parent One"), submitted=0)
        w.consent(p, programme, second, parent_id=w.parent("Parent Two"), submitted=1)
    return build


def chain(*steps):
    def build(w, p, ps):
        for step in steps:
            step(w, p, ps)
    return build


def consent(response, route="website", name="Parent One", **kw):
    def build(w, p, ps):
        parent = None if route == "self_consent" else w.parent(name)
        w.consent(p, kw.pop("programme", "hpv"), response, route=route, parent_id=parent, **kw)
    return build


def triage(status, **kw):
    return lambda w, p, ps: w.triage(p, kw.pop("programme", "hpv"), status, **kw)


def record(outcome, programme="hpv", **kw):
    return lambda w, p, ps: w.record(p, programme, outcome, **kw)


def attend(attending, day=TODAY):
    return lambda w, p, ps: w.attendance(ps, attending, day)


def same_name_parents(w, p, ps):
    # Duplicate parent rows from repeated form submissions merge by name: the newest answer wins.
    w.consent(p, "hpv", "given", parent_id=w.parent("Dup Parent"), submitted=0)
    w.consent(p, "hpv", "refused", parent_id=w.parent("Dup Parent"), submitted=2)


def unknown_name_parents(w, p, ps):
    # Side effect kept: distinct parents without a name merge into one group.
    w.consent(p, "hpv", "refused", parent_id=w.parent(None), submitted=0)
    w.consent(p, "hpv", "given", parent_id=w.parent(None), submitted=2)


def submitted_beats_created(w, p, ps):
    parent = w.parent("Order Parent")
    w.consent(p, "hpv", "given", parent_id=parent, submitted=5, created=0)
    w.consent(p, "hpv", "refused", parent_id=parent, submitted=1, created=9)


def not_provided_ignored(w, p, ps):
    parent = w.parent("Np Parent")
    w.consent(p, "hpv", "given", parent_id=parent, submitted=0)
    w.consent(p, "hpv", "not_provided", parent_id=parent, submitted=3)


def invalidated_ignored(w, p, ps):
    w.consent(p, "hpv", "given", parent_id=w.parent("Val Parent"), submitted=0)
    w.consent(p, "hpv", "refused", parent_id=w.parent("Inval Parent"), submitted=3, invalidated=True)


def self_changed_mind(w, p, ps):
    w.consent(p, "hpv", "given", route="self_consent", submitted=0)
    w.consent(p, "hpv", "refused", route="self_consent", submitted=2)


def born_on_leap_day(w, p, ps):
    # Still year 10 (born in academic year 2011/12); the 10th birthday falls in 2022, not a leap year.
    w.conn.execute(sa.text("UPDATE patients SET date_of_birth = DATE '2012-02-29' WHERE id = :p"), {"p": p})


def consent_tie_created_decides(w, p, ps):
    # Equal submitted_at: the later created_at wins, although it has the lower id.
    parent = w.parent("Tie Parent")
    w.consent(p, "hpv", "refused", parent_id=parent, submitted=0, created=1)
    w.consent(p, "hpv", "given", parent_id=parent, submitted=0, created=0)


def consent_tie_id_decides(first: str, second: str):
    # Equal submitted_at and created_at: the greater id (inserted second) wins.
    def build(w, p, ps):
        parent = w.parent("Tie Parent")
        w.consent(p, "hpv", first, parent_id=parent, submitted=0, created=0)
        w.consent(p, "hpv", second, parent_id=parent, submitted=0, created=0)
    return build


def other_session_record(outcome: str = "administered", programme: str = "hpv"):
    # A kept record of the programme in ANOTHER session (which also has the programme and the patient).
    def build(w, p, ps):
        other = w.session([programme], [TODAY])
        w.patient_session(p, other)
        w.record(p, programme, outcome, session_id=other)
    return build


# performed 2021-09-30 23:30 UTC = 1 October 2021 in London: the 10th birthday of a child born 1 Oct 2011.
LONDON_TENTH_BIRTHDAY = datetime(2021, 9, 30, 23, 30, tzinfo=timezone.utc)
UTC_DAY_BEFORE = datetime(2021, 9, 30, 22, 30, tzinfo=timezone.utc)  # 23:30 London, still 30 September

CASES = [
    # --- consent -------------------------------------------------------------------------
    Case("consent: nothing → no_response", nothing, consent=C.NO_RESPONSE, triage=T.NOT_REQUIRED,
         vaccination=V.NONE_YET, session=S.NONE_YET, registration=R.UNKNOWN),
    Case("consent rule 1: parent given", consent("given"), consent=C.GIVEN, triage=T.NOT_REQUIRED),
    Case("consent rule 2: parent refused", consent("refused"), consent=C.REFUSED,
         vaccination=V.COULD_NOT_VACCINATE, session=S.REFUSED),
    Case("consent rule 3: parents disagree → conflicts (session: conflicting_consent, v2 C4)",
         both_parents("given", "refused"), consent=C.CONFLICTS,
         vaccination=V.COULD_NOT_VACCINATE, session=S.CONFLICTING_CONSENT),
    Case("consent rule 1: both parents given", both_parents("given", "given"), consent=C.GIVEN),
    Case("consent rule 2: both parents refused", both_parents("refused", "refused"), consent=C.REFUSED,
         session=S.REFUSED),
    Case("consent quirk: self given overrides parental refusal",
         chain(consent("refused"), consent("given", route="self_consent")), consent=C.GIVEN,
         vaccination=V.COULD_NOT_VACCINATE),
    Case("consent quirk: self refused + parent given → no_response",
         chain(consent("given"), consent("refused", route="self_consent")), consent=C.NO_RESPONSE),
    Case("consent: self changed mind, latest self answer wins", self_changed_mind, consent=C.REFUSED),
    Case("consent: withdrawn is stored as refused", consent("refused", withdrawn=True), consent=C.REFUSED),
    Case("consent: invalidated ignored", invalidated_ignored, consent=C.GIVEN, vaccination=V.NONE_YET),
    Case("consent: not_provided dropped before grouping", not_provided_ignored, consent=C.GIVEN),
    Case("consent: same-name parent rows merge, newest wins", same_name_parents, consent=C.REFUSED),
    Case("consent: unknown-name parents merge (kept side effect)", unknown_name_parents, consent=C.GIVEN),
    Case("consent: submitted_at orders, not created_at", submitted_beats_created, consent=C.GIVEN),
    Case("consent: only the programme's consents count", consent("refused", programme="flu"),
         consent=C.NO_RESPONSE),
    # --- triage ---------------------------------------------------------------------------
    Case("triage rule 1: vaccinated → not_required even with needs_follow_up",
         chain(record("administered"), triage("needs_follow_up")), triage=T.NOT_REQUIRED,
         vaccination=V.VACCINATED),
    Case("triage rule 2: ready_to_vaccinate → safe", triage("ready_to_vaccinate"), triage=T.SAFE_TO_VACCINATE),
    Case("triage rule 3: do_not_vaccinate", triage("do_not_vaccinate"), triage=T.DO_NOT_VACCINATE,
         vaccination=V.COULD_NOT_VACCINATE, session=S.HAD_CONTRAINDICATIONS),
    Case("triage rule 4: delay_vaccination", triage("delay_vaccination"), triage=T.DELAY_VACCINATION),
    Case("triage rule 5: needs_follow_up → required", triage("needs_follow_up"), triage=T.REQUIRED),
    Case("triage: latest triage wins", chain(triage("do_not_vaccinate", created=0), triage("ready_to_vaccinate",
                                                                                               created=2)),
         triage=T.SAFE_TO_VACCINATE, vaccination=V.NONE_YET, session=S.NONE_YET),
    Case("triage: invalidated triage ignored", chain(triage("ready_to_vaccinate", created=0),
                                                     triage("do_not_vaccinate", created=2, invalidated=True)),
         triage=T.SAFE_TO_VACCINATE),
    Case("triage rule 6: given consent with a 'YES' health answer → required",
         consent("given", health_yes="YES"), consent=C.GIVEN, triage=T.REQUIRED),
    Case("triage rule 7: given consent, health answers all no", consent("given"), triage=T.NOT_REQUIRED),
    Case("triage rule 6 needs given consent: refused with 'yes'", consent("refused", health_yes="yes"),
         triage=T.NOT_REQUIRED),
    Case("triage rule 6 needs the consent STATUS given: conflicts with 'yes'",
         chain(consent("given", name="Pa", health_yes="yes"), consent("refused", name="Pb", submitted=1)),
         consent=C.CONFLICTS, triage=T.NOT_REQUIRED),
    Case("triage rule 6: Td/IPV non-final dose outside a session + given consent → required",
         chain(consent("given", programme="td_ipv"),
               record("administered", programme="td_ipv", dose_sequence=3, session_id=None)),
         programme="td_ipv", triage=T.REQUIRED, vaccination=V.NONE_YET, session=S.NONE_YET),
    Case("triage rule 7: Td/IPV non-final dose without consent → not_required",
         record("administered", programme="td_ipv", dose_sequence=3), programme="td_ipv",
         triage=T.NOT_REQUIRED),
    # --- vaccinated criteria / programme status -----------------------------------------------
    Case("vaccinated: hpv administered", record("administered"), vaccination=V.VACCINATED,
         session=S.VACCINATED),
    Case("vaccinated: discarded record does not count", record("administered", discarded=True),
         vaccination=V.NONE_YET, session=S.NONE_YET),
    Case("vaccinated: already_had counts (flu)", record("already_had", programme="flu"), programme="flu",
         vaccination=V.VACCINATED, session=S.ALREADY_HAD),
    Case("vaccinated: flu administered outside any session", record("administered", programme="flu",
                                                                     session_id=None),
         programme="flu", vaccination=V.VACCINATED, session=S.NONE_YET),
    Case("vaccinated: menacwy at 10 on the London date (UTC date still 9)",
         record("administered", programme="menacwy", performed=LONDON_TENTH_BIRTHDAY), programme="menacwy",
         vaccination=V.VACCINATED),
    Case("vaccinated: menacwy at 9 does not count",
         record("administered", programme="menacwy", performed=UTC_DAY_BEFORE), programme="menacwy",
         vaccination=V.NONE_YET, triage=T.NOT_REQUIRED),
    Case("vaccinated: menacwy on 1 March, the 10th birthday of a 29 Feb birth in a non-leap year (as Mavis)",
         chain(born_on_leap_day, record("administered", programme="menacwy",
                                        performed=datetime(2022, 3, 1, 9, tzinfo=timezone.utc))),
         programme="menacwy", vaccination=V.VACCINATED),
    Case("vaccinated: menacwy on 28 Feb before a 29 Feb birth's 10th birthday does not count",
         chain(born_on_leap_day, record("administered", programme="menacwy",
                                        performed=datetime(2022, 2, 28, 9, tzinfo=timezone.utc))),
         programme="menacwy", vaccination=V.NONE_YET),
    Case("vaccinated: td_ipv dose 5 at 10+", record("administered", programme="td_ipv", dose_sequence=5,
                                                    session_id=None), programme="td_ipv",
         vaccination=V.VACCINATED),
    Case("vaccinated: td_ipv no dose, in a session, 10+", record("administered", programme="td_ipv"),
         programme="td_ipv", vaccination=V.VACCINATED),
    Case("vaccinated: td_ipv no dose and no session does not count",
         record("administered", programme="td_ipv", session_id=None), programme="td_ipv",
         vaccination=V.NONE_YET),
    Case("vaccinated: td_ipv dose 5 at 9 does not count",
         record("administered", programme="td_ipv", dose_sequence=5, performed=UTC_DAY_BEFORE, session_id=None),
         programme="td_ipv", vaccination=V.NONE_YET),
    Case("programme rule 2 fix: LATEST triage read (old do_not_vaccinate, new ready)",
         chain(triage("do_not_vaccinate", created=0), triage("ready_to_vaccinate", created=3)),
         vaccination=V.NONE_YET),
    Case("programme rule 2: latest triage do_not_vaccinate", chain(triage("ready_to_vaccinate", created=0),
                                                                   triage("do_not_vaccinate", created=3)),
         vaccination=V.COULD_NOT_VACCINATE),
    # --- session status ------------------------------------------------------------------------
    Case("session rule 2: already_had", record("already_had"), session=S.ALREADY_HAD),
    Case("session rule 3: contraindications record", record("contraindications"),
         session=S.HAD_CONTRAINDICATIONS, vaccination=V.NONE_YET),
    Case("session rule 4: refused record", record("refused"), session=S.REFUSED),
    Case("session rule 5: absent_from_session record", record("absent_from_session"),
         session=S.ABSENT_FROM_SESSION),
    Case("session rule 5: not attending today", attend(False), session=S.ABSENT_FROM_SESSION,
         registration=R.NOT_ATTENDING),
    Case("session rule 5 reads TODAY only: absent yesterday", attend(False, TODAY - timedelta(days=1)),
         session=S.NONE_YET, registration=R.UNKNOWN),
    Case("session rule 6: not_well", record("not_well"), session=S.UNWELL),
    Case("session rule 7: absent_from_school (code kept)", record("absent_from_school"),
         session=S.ABSENT_FROM_SCHOOL),
    Case("session: latest record in the session wins", chain(record("administered", performed=0),
                                                             record("not_well", performed=2)),
         session=S.UNWELL, vaccination=V.VACCINATED),
    Case("session: a record of another programme does not count", record("administered", programme="flu"),
         session=S.NONE_YET),
    Case("session rule order: refusal beats absence", chain(consent("refused"), attend(False)),
         session=S.REFUSED, registration=R.NOT_ATTENDING),
    # --- tie-breaks -----------------------------------------------------------------------------
    Case("consent tie-break: equal submitted_at → later created_at wins (over higher id)",
         consent_tie_created_decides, consent=C.REFUSED),
    Case("consent tie-break: equal submitted_at and created_at → higher id wins (refused last)",
         consent_tie_id_decides("given", "refused"), consent=C.REFUSED),
    Case("consent tie-break: equal submitted_at and created_at → higher id wins (given last)",
         consent_tie_id_decides("refused", "given"), consent=C.GIVEN),
    Case("triage tie-break: equal created_at → higher id wins (ready last)",
         chain(triage("do_not_vaccinate", created=0), triage("ready_to_vaccinate", created=0)),
         triage=T.SAFE_TO_VACCINATE, vaccination=V.NONE_YET, session=S.NONE_YET),
    Case("triage tie-break: equal created_at → higher id wins (do_not_vaccinate last)",
         chain(triage("ready_to_vaccinate", created=0), triage("do_not_vaccinate", created=0)),
         triage=T.DO_NOT_VACCINATE, vaccination=V.COULD_NOT_VACCINATE, session=S.HAD_CONTRAINDICATIONS),
    Case("session tie-break: equal performed_at → higher id wins (not_well last)",
         chain(record("administered", performed=0), record("not_well", performed=0)),
         session=S.UNWELL, vaccination=V.VACCINATED),
    Case("session tie-break: equal performed_at → higher id wins (administered last)",
         chain(record("not_well", performed=0), record("administered", performed=0)),
         session=S.VACCINATED, vaccination=V.VACCINATED),
    # --- records in another session -------------------------------------------------------------
    Case("session: a record of this programme in ANOTHER session does not count here",
         other_session_record("administered"), session=S.NONE_YET, vaccination=V.VACCINATED,
         triage=T.NOT_REQUIRED),
    Case("session: a refused record in ANOTHER session does not count here",
         other_session_record("refused"), session=S.NONE_YET, vaccination=V.NONE_YET),
    Case("registration rule 1: a programme recorded only in ANOTHER session → not completed",
         chain(record("administered", programme="flu"), record("refused", programme="menacwy"),
               record("administered", programme="td_ipv"), other_session_record("administered"),
               attend(True)),
         registration=R.ATTENDING, session=S.NONE_YET, vaccination=V.VACCINATED),
    # --- already_had has no age condition -------------------------------------------------------
    Case("vaccinated: menacwy already_had at 9 counts",
         record("already_had", programme="menacwy", performed=UTC_DAY_BEFORE), programme="menacwy",
         vaccination=V.VACCINATED, triage=T.NOT_REQUIRED, session=S.ALREADY_HAD),
    Case("vaccinated: td_ipv already_had at 9 (no dose, no session) counts",
         record("already_had", programme="td_ipv", performed=UTC_DAY_BEFORE, session_id=None),
         programme="td_ipv", vaccination=V.VACCINATED, triage=T.NOT_REQUIRED, session=S.NONE_YET),
    Case("vaccinated: td_ipv already_had at 9 with a non-final dose counts",
         chain(consent("given", programme="td_ipv"),
               record("already_had", programme="td_ipv", performed=UTC_DAY_BEFORE, dose_sequence=2)),
         programme="td_ipv", vaccination=V.VACCINATED, triage=T.NOT_REQUIRED, session=S.ALREADY_HAD),
    # --- td_ipv dose NULL -----------------------------------------------------------------------
    Case("vaccinated: td_ipv no dose, in a session, at 9 does not count; triage rule 6 → required",
         chain(consent("given", programme="td_ipv"),
               record("administered", programme="td_ipv", performed=UTC_DAY_BEFORE)),
         programme="td_ipv", consent=C.GIVEN, vaccination=V.NONE_YET, triage=T.REQUIRED, session=S.VACCINATED),
    Case("vaccinated: td_ipv no dose, in a session, on the London 10th birthday counts",
         chain(consent("given", programme="td_ipv"),
               record("administered", programme="td_ipv", performed=LONDON_TENTH_BIRTHDAY)),
         programme="td_ipv", vaccination=V.VACCINATED, triage=T.NOT_REQUIRED, session=S.VACCINATED),
    Case("vaccinated: td_ipv no dose and no session at 10+ does not count; triage rule 6 → required",
         chain(consent("given", programme="td_ipv"),
               record("administered", programme="td_ipv", performed=LONDON_TENTH_BIRTHDAY, session_id=None)),
         programme="td_ipv", vaccination=V.NONE_YET, triage=T.REQUIRED, session=S.NONE_YET),
    # --- triage precedence ----------------------------------------------------------------------
    Case("triage rule 2 beats rule 6: ready_to_vaccinate + given with 'yes'",
         chain(consent("given", health_yes="yes"), triage("ready_to_vaccinate")),
         consent=C.GIVEN, triage=T.SAFE_TO_VACCINATE),
    Case("triage rule 3 beats rule 6: do_not_vaccinate + given with 'yes'",
         chain(consent("given", health_yes="yes"), triage("do_not_vaccinate")),
         consent=C.GIVEN, triage=T.DO_NOT_VACCINATE, vaccination=V.COULD_NOT_VACCINATE),
    Case("triage rule 4 beats rule 6: delay_vaccination + given with 'yes'",
         chain(consent("given", health_yes="yes"), triage("delay_vaccination")),
         consent=C.GIVEN, triage=T.DELAY_VACCINATION),
    Case("triage rule 5 before rule 6: needs_follow_up + given with 'yes' (both give required)",
         chain(consent("given", health_yes="yes"), triage("needs_follow_up")),
         consent=C.GIVEN, triage=T.REQUIRED),
    Case("triage rule 1 beats rule 2: vaccinated + ready_to_vaccinate",
         chain(record("administered"), triage("ready_to_vaccinate")), triage=T.NOT_REQUIRED,
         vaccination=V.VACCINATED),
    Case("triage rule 1 beats rule 3 (and programme/session rule 1 win): vaccinated + do_not_vaccinate",
         chain(consent("given", health_yes="yes"), record("administered"), triage("do_not_vaccinate", created=2)),
         triage=T.NOT_REQUIRED, vaccination=V.VACCINATED, session=S.VACCINATED),
    Case("triage rule 1 beats rule 4: vaccinated + delay_vaccination",
         chain(record("administered"), triage("delay_vaccination")), triage=T.NOT_REQUIRED,
         vaccination=V.VACCINATED),
    # --- registration --------------------------------------------------------------------------
    Case("registration rule 2: attending today", attend(True), registration=R.ATTENDING),
    Case("registration rule 1: every programme recorded in this session → completed",
         chain(record("administered", programme="flu"), record("refused", programme="hpv"),
               record("not_well", programme="menacwy"), record("administered", programme="td_ipv"),
               attend(True)),
         registration=R.COMPLETED),
    Case("registration: one programme unrecorded → attending", chain(record("administered"), attend(True)),
         registration=R.ATTENDING),
]


@pytest.fixture(scope="module")
def rules_world(pg_admin_url, template_database):
    """One database holding every case, refreshed once (module scope keeps the tests fast)."""
    name = "pso_test_statuses_rules"
    engine = module_database_engine(pg_admin_url, template_database, name)
    built = {}
    with engine.begin() as conn:
        world = World(conn)
        for case in CASES:
            patient = world.patient()
            ps = world.patient_session(patient)
            case.build(world, patient, ps)
            built[case.name] = (patient, ps)
    results = refresh_everything(engine)
    with engine.connect() as conn:
        world.conn = conn
        yield world, built, results, engine
    engine.dispose()
    drop_module_database(pg_admin_url, name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule(rules_world, case: Case):
    world, built, _results, _engine = rules_world
    patient, ps = built[case.name]
    got, want = {}, {}
    for label, table in (("consent", "patient_consent_statuses"), ("triage", "patient_triage_statuses"),
                         ("vaccination", "patient_vaccination_statuses")):
        if getattr(case, label) is not None:
            want[label] = int(getattr(case, label))
            got[label] = world.patient_status(table, patient, case.programme)
    if case.session is not None:
        want["session"], got["session"] = int(case.session), world.session_status(ps, case.programme)
    if case.registration is not None:
        want["registration"], got["registration"] = int(case.registration), world.registration_status(ps)
    assert got == want


def test_second_refresh_writes_nothing(rules_world):
    _world, _built, first, engine = rules_world
    assert sum(r.written for r in first.values()) > 0
    second = refresh_everything(engine)
    for programme, result in second.items():
        for table, counts in result.tables.items():
            assert (counts.seeded, counts.changed) == (0, 0), (programme, table)
            assert counts.unchanged > 0 or table.startswith("patient_session"), (programme, table)


# --- which rows exist (§1.6) -------------------------------------------------------------------


def test_rows_follow_eligibility_and_the_sessions_own_programmes(engine):
    with engine.begin() as conn:
        w = World(conn)
        year_7 = w.patient(birth_academic_year=2014)  # flu only
        year_10 = w.patient()
        too_old = w.patient(birth_academic_year=2005)  # year 16: nothing
        hpv_session = w.session(["hpv"], [TODAY])
        ps7 = w.patient_session(year_7)
        ps10_main = w.patient_session(year_10)
        ps10_hpv = w.patient_session(year_10, hpv_session)
        ps_old = w.patient_session(too_old)
        ps7_hpv = w.patient_session(year_7, hpv_session)  # session programme the patient is not eligible for
    refresh_everything(engine)
    with engine.connect() as conn:
        def keys(sql):
            return set(conn.execute(sa.text(sql)).all())

        pr = w.programmes
        assert keys("SELECT patient_id, programme_id FROM patient_consent_statuses") == {
            (year_7, pr["flu"]), *((year_10, pr[t]) for t in pr)}
        assert keys("SELECT patient_id, programme_id FROM patient_triage_statuses") == keys(
            "SELECT patient_id, programme_id FROM patient_vaccination_statuses") == keys(
            "SELECT patient_id, programme_id FROM patient_consent_statuses")
        assert keys("SELECT patient_session_id, programme_id FROM patient_session_session_statuses") == {
            (ps7, pr["flu"]), *((ps10_main, pr[t]) for t in pr), (ps10_hpv, pr["hpv"])}
        assert keys("SELECT patient_session_id FROM patient_session_registration_statuses") == {
            (ps7,), (ps10_main,), (ps10_hpv,)}
        assert ps_old and ps7_hpv  # exist, but have no programme → no rows


def test_rows_follow_year_group_boundaries(engine):
    """§1.4 eligible year groups at their edges: flu 0–11, hpv 8–11, menacwy/td_ipv 9–11 (academic year 2026)."""
    with engine.begin() as conn:
        w = World(conn)
        born = {0: 2021, 8: 2013, 9: 2012, 11: 2010, 12: 2009}  # year group today → birth_academic_year
        pts = {yg: w.patient(birth_academic_year=b, dob=date(b, 10, 1)) for yg, b in born.items()}
        pss = {yg: w.patient_session(p) for yg, p in pts.items()}  # the main session has all four programmes
    refresh_everything(engine)
    pr = w.programmes
    expected = {0: {"flu"}, 8: {"flu", "hpv"}, 9: set(pr), 11: set(pr), 12: set()}
    with engine.connect() as conn:
        def keys(sql):
            return set(conn.execute(sa.text(sql)).all())

        want_patient = {(pts[yg], pr[t]) for yg, types in expected.items() for t in types}
        for table in ("patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses"):
            assert keys(f"SELECT patient_id, programme_id FROM {table}") == want_patient, table
        assert keys("SELECT patient_session_id, programme_id FROM patient_session_session_statuses") == {
            (pss[yg], pr[t]) for yg, types in expected.items() for t in types}
        assert keys("SELECT patient_session_id FROM patient_session_registration_statuses") == {
            (pss[yg],) for yg in (0, 8, 9, 11)}


def test_1_september_rolls_the_year_groups_over(engine):
    """Refresh on 31 August, then on 1 September (academic year 2027): a year-11 child becomes year 12 and
    keeps its rows, recomputed; a child becoming year 0 gets flu rows only from 1 September. The sessions are
    dated 31 August and 1 September: they belong to academic year 2026 (their earliest date, v2 decision 7),
    so their programmes stay those of the children's 2026 year groups (D7) across the rollover."""
    aug_31, sep_1 = date(2027, 8, 31), date(2027, 9, 1)
    with engine.begin() as conn:
        w = World(conn)
        hpv_session = w.session(["hpv"], [aug_31, sep_1])
        flu_session = w.session(["flu"], [aug_31, sep_1])
        leaver = w.patient(birth_academic_year=2010, dob=date(2010, 10, 1))  # year 11 → year 12
        ps_hpv = w.patient_session(leaver, hpv_session)
        ps_flu = w.patient_session(leaver, flu_session)
        w.record(leaver, "hpv", "refused", performed=datetime(2027, 6, 1, 10, tzinfo=timezone.utc),
                 session_id=hpv_session)
        w.attendance(ps_hpv, False, sep_1, hpv_session)
        w.attendance(ps_flu, False, sep_1, flu_session)
        starter = w.patient(birth_academic_year=2022, dob=date(2022, 10, 1))  # year −1 → year 0
        ps_starter = w.patient_session(starter, flu_session)
        ps_starter_hpv = w.patient_session(starter, hpv_session)
        w.attendance(ps_starter, True, sep_1, flu_session)
    pr = w.programmes
    patient_tables = ("patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses")

    def rows(conn):
        out = {t: set(conn.execute(sa.text(f"SELECT id, patient_id, programme_id FROM {t}")).all())
               for t in patient_tables}
        out["session"] = set(conn.execute(sa.text(
            "SELECT id, patient_session_id, programme_id FROM patient_session_session_statuses")).all())
        out["registration"] = set(conn.execute(sa.text(
            "SELECT id, patient_session_id FROM patient_session_registration_statuses")).all())
        return out

    refresh_everything(engine, today=aug_31)
    with engine.begin() as conn:
        w.conn = conn
        before = rows(conn)
        for t in patient_tables:
            assert {(p, prog) for _id, p, prog in before[t]} == {(leaver, pr[x]) for x in pr}, t
        assert {(ps, prog) for _id, ps, prog in before["session"]} == {(ps_hpv, pr["hpv"]), (ps_flu, pr["flu"])}
        assert {ps for _id, ps in before["registration"]} == {ps_hpv, ps_flu}
        assert w.registration_status(ps_hpv) == R.COMPLETED
        assert w.registration_status(ps_flu) == R.UNKNOWN
        assert w.session_status(ps_flu, "flu") == S.NONE_YET
        assert w.session_status(ps_hpv, "hpv") == S.REFUSED
        assert w.patient_status("patient_consent_statuses", leaver, "menacwy") == C.NO_RESPONSE
        # An input change that only a recompute of the (soon no longer expected) menacwy rows can show
        # (submitted on 1 September, so it counts in 2027).
        w.consent(leaver, "menacwy", "refused", parent_id=w.parent("Leaver Parent"),
                  submitted=datetime(2027, 9, 1, 8, tzinfo=timezone.utc))

    refresh_everything(engine, today=sep_1)
    with engine.connect() as conn:
        w.conn = conn
        after = rows(conn)
        # No deletes: every row of 31 August is still there, with the same id.
        for table, kept in before.items():
            assert kept <= after[table], table
        # Recomputed although no longer expected.
        assert w.patient_status("patient_consent_statuses", leaver, "menacwy") == C.REFUSED
        assert w.patient_status("patient_vaccination_statuses", leaver, "menacwy") == V.COULD_NOT_VACCINATE
        # D7: hpv is still the 2026 session's programme for the leaver (year 11 then): still completed.
        assert w.registration_status(ps_hpv) == R.COMPLETED
        assert w.registration_status(ps_flu) == R.NOT_ATTENDING
        assert w.session_status(ps_flu, "flu") == S.ABSENT_FROM_SESSION
        assert w.session_status(ps_hpv, "hpv") == S.REFUSED
        # The new year-0 child: patient-level flu rows only, from 1 September; none in the 2026 sessions,
        # where it was in year -1 (D7).
        new = {t: after[t] - before[t] for t in after}
        for t in patient_tables:
            assert {(p, prog) for _id, p, prog in new[t]} == {(starter, pr["flu"])}, t
        assert new["session"] == set() and new["registration"] == set()
        assert {ps_starter, ps_starter_hpv}.isdisjoint({ps for _id, ps in after["registration"]})
        assert w.patient_status("patient_consent_statuses", starter, "flu") == C.NO_RESPONSE


@pytest.mark.parametrize("emptied_by", ["the patient leaving the year groups", "the session losing every programme"])
def test_rows_no_longer_expected_are_recomputed_not_deleted(engine, emptied_by):
    """Fix to registration rule 1: a patient_session whose programme list became empty is not `completed`;
    its row is kept and still recomputed (also when no partition has its session any more)."""
    with engine.begin() as conn:
        w = World(conn)
        hpv_session = w.session(["hpv"], [TODAY])
        p = w.patient()
        ps = w.patient_session(p, hpv_session)
        w.record(p, "hpv", "refused", session_id=hpv_session)
    refresh_everything(engine)
    with engine.begin() as conn:
        w.conn = conn
        assert w.registration_status(ps) == R.COMPLETED
        if emptied_by == "the patient leaving the year groups":  # now year 6: not eligible for hpv
            conn.execute(sa.text("UPDATE patients SET birth_academic_year = 2015 WHERE id = :p"), {"p": p})
        else:
            conn.execute(sa.text("DELETE FROM session_programmes WHERE session_id = :s"), {"s": hpv_session})
    refresh_everything(engine)
    with engine.connect() as conn:
        w.conn = conn
        assert w.registration_status(ps) == R.UNKNOWN  # upstream's all?([]) said completed
        assert w.patient_status("patient_consent_statuses", p, "hpv") == C.NO_RESPONSE  # row kept


def test_a_programme_refresh_reaches_every_patient_holding_its_session_rows(engine):
    """Rows no longer expected are still recomputed, even for a patient found only through its session
    rows, right after one with several patient_sessions at a batch boundary."""
    with engine.begin() as conn:
        w = World(conn)
        other = w.session(["hpv"], [TODAY])
        a, b = w.patient(), w.patient()  # lower ids than the eligible patients below
        w.patient_session(a), w.patient_session(a, other)
        ps_b = w.patient_session(b)
        w.patient(), w.patient()
    # Session rows only (as the day-change refresh writes them): a and b have no patient-level hpv rows.
    refresh_everything(engine, table_names=DATE_DEPENDENT_TABLES)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE patients SET birth_academic_year = 2015 WHERE id IN (:a, :b)"), {"a": a, "b": b})
        conn.execute(sa.text("UPDATE patient_session_session_statuses SET status = 7 WHERE patient_session_id = :ps"),
                     {"ps": ps_b})
    refresh_everything(engine, batch_size=2)
    with engine.connect() as conn:
        w.conn = conn
        assert w.session_status(ps_b, "hpv") == S.NONE_YET


@pytest.mark.parametrize("workers", [1, 2])
def test_holders_between_and_after_pages_of_eligible_patients_are_all_recomputed(engine, workers):
    """A programme's batches end at the last of a full page of eligible ids (so no scan reads past it);
    patients that only hold rows, between eligible ones and after the last of them, still each fall in
    some batch: every stale row is recomputed, whatever the batch size."""
    with engine.begin() as conn:
        w = World(conn)
        ids = [w.patient() for _ in range(9)]
        sessions = {p: w.patient_session(p) for p in ids}
    refresh_everything(engine)
    holders = ids[1::2] + [ids[-1]]  # interleaved, and the last (after every eligible patient)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE patients SET birth_academic_year = 2015 WHERE id = ANY(:h)"), {"h": holders})
        for table, stale in (("patient_consent_statuses", 3), ("patient_vaccination_statuses", 2)):
            conn.execute(sa.text(f"UPDATE {table} SET status = :s WHERE patient_id = ANY(:h)"),
                         {"s": stale, "h": holders})
        conn.execute(sa.text("UPDATE patient_session_session_statuses SET status = 7 "
                             "WHERE patient_session_id = ANY(:ps)"), {"ps": [sessions[p] for p in holders]})
    for batch_size in (2, 3):
        results = refresh_everything(engine, batch_size=batch_size, workers=workers)
        with engine.connect() as conn:
            w.conn = conn
            for p in holders:
                assert w.patient_status("patient_consent_statuses", p, "hpv") == C.NO_RESPONSE, (batch_size, p)
                assert w.patient_status("patient_vaccination_statuses", p, "hpv") == 0, (batch_size, p)
                assert w.session_status(sessions[p], "hpv") == S.NONE_YET, (batch_size, p)
        if batch_size == 3:
            assert sum(r.written for r in results.values()) == 0  # batch size 2 repaired every row


def test_today_is_the_injected_london_date(engine):
    """The attendance of 23 Nov counts on 23 Nov and not on the next London day."""
    with engine.begin() as conn:
        w = World(conn)
        p = w.patient()
        ps = w.patient_session(p)
        w.attendance(ps, False)
    refresh_everything(engine, today=TODAY)
    with engine.connect() as conn:
        w.conn = conn
        assert w.session_status(ps, "flu") == S.ABSENT_FROM_SESSION
    refresh_everything(engine, today=TODAY + timedelta(days=1))
    with engine.connect() as conn:
        w.conn = conn
        assert w.session_status(ps, "flu") == S.NONE_YET
        assert w.registration_status(ps) == R.UNKNOWN
