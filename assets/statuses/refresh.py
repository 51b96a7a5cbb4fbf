"""Refresh of the status tables: scope → batches of patients → the derived-table mechanism
(orchestration/patterns/derived_table.py), and the refresh requests a run settles. Plain functions;
each takes a SQLAlchemy Connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Callable, Iterable

import sqlalchemy as sa

from assets.statuses import sql as q
from orchestration.clock import academic_year
from orchestration.patterns import derived_table as dt

# pg_advisory_xact_lock key shared by every status refresh batch (any scope, any programme).
STATUS_REFRESH_LOCK_KEY = 0x5053_0001
STATUS_TABLE_NAMES = tuple(t.name for t in q.STATUS_TABLES)


@dataclass(frozen=True)
class StatusScope:
    """What one refresh covers: everything, and/or some patients, and/or some sessions."""

    all: bool = False
    patient_ids: tuple[int, ...] = ()
    session_ids: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.all:
            return "all"
        parts = []
        if self.patient_ids:
            parts.append(f"{len(self.patient_ids)} patient(s)")
        if self.session_ids:
            parts.append(f"session(s) {', '.join(map(str, self.session_ids[:20]))}")
        return " + ".join(parts) or "empty"


def base_params(programme_id: int, today: date) -> dict[str, Any]:
    return {"programme_id": programme_id, "today": today, "academic_year": academic_year(today),
            "session_ids": None}


def scope_passes(scope: StatusScope, params: dict[str, Any],
                 batch_size: int = dt.DEFAULT_BATCH_SIZE) -> list[tuple[dt.BatchSource, dict]]:
    """(batch source, extra params) for each pass a scope needs; batches are of patients."""
    if scope.all:
        born_from, born_to = q.eligible_birth_years(params["programme_type"], params["academic_year"])
        programme = {"programme_id": params["programme_id"], "born_from": born_from, "born_to": born_to,
                     "academic_year": params["academic_year"]}
        return [(dt.keyset_batches(q.PROGRAMME_PATIENTS_SQL, programme, batch_size,
                                   count_sql=q.PROGRAMME_PATIENTS_ESTIMATE_SQL), {})]
    passes = []
    if scope.patient_ids:
        passes.append((dt.list_batches(scope.patient_ids, batch_size), {}))
    if scope.session_ids:
        sessions = {"session_ids": sorted(set(scope.session_ids))}
        passes.append((dt.keyset_batches(q.SESSION_PATIENTS_SQL, sessions, batch_size), sessions))
    return passes


def tables_named(names: Iterable[str] | None) -> list[dt.DerivedTable]:
    if names is None:
        return list(q.STATUS_TABLES)
    wanted = set(names)
    unknown = wanted - set(q.STATUS_TABLES_BY_NAME)
    if unknown:
        raise ValueError(f"unknown status tables: {sorted(unknown)}")
    return [t for t in q.STATUS_TABLES if t.name in wanted]


def refresh_statuses(
    conn: sa.Connection,
    programme_id: int,
    scope: StatusScope,
    today: date,
    table_names: Iterable[str] | None = None,
    finalize: Callable[[sa.Connection], None] | None = None,
    batch_size: int = dt.DEFAULT_BATCH_SIZE,
    workers: int = 1,
    priority: bool = False,
) -> dt.RefreshResult:
    """Seed, recompute and write back the status tables of one programme over `scope`, with up to
    `workers` batches at once; `priority` (a few patients that just changed) waits only for the batches
    of another refresh in flight, not for the whole refresh (see derived_table, "Priority refreshes")."""
    tables = tables_named(table_names)
    result = dt.RefreshResult(tables={t.name: dt.RefreshCounts() for t in tables})
    programme_type = conn.execute(sa.text("SELECT type FROM programmes WHERE id = :id"),
                                  {"id": programme_id}).scalar_one()
    conn.commit()  # each batch below is its own transaction
    passes = scope_passes(scope, {**base_params(programme_id, today), "programme_type": programme_type}, batch_size)
    if not passes:
        if finalize is not None:
            with conn.begin():
                finalize(conn)
        return result
    for index, (batches, extra) in enumerate(passes):
        last = index == len(passes) - 1
        params = {**base_params(programme_id, today), **extra}
        result.merge(dt.refresh(conn, tables, batches, params, STATUS_REFRESH_LOCK_KEY,
                                finalize=finalize if last else None, workers=workers, priority=priority))
    return result


def programme_ids_by_type(conn: sa.Connection) -> dict[str, int]:
    return dict(conn.execute(sa.text("SELECT type, id FROM programmes")).all())


def pending_request_ids(conn: sa.Connection) -> list[int]:
    """The requests not yet processed, as committed now. A request commits with the change that raised
    it, so a full run that starts after reading these sees every change they ask for; one committed
    later (even by a transaction that began earlier, so with an older `requested_at`) may hold a change
    the run's batches read too soon, and is left for the next run."""
    return conn.execute(sa.text(
        "SELECT id FROM status_refresh_requests WHERE processed_at IS NULL ORDER BY id")).scalars().all()


def mark_requests_processed(conn: sa.Connection, request_ids: Iterable[int]) -> int:
    """Mark the given requests processed (those not already marked); returns how many."""
    return conn.execute(
        sa.text("UPDATE status_refresh_requests SET processed_at = now() "
                "WHERE processed_at IS NULL AND id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": sorted(set(request_ids))},
    ).rowcount


def rules_request_reason(version: int = q.RULES_VERSION) -> str:
    return f"status rules v{version}"


def request_full_refresh_if_rules_changed(conn: sa.Connection) -> bool:
    """When the caches were last fully computed under other rules than the code's (or never, on a
    deployment upgraded from before the version was recorded), queue one `all` refresh request, unless
    one is pending already. Returns whether it queued one. Commits."""
    queued = conn.execute(sa.text("""
        INSERT INTO status_refresh_requests (scope, reason)
        SELECT 2, CAST(:reason AS text)
        WHERE (SELECT version FROM status_rules WHERE id = 1) IS DISTINCT FROM CAST(:version AS smallint)
          AND NOT EXISTS (SELECT 1 FROM status_refresh_requests
                          WHERE processed_at IS NULL AND scope = 2 AND reason = CAST(:reason AS text))"""),
        {"version": q.RULES_VERSION, "reason": rules_request_reason()}).rowcount
    conn.commit()
    return bool(queued)


def record_rules_version(conn: sa.Connection, version: int = q.RULES_VERSION) -> None:
    """Record that every status was just computed under rules `version` (a full run's last transaction)."""
    conn.execute(sa.text(
        "INSERT INTO status_rules (id, version) VALUES (1, :v) "
        "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, recorded_at = now()"), {"v": version})
