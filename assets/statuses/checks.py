"""Checks of the status tables (plain functions): drift (rows recomputed through the same SQL as the
refresh), coverage (every expected row exists), bad input (rows the rules cannot read).

Drift and coverage judge a *scope*: by default the whole cache (every programme; drift on a random
sample of patients, coverage over every patient), or what one run covered — its programmes, and for a
run over some patients or sessions exactly those patients (and those sessions' patient_sessions), every
one of them recomputed. Each row found carries its keys, its programme type and, for drift, the cached
and recomputed codes (ids and codes only)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Iterable, Iterator

import sqlalchemy as sa

from assets.statuses import sql as q
from assets.statuses.refresh import StatusScope, base_params, programme_ids_by_type, scope_passes, tables_named
from orchestration.patterns import derived_table as dt

DEFAULT_DRIFT_SAMPLE = 500


def drift_sample_ids(conn: sa.Connection, sample_size: int) -> list[int]:
    """A random sample of patients that have a cached row (TABLESAMPLE-free: the sample is small)."""
    return conn.execute(
        sa.text("SELECT id FROM patients ORDER BY random() LIMIT :n"), {"n": sample_size}
    ).scalars().all()


def judged_programmes(conn: sa.Connection, programmes: Iterable[str] | None) -> dict[str, int]:
    """{type: id} of the programmes judged: the given ones (partition keys), or every programme."""
    ids = programme_ids_by_type(conn)
    if programmes is None:
        return ids
    unknown = sorted(set(programmes) - set(ids))
    if unknown:
        raise ValueError(f"programmes without a programmes row: {unknown}")
    return {p: ids[p] for p in programmes}


def _scoped(scope: StatusScope | None) -> bool:
    return scope is not None and not scope.all


def _scope_patients(conn: sa.Connection, scope: StatusScope) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """(patient ids, extra params) of each pass of a scoped refresh: the patients given, and the
    patients of the sessions given (with `session_ids`, which limits session rows to those sessions)."""
    for batches, extra in scope_passes(scope, {}):
        ids = conn.execute(sa.text(f"SELECT id FROM ({batches.sql}) AS b"),
                           {**batches.params, "after": None, "limit": None}).scalars().all()
        conn.commit()
        for start in range(0, len(ids), dt.DEFAULT_BATCH_SIZE):
            yield list(ids[start:start + dt.DEFAULT_BATCH_SIZE]), extra


class _Found:
    """Rows found per table, each once (two passes of a scope may reach the same row), with its programme."""

    def __init__(self, tables: list[dt.DerivedTable]):
        self.tables = {t.name: t for t in tables}
        self.rows: dict[str, dict[tuple, dict]] = {t.name: {} for t in tables}

    def add(self, programme: str, found: dict[str, list[dict]]) -> None:
        for name, rows in found.items():
            keys = self.tables[name].key_columns
            for row in rows:
                self.rows[name].setdefault((programme, *(row[k] for k in keys)), {**row, "programme": programme})

    def result(self, limit: int | None = None) -> dict[str, list[dict]]:
        return {name: list(rows.values())[:limit] for name, rows in self.rows.items()}


def status_drift(conn: sa.Connection, today: date, sample_size: int = DEFAULT_DRIFT_SAMPLE,
                 table_names: Iterable[str] | None = None, programmes: Iterable[str] | None = None,
                 scope: StatusScope | None = None) -> dict[str, list[dict]]:
    """Per table: rows whose cached status differs from a recomputation, in `programmes` (default every
    programme): of a random sample of `sample_size` patients, or for a scoped `scope` (some patients or
    sessions) of every patient of the scope."""
    tables = tables_named(table_names)
    found = _Found(tables)
    judged = judged_programmes(conn, programmes)
    if _scoped(scope):
        passes = list(_scope_patients(conn, scope))
    else:
        passes = [(sorted(drift_sample_ids(conn, sample_size)), {})]
        conn.commit()
    for programme, programme_id in judged.items():
        for patient_ids, extra in passes:
            found.add(programme, dt.drift(conn, tables, patient_ids, {**base_params(programme_id, today), **extra}))
    return found.result()


def status_coverage(conn: sa.Connection, today: date, table_names: Iterable[str] | None = None,
                    limit: int = 100, programmes: Iterable[str] | None = None,
                    scope: StatusScope | None = None) -> dict[str, list[dict]]:
    """Per table: expected rows (§1.6) that do not exist, up to `limit` each, in `programmes` (default
    every programme), over every patient, or for a scoped `scope` over its patients (and sessions)."""
    tables = tables_named(table_names)
    found = _Found(tables)
    for programme, programme_id in judged_programmes(conn, programmes).items():
        passes = scope_passes(scope, {}) if _scoped(scope) else [(dt.keyset_batches(q.ALL_PATIENTS_SQL, {}), {})]
        for batches, extra in passes:
            found.add(programme, dt.coverage(conn, tables, batches, {**base_params(programme_id, today), **extra},
                                             limit))
    return found.result(limit)


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


