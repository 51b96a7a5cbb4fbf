"""Simple-style replica pruning rules (domain.md §3.5): the sync-group prune and the weekly maintenance
of one replica, as plain functions on a SQLAlchemy Connection.

The functions take a Connection with no transaction in progress: they own their transaction (the
prune and its `prune_runs` row commit together, in one REPEATABLE READ snapshot, so the PENDING
counts taken before and after prove no PENDING row was deleted) and run VACUUM after it.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestration.clock import as_utc, now_utc
from orchestration.schema import replica_schema_name

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=24)
MAINTENANCE_INTERVAL = timedelta(days=7)
# One daily check may be missed (e.g. a sync was running) before maintenance counts as overdue.
MAINTENANCE_OVERDUE_AFTER = MAINTENANCE_INTERVAL + timedelta(days=1)

# Replica tables that carry sync_status (PENDING rows there must never be deleted).
SYNC_STATUS_TABLES = ("patient", "appointment", "blood_pressure_measurement", "blood_sugar_measurement",
                      "medical_history", "call_result", "prescribed_drug")
# Tables whose DONE orphans are deleted (sync-group step 4, maintenance step 7). No call_result: §3.5.
ORPHAN_TABLES = ("blood_pressure_measurement", "blood_sugar_measurement", "appointment", "medical_history",
                 "prescribed_drug")
SOFT_DELETED_CHILD_TABLES = ("blood_pressure_measurement", "blood_sugar_measurement", "medical_history",
                             "call_result")
PATIENT_CHILD_TABLES = ("patient_phone_number", "business_id")  # cascade from patient


class ReplicaInputError(ValueError):
    """A replica that cannot be pruned as configured (missing schema, state row or facility)."""


@dataclass
class PruneOutcome:
    replica_id: str
    kind: str
    prune_run_id: int
    started_at: datetime
    finished_at: datetime
    skipped_reason: str | None = None
    deleted: dict[str, int] = field(default_factory=dict)  # per table, all steps
    steps: dict[str, dict[str, int]] = field(default_factory=dict)  # per step, per table
    pending_before: dict[str, int] = field(default_factory=dict)
    pending_after: dict[str, int] = field(default_factory=dict)
    pending_deleted: dict[str, int] = field(default_factory=dict)  # from DELETE … RETURNING sync_status
    vacuumed: list[str] = field(default_factory=list)
    vacuum_failed: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None

    @property
    def total_deleted(self) -> int:
        return sum(self.deleted.values())

    @property
    def pending_rows_lost(self) -> dict[str, int]:
        """Tables whose PENDING rows went down inside the prune (must be empty)."""
        lost = {t: self.pending_before.get(t, 0) - self.pending_after.get(t, 0) for t in self.pending_before}
        lost.update({t: n for t, n in self.pending_deleted.items() if n})
        return {t: n for t, n in lost.items() if n}


def _table(schema: str, table: str) -> str:
    # `schema` comes from replica_schema_name (validated); `table` from the constants above.
    return f'"{schema}"."{table}"'


def replica_schema_exists(conn: sa.Connection, replica_id: str) -> bool:
    schema = replica_schema_name(replica_id)
    return conn.execute(sa.text("SELECT to_regnamespace(:s) IS NOT NULL"), {"s": f'"{schema}"'}).scalar_one()


def _require_replica(conn: sa.Connection, replica_id: str) -> tuple[str, sa.RowMapping]:
    try:
        schema = replica_schema_name(replica_id)
    except ValueError as error:
        raise ReplicaInputError(str(error)) from None
    if not replica_schema_exists(conn, replica_id):
        raise ReplicaInputError(f"replica {replica_id!r} has no schema {schema!r} (create it with create_replica_schema)")
    state = conn.execute(
        sa.text("SELECT replica_id, current_facility_uuid, sync_group_switched_at, last_maintenance_at "
                "FROM replica_state WHERE replica_id = :id FOR UPDATE"),
        {"id": replica_id},
    ).mappings().first()
    if state is None:
        raise ReplicaInputError(f"replica {replica_id!r} has no replica_state row")
    return schema, state


def _sync_group_of(conn: sa.Connection, schema: str, replica_id: str, facility_uuid) -> str:
    row = conn.execute(sa.text(f"SELECT sync_group FROM {_table(schema, 'facility')} WHERE uuid = :f"),
                       {"f": facility_uuid}).first()
    if row is None:
        raise ReplicaInputError(
            f"replica {replica_id!r}: current_facility_uuid {facility_uuid} is not in its facility table")
    if row.sync_group is None:
        # Pruning against "no group" would delete every DONE patient: refuse.
        raise ReplicaInputError(f"replica {replica_id!r}: current facility {facility_uuid} has no sync_group")
    return row.sync_group


def _pending_counts(conn: sa.Connection, schema: str) -> dict[str, int]:
    selects = ", ".join(
        f"(SELECT count(*) FROM {_table(schema, t)} WHERE sync_status = 'PENDING') AS {t}" for t in SYNC_STATUS_TABLES)
    return dict(conn.execute(sa.text(f"SELECT {selects}")).mappings().one())


def _begin_prune(conn: sa.Connection, replica_id: str) -> None:
    """First statements of the prune transaction: one snapshot, and one prune per replica at a time."""
    conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    # try-lock, not a blocking lock: waiting would leave this transaction on a stale snapshot.
    locked = conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(hashtext('replica_prune'), hashtext(:id))"),
                          {"id": replica_id}).scalar_one()
    if not locked:
        raise RuntimeError(f"another prune of replica {replica_id!r} is running; retry later")


class _Deleter:
    """Runs DELETE … RETURNING statements and keeps per-table and per-step counts."""

    def __init__(self, conn: sa.Connection, schema: str, outcome: PruneOutcome):
        self.conn, self.schema, self.outcome = conn, schema, outcome

    def delete(self, step: str, table: str, where: str, params: dict | None = None, alias: str = "x") -> int:
        returning = f"{alias}.sync_status" if table in SYNC_STATUS_TABLES else "NULL::text"
        count, pending = self.conn.execute(
            sa.text(f"WITH gone AS (DELETE FROM {_table(self.schema, table)} AS {alias} WHERE {where} "
                    f"RETURNING {returning} AS sync_status) "
                    "SELECT count(*), count(*) FILTER (WHERE sync_status = 'PENDING') FROM gone"),
            params or {},
        ).one()
        out = self.outcome
        out.deleted[table] = out.deleted.get(table, 0) + count
        out.steps.setdefault(step, {})[table] = out.steps.get(step, {}).get(table, 0) + count
        if table in SYNC_STATUS_TABLES:
            out.pending_deleted[table] = out.pending_deleted.get(table, 0) + pending
        return count

    def t(self, table: str) -> str:
        return _table(self.schema, table)

    def patients_where(self, step: str, condition: str, params: dict | None = None) -> None:
        """Delete the patients matching `condition` (alias p) with their phone numbers and business ids.

        The children are deleted explicitly (the foreign keys would cascade anyway) so they are counted.
        """
        for child in PATIENT_CHILD_TABLES:
            self.delete(step, child, f"x.patient_uuid IN (SELECT p.uuid FROM {self.t('patient')} p WHERE {condition})",
                        params)
        self.delete(step, "patient", condition, params, alias="p")

    def orphan_addresses(self, step: str) -> None:
        self.delete(step, "patient_address",
                    f"NOT EXISTS (SELECT 1 FROM {self.t('patient')} p WHERE p.address_uuid = x.uuid)")

    def done_orphans(self, step: str) -> None:
        # DONE only: a PENDING row whose patient is missing waits for its patient (upstream bug fixed).
        for table in ORPHAN_TABLES:
            self.delete(step, table, "x.sync_status = 'DONE' AND NOT EXISTS "
                                     f"(SELECT 1 FROM {self.t('patient')} p WHERE p.uuid = x.patient_uuid)")


def _insert_prune_run(conn: sa.Connection, outcome: PruneOutcome, sync_run_id: int | None) -> int:
    return conn.execute(
        sa.text("INSERT INTO prune_runs (replica_id, kind, sync_run_id, started_at, finished_at, deleted, "
                "skipped_reason) VALUES (:replica_id, :kind, :sync_run_id, :started_at, :finished_at, "
                "CAST(:deleted AS jsonb), :skipped_reason) RETURNING id"),
        {"replica_id": outcome.replica_id, "kind": outcome.kind, "sync_run_id": sync_run_id,
         "started_at": outcome.started_at, "finished_at": outcome.finished_at,
         "deleted": None if outcome.skipped else _json(outcome.deleted), "skipped_reason": outcome.skipped_reason},
    ).scalar_one()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _record_failure(conn: sa.Connection, replica_id: str, kind: str, now: datetime, sync_run_id: int | None,
                    error: Exception) -> None:
    if conn.in_transaction():
        conn.rollback()
    with conn.begin():
        outcome = PruneOutcome(replica_id=replica_id, kind=kind, prune_run_id=0, started_at=now, finished_at=now,
                               skipped_reason=f"bad input: {error}")
        _insert_prune_run(conn, outcome, sync_run_id)


def _run_prune(conn: sa.Connection, replica_id: str, kind: str, now: datetime, sync_run_id: int | None,
               body) -> PruneOutcome:
    """One prune transaction: checks, `body(deleter, state)` (returns a skip reason or None), prune_runs row."""
    clock = time.perf_counter()
    outcome = PruneOutcome(replica_id=replica_id, kind=kind, prune_run_id=0, started_at=now, finished_at=now)
    try:
        with conn.begin():
            _begin_prune(conn, replica_id)
            schema, state = _require_replica(conn, replica_id)
            deleter = _Deleter(conn, schema, outcome)
            outcome.pending_before = _pending_counts(conn, schema)
            outcome.skipped_reason = body(deleter, state)
            outcome.pending_after = _pending_counts(conn, schema) if not outcome.skipped else dict(outcome.pending_before)
            outcome.finished_at = now + timedelta(seconds=time.perf_counter() - clock)
            outcome.prune_run_id = _insert_prune_run(conn, outcome, sync_run_id)
    except ReplicaInputError as error:
        _record_failure(conn, replica_id, kind, now, sync_run_id, error)
        raise
    return outcome


def _sync_run_skip_reason(conn: sa.Connection, replica_id: str, sync_run_id: int) -> str | None:
    run = conn.execute(sa.text("SELECT source, replica_id, finished_at, all_succeeded FROM sync_runs WHERE id = :id"),
                       {"id": sync_run_id}).first()
    if run is None:
        return f"sync run {sync_run_id} does not exist"
    if run.source != "replica" or run.replica_id != replica_id:
        return f"sync run {sync_run_id} is not a sync of replica {replica_id}"
    if run.finished_at is None or not run.all_succeeded:
        return f"sync run {sync_run_id} did not fully succeed"
    return None


def sync_group_prune(conn: sa.Connection, replica_id: str, now: datetime | None = None,
                     grace: timedelta = DEFAULT_GRACE, sync_run_id: int | None = None) -> PruneOutcome:
    """§3.5 sync-group prune of one replica, in one transaction (PurgeOnSync.kt)."""
    now = as_utc(now or now_utc())

    def body(d: _Deleter, state) -> str | None:
        if sync_run_id is not None and (reason := _sync_run_skip_reason(conn, replica_id, sync_run_id)):
            return reason
        if state["current_facility_uuid"] is None:
            return "no current facility"
        switched = state["sync_group_switched_at"]
        if switched is not None and not now - switched > grace:  # strict: exactly the grace → no prune
            return (f"sync group switched at {switched.isoformat()}, within the "
                    f"{grace.total_seconds() / 3600:g} h grace")
        group = _sync_group_of(conn, d.schema, replica_id, state["current_facility_uuid"])
        conn.execute(sa.text("CREATE TEMP TABLE pruned_patient (uuid uuid PRIMARY KEY) ON COMMIT DROP"))
        # `(keep) IS NOT TRUE`: a NULL facility id must not make the keep test NULL (→ neither kept nor pruned).
        conn.execute(sa.text(f"""
            WITH f AS (SELECT uuid FROM {d.t('facility')} WHERE sync_group = :grp)
            INSERT INTO pruned_patient
            SELECT p.uuid FROM {d.t('patient')} p
            WHERE (
                p.sync_status = 'PENDING'
                OR p.registered_facility_id IN (SELECT uuid FROM f)
                OR p.assigned_facility_id IN (SELECT uuid FROM f)
                -- kept quirk: a soft-deleted scheduled appointment still keeps its patient
                OR EXISTS (SELECT 1 FROM {d.t('appointment')} a
                           WHERE a.patient_uuid = p.uuid AND a.status = 'scheduled'
                             AND a.facility_uuid IN (SELECT uuid FROM f))
            ) IS NOT TRUE
        """), {"grp": group})
        step = "3 patients outside the sync group"
        for child in PATIENT_CHILD_TABLES:
            d.delete(step, child, "x.patient_uuid IN (SELECT uuid FROM pruned_patient)")
        d.delete(step, "patient", "p.uuid IN (SELECT uuid FROM pruned_patient)", alias="p")
        d.orphan_addresses("3 orphan addresses")
        d.done_orphans("4 DONE orphans")
        return None

    return _run_prune(conn, replica_id, "sync_group", now, sync_run_id, body)


def maintenance_due(last_maintenance_at: datetime | None, now: datetime) -> bool:
    return last_maintenance_at is None or now - last_maintenance_at > MAINTENANCE_INTERVAL


def replica_maintenance(conn: sa.Connection, replica_id: str, now: datetime | None = None,
                        force: bool = False, vacuum: bool = True) -> PruneOutcome:
    """§3.5 weekly maintenance (AppDatabase.prune), if due; then VACUUM (ANALYZE) the tables it shrank."""
    now = as_utc(now or now_utc())

    def body(d: _Deleter, state) -> str | None:
        last = state["last_maintenance_at"]
        if not force and not maintenance_due(last, now):
            return f"not due: last maintenance at {last.isoformat()}"
        running = conn.execute(
            sa.text("SELECT id FROM sync_runs WHERE source = 'replica' AND replica_id = :id AND finished_at IS NULL "
                    "ORDER BY id LIMIT 20"), {"id": replica_id}).scalars().all()
        if running:
            # Upstream bug fixed: nothing is recorded in last_maintenance_at when skipping.
            return f"sync run(s) in progress: {', '.join(map(str, running))}"
        t = d.t
        s = "1 deleted patients"
        d.patients_where(s, "p.deleted_at IS NOT NULL AND p.sync_status = 'DONE'")
        d.orphan_addresses(s)
        s = "2 deleted phone numbers and business ids"
        for child in PATIENT_CHILD_TABLES:
            d.delete(s, child, "x.deleted_at IS NOT NULL AND EXISTS "
                               f"(SELECT 1 FROM {t('patient')} p WHERE p.uuid = x.patient_uuid AND p.sync_status = 'DONE')")
        d.patients_where("3 patients past retain_until",
                         "p.retain_until < :now AND p.sync_status = 'DONE'", {"now": now})
        for table in SOFT_DELETED_CHILD_TABLES:
            d.delete("4 deleted measurements, medical history, call results", table,
                     "x.deleted_at IS NOT NULL AND x.sync_status = 'DONE'")
        d.delete("5 deleted prescribed drugs", "prescribed_drug", "x.is_deleted AND x.sync_status = 'DONE'")
        s = "6 appointments"
        d.delete(s, "appointment", "x.deleted_at IS NOT NULL AND x.sync_status = 'DONE'")
        d.delete(s, "appointment", "x.sync_status = 'DONE' AND EXISTS (SELECT 1 FROM "
                                   f"{t('appointment')} b WHERE b.patient_uuid = x.patient_uuid "
                                   "AND (b.created_at, b.uuid) > (x.created_at, x.uuid))")
        d.done_orphans("7 DONE orphans")
        # Recorded only here, after the purge, in its transaction (upstream recorded skipped runs too).
        conn.execute(sa.text("UPDATE replica_state SET last_maintenance_at = :now WHERE replica_id = :id"),
                     {"now": now, "id": replica_id})
        return None

    outcome = _run_prune(conn, replica_id, "maintenance", now, None, body)
    if vacuum and not outcome.skipped:
        vacuum_tables(conn, replica_schema_name(replica_id), [t for t, n in outcome.deleted.items() if n], outcome)
    return outcome


def vacuum_tables(conn: sa.Connection, schema: str, tables: list[str], outcome: PruneOutcome) -> None:
    """VACUUM (ANALYZE) each table after the commit; a failure is logged and ignored (§3.5)."""
    if not tables:
        return
    auto = conn.execution_options(isolation_level="AUTOCOMMIT")
    try:
        for table in sorted(tables):
            try:
                auto.execute(sa.text(f"VACUUM (ANALYZE) {_table(schema, table)}"))
                outcome.vacuumed.append(table)
            except sa.exc.DBAPIError as error:
                log.warning("VACUUM (ANALYZE) of %s.%s failed (ignored): %s", schema, table, type(error.orig).__name__)
                outcome.vacuum_failed.append(table)
    finally:
        if conn.in_transaction():  # SQLAlchemy autobegins even in AUTOCOMMIT; end it before switching back
            conn.rollback()
        conn.execution_options(isolation_level=conn.default_isolation_level)


def overdue_replicas(conn: sa.Connection, now: datetime | None = None) -> list[sa.RowMapping]:
    """Replicas whose maintenance is overdue: never maintained, or not for 7 days + one daily check."""
    now = as_utc(now or now_utc())
    return conn.execute(
        sa.text("SELECT replica_id, last_maintenance_at FROM replica_state "
                "WHERE last_maintenance_at IS NULL OR last_maintenance_at < :cutoff ORDER BY replica_id"),
        {"cutoff": now - MAINTENANCE_OVERDUE_AFTER},
    ).mappings().all()
