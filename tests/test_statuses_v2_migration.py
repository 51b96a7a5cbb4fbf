"""Migration 0006 (rules v2): the new columns and codes, the patient-created request, and one full
recompute of an existing cache with no manual step; its downgrade."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from orchestration.migrate import downgrade, upgrade
from sensors.statuses import merged_request_config, pending_requests
from test_statuses_helpers import World


def _columns(conn, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns(table)}


def _pending(conn) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.text(
        "SELECT scope, patient_id, reason FROM status_refresh_requests WHERE processed_at IS NULL ORDER BY id"))]


def test_0006_upgrades_an_existing_cache_to_one_full_recompute_and_downgrades(empty_database_url):
    engine = sa.create_engine(empty_database_url, connect_args={"prepare_threshold": None})
    try:
        upgrade(empty_database_url, "0005")
        with engine.begin() as conn:
            w = World(conn)
            p = w.patient()
            # A v1 cache, as a deployment of 0005 holds it.
            conn.execute(sa.text("INSERT INTO patient_consent_statuses (patient_id, programme_id, status) "
                                 "VALUES (:p, :pr, 1)"), {"p": p, "pr": w.programmes["hpv"]})
            conn.execute(sa.text("UPDATE status_refresh_requests SET processed_at = now()"))
            assert "academic_year" not in _columns(conn, "consents")
        upgrade(empty_database_url, "0006")
        with engine.begin() as conn:
            assert {"academic_year", "delay_vaccination_until"} <= _columns(conn, "triages")
            assert "academic_year" in _columns(conn, "consents")
            # The upgrade asked for one refresh of everything, which the request sensor runs as a full run.
            assert _pending(conn) == [(2, None, "status rules v2")]
            assert merged_request_config(pending_requests(conn))["ops"]["status_tables"]["config"]["scope"] == "all"
            conn.execute(sa.text("UPDATE status_refresh_requests SET processed_at = now()"))
            # D6: a patient created is a patient-scoped request.
            w.conn = conn
            new = w.patient(given="New")
            assert _pending(conn) == [(0, new, "patients insert")]
            # The v2 codes are accepted.
            w.triage(p, "hpv", "invite_to_clinic", academic_year=2026, delay_until=date(2026, 12, 1))
            conn.execute(sa.text("UPDATE patient_consent_statuses SET status = 4"))
            conn.execute(sa.text("INSERT INTO patient_triage_statuses (patient_id, programme_id, status) "
                                 "VALUES (:p, :pr, 5)"), {"p": p, "pr": w.programmes["hpv"]})
        downgrade(empty_database_url, "0005")
        with engine.begin() as conn:
            assert "academic_year" not in _columns(conn, "consents")
            assert not {"academic_year", "delay_vaccination_until"} & _columns(conn, "triages")
            # v2-only output codes go back to 0; the invite_to_clinic input becomes delay_vaccination.
            assert conn.execute(sa.text("SELECT status FROM patient_consent_statuses")).scalars().all() == [0]
            assert conn.execute(sa.text("SELECT status FROM patient_triage_statuses")).scalars().all() == [0]
            assert conn.execute(sa.text("SELECT status FROM triages")).scalars().all() == [3]
            conn.execute(sa.text("UPDATE status_refresh_requests SET processed_at = now()"))
            w.conn = conn
            w.patient(given="After")  # no trigger on patients INSERT any more
            assert _pending(conn) == []
            assert conn.execute(sa.text(
                "SELECT count(*) FROM pg_proc WHERE proname = 'pso_request_new_patient_refresh'")).scalar_one() == 0
    finally:
        engine.dispose()


def test_0006_on_an_empty_cache_requests_nothing(engine):
    """A fresh database has nothing to recompute: its first full refreshes come from programme_added."""
    with engine.connect() as conn:
        assert _pending(conn) == []
