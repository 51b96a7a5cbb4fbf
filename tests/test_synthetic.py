"""The synthetic generator: deterministic, and every family gets realistic volumes."""

from datetime import datetime, timezone

import psycopg
import pytest

from orchestration import schema
from orchestration.synthetic import libpq_url, parse_scale, seed_all

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)

# Tables every family's generator must fill, at any scale.
MUST_HAVE_ROWS = [
    "programmes", "patients", "parents", "sessions", "session_programmes", "session_dates", "patient_sessions",
    "session_attendances", "consents", "triages", "vaccination_records",
    "patientrecord", "patient", "treatment", "dialysissession", "facility",
    "services", "service_data_retention", "notifications", "inbound_sms", "notification_history",
    "test_order", "test_event",
    "replica_state", "sync_runs",
]


def _fingerprints(database_url: str) -> dict[str, tuple[int, str]]:
    """(row count, md5 of all rows in a stable order) per public table."""
    result = {}
    with psycopg.connect(libpq_url(database_url)) as conn:
        for table in schema.metadata.sorted_tables:
            row = conn.execute(
                f'SELECT count(*), md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) FROM "{table.name}" t'
            ).fetchone()
            result[table.name] = (row[0], row[1])
    return result


def test_scales_parse():
    assert parse_scale("demo") == 1.0
    assert parse_scale("bench") >= 20
    assert parse_scale("2.5") == 2.5
    with pytest.raises(ValueError, match="scale"):
        parse_scale("huge")
    with pytest.raises(ValueError, match="positive"):
        parse_scale("-1")


def test_same_seed_gives_the_same_rows_and_every_family_has_data(database_url, s3, settings, pg_admin_url,
                                                                  template_database):
    from tests.conftest import _drop_database, _fresh_database, _sqlalchemy_url

    stats = seed_all(database_url, scale="tiny", seed=7, s3=s3, settings=settings, now=NOW, echo=lambda *_: None)
    assert stats.total > 0
    first = _fingerprints(database_url)
    empty = [name for name in MUST_HAVE_ROWS if first[name][0] == 0]
    assert not empty, f"generator left these tables empty: {empty}"

    other = _fresh_database(pg_admin_url, template_database)
    try:
        other_url = _sqlalchemy_url(pg_admin_url, other)
        seed_all(other_url, scale="tiny", seed=7, s3=s3, settings=settings, now=NOW, echo=lambda *_: None)
        second = _fingerprints(other_url)
    finally:
        _drop_database(pg_admin_url, other)
    differing = sorted(name for name in first if first[name] != second[name])
    assert not differing, f"same seed, different rows in: {differing}"


def test_a_different_seed_gives_different_rows(database_url, settings):
    seed_all(database_url, scale="tiny", seed=1, s3=None, settings=settings, now=NOW, echo=lambda *_: None)
    one = _fingerprints(database_url)
    with psycopg.connect(libpq_url(database_url)) as conn:
        names = ", ".join(f'"{t.name}"' for t in schema.metadata.sorted_tables
                          if t.name not in {"supported_disease", "stats_settings", "alembic_version"})
        conn.execute(f"TRUNCATE {names} CASCADE")
    seed_all(database_url, scale="tiny", seed=2, s3=None, settings=settings, now=NOW, echo=lambda *_: None)
    two = _fingerprints(database_url)
    assert one["patients"] != two["patients"]
    assert one["notifications"] != two["notifications"]
