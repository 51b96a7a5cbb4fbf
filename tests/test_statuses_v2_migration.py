"""Migration 0006 (rules v2): the new columns and codes, the patient-created request, and one full
recompute of an existing cache with no manual step; its downgrade."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from assets.statuses import record_rules_version, request_full_refresh_if_rules_changed
from orchestration.migrate import downgrade, upgrade
from sensors.statuses import merged_request_config, pending_requests
from test_statuses_helpers import TODAY, World, sensor_context
from test_statuses_helpers import instance  # noqa: F401 - a fixture, used by name


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
            # No rules version is recorded beside this cache: the code's (2) differs, so the request
            # sensor's check queues one refresh of everything (once), which it runs as a full run.
            assert conn.execute(sa.text("SELECT count(*) FROM status_rules")).scalar_one() == 0
            assert _pending(conn) == []
        with engine.connect() as conn:
            assert request_full_refresh_if_rules_changed(conn) is True
            assert request_full_refresh_if_rules_changed(conn) is False  # already pending
            assert _pending(conn) == [(2, None, "status rules v2")]
            assert merged_request_config(pending_requests(conn))["ops"]["status_tables"]["config"]["scope"] == "all"
            conn.execute(sa.text("UPDATE status_refresh_requests SET processed_at = now()"))
            record_rules_version(conn)  # as the full run does in its last transaction
            conn.commit()
            assert request_full_refresh_if_rules_changed(conn) is False and _pending(conn) == []
        with engine.begin() as conn:
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
    """A fresh database has nothing to recompute (its first full refreshes come from programme_added): it
    is recorded at the current rules version."""
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM status_rules")).scalars().all() == [2]
        assert request_full_refresh_if_rules_changed(conn) is False
        assert _pending(conn) == []


def test_a_rules_change_requests_one_full_run_that_records_the_version(engine, database_url, instance, resources):
    """Rules of another version cached (here: 1): the request sensor queues and runs one full refresh of every
    table and programme, whose last transaction records the code's version; the next tick asks for nothing."""
    from orchestration.definitions import defs
    from sensors.statuses import status_refresh_requests_sensor

    with engine.begin() as conn:
        w = World(conn)
        w.patient_session(w.patient())
        conn.execute(sa.text("UPDATE status_rules SET version = 1"))
        conn.execute(sa.text("DELETE FROM status_refresh_requests"))
    result = status_refresh_requests_sensor(sensor_context(database_url, instance))
    [request] = result.run_requests
    config = request.run_config["ops"]["status_tables"]["config"]
    assert config["scope"] == "all" and request.asset_selection is None  # every table, with the checks
    assert defs.resolve_job_def("status_refresh").execute_in_process(
        instance=instance, resources=resources, tags=request.tags,
        run_config={"ops": {"status_tables": {"config": {**config, "today": TODAY.isoformat()}}}}).success
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM status_rules")).scalar_one() == 2
        assert _pending(conn) == []
        assert conn.execute(sa.text("SELECT count(*) FROM patient_consent_statuses")).scalar_one() == 4
    assert status_refresh_requests_sensor(sensor_context(database_url, instance)).skip_message \
        == "no pending refresh requests"
