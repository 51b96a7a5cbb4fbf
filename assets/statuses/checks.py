"""Checks of the status tables (plain functions): drift (a random sample recomputed through the same
SQL as the refresh), coverage (every expected row exists), bad input (rows the rules cannot read)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Iterable

import sqlalchemy as sa

from assets.statuses import sql as q
from assets.statuses.refresh import base_params, programme_ids_by_type, tables_named
from orchestration.patterns import derived_table as dt

DEFAULT_DRIFT_SAMPLE = 500


def drift_sample_ids(conn: sa.Connection, sample_size: int) -> list[int]:
    """A random sample of patients that have a cached row (TABLESAMPLE-free: the sample is small)."""
    return conn.execute(
        sa.text("SELECT id FROM patients ORDER BY random() LIMIT :n"), {"n": sample_size}
    ).scalars().all()


def status_drift(conn: sa.Connection, today: date, sample_size: int = DEFAULT_DRIFT_SAMPLE,
                 table_names: Iterable[str] | None = None) -> dict[str, list[dict]]:
    """Per table: rows of a random patient sample whose cached status differs from a recomputation."""
    sample = sorted(drift_sample_ids(conn, sample_size))
    tables = tables_named(table_names)
    found: dict[str, list[dict]] = {t.name: [] for t in tables}
    for programme_id in programme_ids_by_type(conn).values():
        for name, rows in dt.drift(conn, tables, sample, base_params(programme_id, today)).items():
            found[name].extend(rows)
    return found


def status_coverage(conn: sa.Connection, today: date, table_names: Iterable[str] | None = None,
                    limit: int = 100) -> dict[str, list[dict]]:
    """Per table: expected rows (§1.6) that do not exist, up to `limit` each."""
    tables = tables_named(table_names)
    found: dict[str, list[dict]] = {t.name: [] for t in tables}
    for programme_id in programme_ids_by_type(conn).values():
        batches = dt.keyset_batches(q.ALL_PATIENTS_SQL, {})
        for name, rows in dt.coverage(conn, tables, batches, base_params(programme_id, today), limit).items():
            found[name].extend(rows)
    return {name: rows[:limit] for name, rows in found.items()}


# Bad input the schema cannot forbid on its own (CHECK and NOT NULL constraints stop unknown and missing
# codes; these queries still name them if a constraint was dropped or a loader bypassed it — hence the
# IS NULL tests, which NOT IN alone would miss).
BAD_INPUT_QUERIES = {
    "consents with an unknown or missing response or route": """
        SELECT id FROM consents
        WHERE response IS NULL OR response NOT IN (0, 1, 2) OR route IS NULL OR route NOT IN (0, 1, 2, 3, 4)
        ORDER BY id LIMIT 100""",
    "triages with an unknown or missing status": """
        SELECT id FROM triages WHERE status IS NULL OR status NOT IN (0, 1, 2, 3, 4) ORDER BY id LIMIT 100""",
    "vaccination records with an unknown or missing outcome": """
        SELECT id FROM vaccination_records WHERE outcome IS NULL OR outcome NOT IN (0, 1, 2, 3, 4, 5, 6)
        ORDER BY id LIMIT 100""",
    "consents whose health_answers is not a list": """
        SELECT id FROM consents WHERE jsonb_typeof(health_answers) <> 'array' ORDER BY id LIMIT 100""",
    "vaccination records performed in the future": """
        SELECT id FROM vaccination_records
        WHERE discarded_at IS NULL AND performed_at > CAST(:now AS timestamptz) ORDER BY id LIMIT 100""",
    "consents submitted or created in the future": """
        SELECT id FROM consents
        WHERE invalidated_at IS NULL AND (submitted_at > CAST(:now AS timestamptz) OR created_at > CAST(:now AS timestamptz))
        ORDER BY id LIMIT 100""",
    # A future triage would stay the latest one, whatever is recorded after it.
    "triages created in the future": """
        SELECT id FROM triages
        WHERE invalidated_at IS NULL AND created_at > CAST(:now AS timestamptz) ORDER BY id LIMIT 100""",
    # v2 D2: only a delay_vaccination triage's date is read; a date on another status is ignored.
    "triages with a delay_vaccination_until but another status": """
        SELECT id FROM triages WHERE delay_vaccination_until IS NOT NULL AND status <> 3 ORDER BY id LIMIT 100""",
    "attendances on a date of another session": """
        SELECT a.id FROM session_attendances AS a
        JOIN session_dates AS sd ON sd.id = a.session_date_id
        JOIN patient_sessions AS ps ON ps.id = a.patient_session_id
        WHERE sd.session_id <> ps.session_id ORDER BY a.id LIMIT 100""",
    "vaccination records whose session lacks the programme": """
        SELECT vr.id FROM vaccination_records AS vr
        WHERE vr.session_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM session_programmes sp WHERE sp.session_id = vr.session_id AND sp.programme_id = vr.programme_id)
        ORDER BY vr.id LIMIT 100""",
    "consents whose parent does not exist": """
        SELECT c.id FROM consents AS c
        WHERE c.parent_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM parents p WHERE p.id = c.parent_id)
        ORDER BY c.id LIMIT 100""",
    "patient sessions without a session programme": """
        SELECT ps.id FROM patient_sessions AS ps
        WHERE NOT EXISTS (SELECT 1 FROM session_programmes sp WHERE sp.session_id = ps.session_id)
        ORDER BY ps.id LIMIT 100""",
}


def bad_status_inputs(conn: sa.Connection, now: datetime) -> dict[str, list[int]]:
    """Each kind of bad input row found, by id (ids only: no personal data)."""
    found = {}
    # A small grace period: clocks of the writing app and ours are never exactly equal.
    limit = now + timedelta(minutes=5)
    for label, sql in BAD_INPUT_QUERIES.items():
        ids = conn.execute(sa.text(sql), {"now": limit}).scalars().all()
        if ids:
            found[label] = list(ids)
    return found


