"""A tiny Mavis world for status tests: insert inputs with short calls, read cached statuses back."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, build_sensor_context

from resources.postgres import PostgresResource

TODAY = date(2026, 11, 23)  # academic year 2026
YEAR_10 = 2011  # birth_academic_year of a year-10 child today (eligible for every programme)
DOB_YEAR_10 = date(2011, 10, 1)
BASE = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

CONSENT_RESPONSE = {"given": 0, "refused": 1, "not_provided": 2}
ROUTE = {"website": 0, "phone": 1, "paper": 2, "in_person": 3, "self_consent": 4}
TRIAGE = {"ready_to_vaccinate": 0, "do_not_vaccinate": 1, "needs_follow_up": 2, "delay_vaccination": 3,
          "invite_to_clinic": 4}
OUTCOME = {"administered": 0, "refused": 1, "not_well": 2, "contraindications": 3, "already_had": 4,
           "absent_from_school": 5, "absent_from_session": 6}


PROGRAMMES = ["flu", "hpv", "menacwy", "td_ipv"]


@pytest.fixture
def instance():
    """An ephemeral Dagster instance with every programme partition (import it into a test module)."""
    inst = DagsterInstance.ephemeral()
    inst.add_dynamic_partitions("programmes", PROGRAMMES)
    yield inst


def module_database_engine(pg_admin_url: str, template_database: str, name: str) -> sa.Engine:
    """An engine on a database of its own, cloned from the migrated template (for module-scoped worlds
    that build every case once)."""
    import psycopg

    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    return sa.create_engine(url, connect_args={"prepare_threshold": None})


def drop_module_database(pg_admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sensor_context(database_url: str, instance, cursor: str | None = None):
    return build_sensor_context(instance=instance, cursor=cursor,
                                resources={"postgres": PostgresResource(database_url=database_url)})


def at(days: float) -> datetime:
    return BASE + timedelta(days=days)


def moment(when: float | datetime) -> datetime:
    """A datetime as is, or a number of days after BASE."""
    return when if isinstance(when, datetime) else at(when)


class World:
    def __init__(self, conn: sa.Connection):
        self.conn = conn
        self.programmes = {}
        for type_ in ("flu", "hpv", "menacwy", "td_ipv"):
            self.programmes[type_] = self._id("INSERT INTO programmes (type) VALUES (:t) RETURNING id", t=type_)
        self.session_dates: dict[tuple[int, date], int] = {}
        self.main_session = self.session(list(self.programmes), [TODAY, TODAY - timedelta(days=1)])

    def _id(self, sql: str, **params) -> int:
        return self.conn.execute(sa.text(sql), params).scalar_one()

    def session(self, programme_types: list[str], dates: list[date] = ()) -> int:
        sid = self._id("INSERT INTO sessions DEFAULT VALUES RETURNING id")
        for t in programme_types:
            self.add_programme(sid, t)
        for d in dates:
            self.session_dates[(sid, d)] = self._id(
                "INSERT INTO session_dates (session_id, value) VALUES (:s, :d) RETURNING id", s=sid, d=d)
        return sid

    def add_programme(self, session_id: int, programme_type: str) -> int:
        return self._id("INSERT INTO session_programmes (session_id, programme_id) VALUES (:s, :p) RETURNING id",
                        s=session_id, p=self.programmes[programme_type])

    def patient(self, birth_academic_year: int = YEAR_10, dob: date = DOB_YEAR_10,
                given: str = "Testy", family: str = "Fakename") -> int:
        return self._id("INSERT INTO patients (given_name, family_name, date_of_birth, birth_academic_year) "
                        "VALUES (:g, :f, :d, :b) RETURNING id", g=given, f=family, d=dob, b=birth_academic_year)

    def patient_session(self, patient_id: int, session_id: int | None = None) -> int:
        return self._id("INSERT INTO patient_sessions (patient_id, session_id) VALUES (:p, :s) RETURNING id",
                        p=patient_id, s=session_id or self.main_session)

    def parent(self, name: str | None) -> int:
        return self._id("INSERT INTO parents (full_name) VALUES (:n) RETURNING id", n=name)

    def consent(self, patient_id: int, programme: str, response: str, route: str = "website",
                parent_id: int | None = None, submitted: float = 0, created: float | None = None,
                health_yes: str | None = None, invalidated: bool = False, withdrawn: bool = False,
                answers: list | None = None, academic_year: int | None = None) -> int:
        """`submitted`/`created`: days after BASE, or a datetime. `answers` replaces the default health
        answers; `academic_year` (rules v2) is written only when given (older schemas lack the column)."""
        if answers is None:
            answers = [{"question": "Q1", "response": "no"}]
            if health_yes is not None:
                answers.append({"question": "Q2", "response": health_yes})
        submitted_at = moment(submitted)
        year_column, year_value = (", academic_year", ", :y") if academic_year is not None else ("", "")
        return self._id(
            "INSERT INTO consents (patient_id, programme_id, parent_id, response, route, health_answers, "
            f"invalidated_at, withdrawn_at, submitted_at, created_at{year_column}) VALUES (:p, :pr, :pa, :r, :ro, "
            f"CAST(:h AS jsonb), :inv, :wd, :s, :c{year_value}) RETURNING id",
            p=patient_id, pr=self.programmes[programme], pa=parent_id, r=CONSENT_RESPONSE[response],
            ro=ROUTE[route], h=json.dumps(answers), inv=submitted_at + timedelta(days=1) if invalidated else None,
            wd=submitted_at if withdrawn else None, s=submitted_at,
            c=moment(created) if created is not None else submitted_at, y=academic_year)

    def triage(self, patient_id: int, programme: str, status: str, created: float | datetime = 0,
               invalidated: bool = False, academic_year: int | None = None,
               delay_until: date | None = None) -> int:
        """The rules-v2 columns are written only when given (older schemas lack them)."""
        created_at = moment(created)
        extra = {"academic_year": academic_year, "delay_vaccination_until": delay_until}
        extra = {k: v for k, v in extra.items() if v is not None}
        columns = "".join(f", {k}" for k in extra)
        values = "".join(f", :{k}" for k in extra)
        return self._id(
            f"INSERT INTO triages (patient_id, programme_id, status, invalidated_at, created_at{columns}) "
            f"VALUES (:p, :pr, :s, :inv, :c{values}) RETURNING id",
            p=patient_id, pr=self.programmes[programme], s=TRIAGE[status],
            inv=created_at + timedelta(days=1) if invalidated else None, c=created_at, **extra)

    def record(self, patient_id: int, programme: str, outcome: str, performed: datetime | float = 0,
               session_id: int | None | str = "main", dose_sequence: int | None = None,
               discarded: bool = False) -> int:
        performed_at = performed if isinstance(performed, datetime) else at(performed)
        sid = self.main_session if session_id == "main" else session_id
        return self._id(
            "INSERT INTO vaccination_records (patient_id, programme_id, session_id, outcome, performed_at, "
            "dose_sequence, discarded_at) VALUES (:p, :pr, :s, :o, :pa, :d, :disc) RETURNING id",
            p=patient_id, pr=self.programmes[programme], s=sid, o=OUTCOME[outcome], pa=performed_at,
            d=dose_sequence, disc=at(1) if discarded else None)

    def attendance(self, patient_session_id: int, attending: bool, day: date = TODAY,
                   session_id: int | None = None) -> int:
        sdid = self.session_dates[(session_id or self.main_session, day)]
        return self._id(
            "INSERT INTO session_attendances (patient_session_id, session_date_id, attending) "
            "VALUES (:ps, :sd, :a) RETURNING id", ps=patient_session_id, sd=sdid, a=attending)

    # -- reading the cache ------------------------------------------------------------------

    def patient_status(self, table: str, patient_id: int, programme: str) -> int | None:
        return self.conn.execute(
            sa.text(f"SELECT status FROM {table} WHERE patient_id = :p AND programme_id = :pr"),
            {"p": patient_id, "pr": self.programmes[programme]}).scalar_one_or_none()

    def session_status(self, patient_session_id: int, programme: str) -> int | None:
        return self.conn.execute(
            sa.text("SELECT status FROM patient_session_session_statuses "
                    "WHERE patient_session_id = :ps AND programme_id = :pr"),
            {"ps": patient_session_id, "pr": self.programmes[programme]}).scalar_one_or_none()

    def registration_status(self, patient_session_id: int) -> int | None:
        return self.conn.execute(
            sa.text("SELECT status FROM patient_session_registration_statuses WHERE patient_session_id = :ps"),
            {"ps": patient_session_id}).scalar_one_or_none()


def refresh_everything(engine: sa.Engine, today: date = TODAY, **kwargs):
    """Full refresh of every programme; returns {programme type: RefreshResult}."""
    from assets.statuses import StatusScope, programme_ids_by_type, refresh_statuses

    results = {}
    with engine.connect() as conn:
        ids = programme_ids_by_type(conn)
        conn.commit()
        for type_, pid in sorted(ids.items()):
            results[type_] = refresh_statuses(conn, pid, StatusScope(all=True), today, **kwargs)
    return results
