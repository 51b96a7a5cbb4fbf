"""Patient events refreshed within seconds: the refresh-request sensor's own work.

A consent, triage, vaccination record or attendance raises a refresh request (a database trigger,
§1.8). Launching a Dagster run for a few patients costs seconds of process start-up for milliseconds
of work, so the sensor refreshes small batches of patient and session requests itself, in the code
server's long-lived process, and reports each programme partition it refreshed to Dagster as a
materialization of the five status tables, with the results of its checks (drift and coverage of
exactly the patients and sessions it refreshed). Whole-programme requests, and more requests than
`INLINE_MAX_REQUESTS`, still go to a run.

The refresh is a *priority* one (orchestration/patterns/derived_table.py): it waits only for the
batches of another refresh in flight, never for a whole programme's refresh, and the requests it
handled are marked processed in the transaction of its last batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Iterable

import sqlalchemy as sa
from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
)

from assets.statuses.refresh import (
    STATUS_TABLE_NAMES,
    StatusScope,
    mark_requests_processed,
    programme_ids_by_type,
    refresh_statuses,
)
from assets.statuses.wiring import (
    COVERAGE_CHECK,
    DRIFT_CHECK,
    SOURCE_TABLES,
    STATUS_ASSET_KEYS,
    judgement_results,
    run_check_keys,
)
from orchestration.metadata import source_observation, table_result
from orchestration.schema import RefreshScope, metadata

# A tick refreshes at most this many requests itself (a few hundred ms of work; the sensor's limit is 60 s).
INLINE_MAX_REQUESTS = 2_000
TRIGGER = "status_refresh_requests"


@dataclass
class EventRefresh:
    """What one inline refresh did: per programme, per table, rows seeded (inserted) and changed (updated)."""

    request_ids: list[int]
    patient_ids: list[int]
    session_ids: list[int]
    counts: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    seconds: float = 0.0


def split_requests(requests: list[dict], limit: int = INLINE_MAX_REQUESTS) -> tuple[list[dict], list[dict]]:
    """(requests the sensor refreshes itself, requests left for a run): patient and session requests,
    oldest first, up to `limit`; whole-programme requests always go to a run."""
    scoped = [r for r in requests if r["scope"] != RefreshScope.ALL][:limit]
    taken = {r["id"] for r in scoped}
    return scoped, [r for r in requests if r["id"] not in taken]


def refresh_requested(conn: sa.Connection, requests: list[dict], programmes: Iterable[str],
                      today: date) -> EventRefresh:
    """Refresh the patients and sessions of `requests` in every programme of `programmes`, in priority;
    the last programme's last batch marks the requests processed (at-least-once, as a run does)."""
    done = EventRefresh(request_ids=[r["id"] for r in requests],
                        patient_ids=sorted({r["patient_id"] for r in requests if r["scope"] == RefreshScope.PATIENT}),
                        session_ids=sorted({r["session_id"] for r in requests if r["scope"] == RefreshScope.SESSION}))
    ids = programme_ids_by_type(conn)
    conn.commit()
    wanted = [p for p in programmes if p in ids]
    scope = StatusScope(patient_ids=tuple(done.patient_ids), session_ids=tuple(done.session_ids))
    started = time.perf_counter()
    for index, programme in enumerate(wanted):
        last = index == len(wanted) - 1
        result = refresh_statuses(conn, ids[programme], scope, today, priority=True,
                                  finalize=(lambda c: mark_requests_processed(c, done.request_ids)) if last else None)
        done.counts[programme] = {name: (c.seeded, c.changed) for name, c in result.tables.items()}
    if not wanted:  # nothing to refresh them in: still settle them, so they are not read again
        with conn.begin():
            mark_requests_processed(conn, done.request_ids)
    done.seconds = time.perf_counter() - started
    return done


def materializations(done: EventRefresh) -> list[AssetMaterialization]:
    """One materialization per status table and programme partition refreshed (ids and counts only)."""
    events = []
    for programme, tables in done.counts.items():
        for name in STATUS_TABLE_NAMES:
            seeded, changed = tables.get(name, (0, 0))
            events.append(AssetMaterialization(
                asset_key=AssetKey(name), partition=programme, tags={"pso/trigger": TRIGGER},
                description="Refreshed by the status_refresh_requests sensor (patient events)",
                metadata=table_result(metadata.tables[name], rows_seeded=seeded, rows_changed=changed,
                                      patients=len(done.patient_ids), sessions=len(done.session_ids),
                                      requests=len(done.request_ids), seconds=round(done.seconds, 3))))
    return events


def check_evaluations(conn: sa.Connection, done: EventRefresh, today: date) -> list[AssetCheckEvaluation]:
    """The refresh's own checks, as a run's would be (drift and coverage of exactly its patients and
    sessions, in the programmes it refreshed), reported with its materializations."""
    scope = StatusScope(patient_ids=tuple(done.patient_ids), session_ids=tuple(done.session_ids))
    results = judgement_results(conn, run_check_keys(STATUS_ASSET_KEYS), today, list(done.counts), scope,
                                (DRIFT_CHECK, COVERAGE_CHECK))
    return [AssetCheckEvaluation(asset_key=r.asset_key, check_name=r.check_name, passed=r.passed,
                                 metadata=r.metadata, severity=r.severity) for r in results]


def source_observations(requests: list[dict]) -> list[AssetObservation]:
    """The source tables the requests came from (their `reason`, e.g. 'consents insert'), each observed
    with the newest request id as its data version, so lineage shows what moved."""
    newest: dict[str, int] = {}
    for request in requests:
        table = (request.get("reason") or "").split(" ", 1)[0]
        if table in SOURCE_TABLES:
            newest[table] = max(newest.get(table, 0), request["id"])
    return [source_observation(AssetKey(table), version) for table, version in sorted(newest.items())]
