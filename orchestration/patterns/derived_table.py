"""The *derived table* pattern: a table kept equal to a set-based computation over source tables.

A declaration is SQL plus a little configuration (see assets/statuses/sql.py for five):

    DerivedTable(
        name="patient_consent_statuses",
        key_columns=("patient_id", "programme_id"),
        batch_facts=(ELIGIBLE, PATIENT_FACTS),        # per-batch temp tables the SQL below reads
        expected_sql="SELECT patient_id, programme_id FROM eligible WHERE …",   # rows that must exist
        existing_sql="SELECT s.id AS row_id, s.patient_id, s.programme_id, s.status AS cached "
                     "FROM patient_consent_statuses AS s WHERE s.patient_id IN (SELECT id FROM batch_ids) …",
        value_joins="JOIN patient_facts AS f ON f.patient_id = k.patient_id",
        value_expr="f.consent_status",
    )

**The batch.** Work goes in batches of ids (e.g. 10,000 patients). The mechanism puts a batch's ids
in the temp table `batch_ids (id bigint)` at the start of the batch's transaction, and every query
reads the batch from it. Why a table and not a bound `bigint[]`: the planner estimates
`= ANY(<10,000-element array>)` element by element in every statement that mentions it (tens of ms of
planning each), and the array crossed the wire with every statement; a temp table with statistics is
planned like any join, and a full refresh fills it server-side, so no id travels through Python.

**Batch facts** are named queries over the batch that several tables read (per-patient consent facts,
today's attendance…). Each is materialised ONCE per batch as `CREATE TEMP TABLE <name> ON COMMIT DROP
AS …` and ANALYZEd; they may read facts declared before them.

**Rows of a batch.** `expected_sql` gives the keys that must exist (plus `context_columns` the value
needs, e.g. a patient_session's patient and session); `existing_sql` gives the rows the table holds in
the scope, as `row_id`, keys, context and `cached` value. Their FULL JOIN on the key is every row in
scope — expected or merely existing, since rows no longer expected are still recomputed (they go only by
cascade) — and `value_expr`, over that relation `k` and `value_joins`, computes each row's value.
One statement per table and batch then
1. inserts the expected rows that do not exist, with their value (`ON CONFLICT DO NOTHING`; tried first
   without the clause, in a savepoint, since only a writer outside the refresh could conflict);
2. updates, by primary key, only the rows whose value changed (`IS DISTINCT FROM`),
so each row is read once and written at most once, and a re-run of the same scope writes 0 rows.

**One transaction per batch**, all tables together, so a scope is never half-written; each batch
first takes `pg_advisory_xact_lock(lock_key)`, so batches of two refreshes never run at the same time
(they may alternate between batches: whole refreshes are kept apart by their caller, e.g. the Dagster
pool of the status runs, and a parallel refresh holds the lock from start to end). Temp tables
`ON COMMIT DROP` and transaction-scoped locks keep it safe behind PgBouncer's transaction pooling.

**Priority refreshes** (`priority=True`: a few ids that just changed, e.g. a patient's new consent)
must not wait for a whole refresh to end. Every batch also holds the *write lock* (`lock_key + 1`)
shared; a priority refresh takes only the write lock, exclusively. It so waits for the batches in
flight (whose snapshot may predate the change it refreshes), keeps new batches out until it commits,
and then writes from a snapshot that has the change: no batch can overwrite its rows with older values.

**Parallel batches** (`workers` > 1): batches are independent (disjoint ids, each its own
transaction), so several connections can refresh them at once, one per core of the database server.
The refresh lock is then held by a coordinating transaction for the whole refresh instead of per
batch, and every worker batch checks that it is still held; the refresh uses `workers` + 1
connections of the pool.

**Checks and explain** read the same rows relation (so a rule is written once): `drift` recomputes a
sample of ids and names the rows whose cached value differs; `coverage` names expected keys without a
row; `explain` gives the cached and recomputed value of one id's rows. They run in a transaction that
is rolled back (it only created temp tables).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

DEFAULT_BATCH_SIZE = 10_000
UNIQUE_VIOLATION = "23505"
BATCH_TABLE = "batch_ids"
# Settings of every batch transaction, SET LOCAL (set_config(…, true)) so they are PgBouncer-safe: no
# parallel workers (a batch's queries touch ~10,000 rows; starting workers costs more than it saves, and
# a loaded machine makes them wait), and a small statistics target for the ANALYZE of the batch's temp
# tables (a 3,000-row sample gives their join estimates; the default 30,000 reads every row of them).
BATCH_SETTINGS = ("set_config('max_parallel_workers_per_gather', '0', true), "
                  "set_config('default_statistics_target', '10', true)")
# Each batch transaction: the refresh lock, the write lock (shared), and the settings.
BEGIN_BATCH = sa.text(f"SELECT pg_advisory_xact_lock(:key), pg_advisory_xact_lock_shared(:key + 1), {BATCH_SETTINGS}")
# A priority batch: the write lock alone, exclusively (see "Priority refreshes" above).
BEGIN_PRIORITY_BATCH = sa.text(f"SELECT pg_advisory_xact_lock(:key + 1), {BATCH_SETTINGS}")


@dataclass(frozen=True)
class BatchFacts:
    """A query over one batch (same bound parameters) materialised once per batch as a temp table."""

    name: str
    sql: str
    # Columns the statements join or filter on: the only ones worth planner statistics (ANALYZE of
    # every column of every fact, every batch, cost as much as some of the writes).
    analyze_columns: tuple[str, ...] = ()

    @property
    def create_statement(self) -> sa.TextClause:
        return sa.text(f"CREATE TEMP TABLE {self.name} ON COMMIT DROP AS {self.sql}")

    @property
    def analyze_statement(self) -> sa.TextClause:
        columns = f" ({', '.join(self.analyze_columns)})" if self.analyze_columns else ""
        return sa.text(f"ANALYZE {self.name}{columns}")


@dataclass(frozen=True)
class DerivedTable:
    """One derived table: its name, unique key, the rows it must hold, and how to compute their value."""

    name: str
    key_columns: tuple[str, ...]
    expected_sql: str  # SELECT key…, context… : the rows that must exist for the batch
    existing_sql: str  # SELECT row_id, key…, context…, cached : the rows the table holds in scope
    value_expr: str  # the value of row `k` (over `value_joins`)
    value_joins: str = ""  # FROM-clause joins after `… AS k` that value_expr reads
    context_columns: tuple[str, ...] = ()
    batch_facts: tuple[BatchFacts, ...] = ()
    value_column: str = "status"
    value_type: str = "smallint"
    description: str = ""

    def _list(self, alias: str, columns: Iterable[str]) -> str:
        return ", ".join(f"{alias}.{c}" for c in columns)

    @property
    def rows_cte(self) -> str:
        """`rows`: every row in scope (expected ∪ existing) with row_id (NULL = missing), cached and value."""
        keys = self.key_columns
        merged = ", ".join(f"coalesce(e.{c}, x.{c}) AS {c}" for c in (*keys, *self.context_columns))
        on = " AND ".join(f"e.{c} = x.{c}" for c in keys)
        return (
            # expected and existing are read once, so Postgres plans them into the join (no copy);
            # rows is read by the insert, the update and the counts, so it is computed once.
            f"expected AS ({self.expected_sql}), "
            f"existing AS ({self.existing_sql}), "
            f"rows AS MATERIALIZED ("
            f"SELECT {self._list('k', keys)}, k.row_id, k.cached, "
            f"CAST(({self.value_expr}) AS {self.value_type}) AS computed "
            f"FROM (SELECT {merged}, x.row_id, x.cached FROM expected AS e FULL JOIN existing AS x ON {on}) AS k "
            f"{self.value_joins})"
        )

    def refresh_statement(self, on_conflict: bool = True) -> sa.TextClause:
        """Seed the missing rows and write back the changed ones. Without `on_conflict` the insert has no
        `ON CONFLICT (key) DO NOTHING`: the missing rows are those absent from the statement's snapshot,
        and the refresh lock makes the refresh their only writer, so a conflict needs a writer outside
        it; `refresh_batch` runs that form in a savepoint and falls back to the full one on a unique
        violation, so the outcome is always that of ON CONFLICT DO NOTHING, and the common case skips the
        speculative insertion (an arbiter-index probe and an extra WAL record per row, about a sixth of
        an empty-cache write)."""
        # `cached` is the row's value in this statement's snapshot, and only the refresh (holding the
        # advisory lock) writes these tables, so filtering on it lets the UPDATE touch changed rows only;
        # their ids as an array make it reach them by primary key (a join would scan the whole table
        # whenever the planner guesses many rows changed).
        cols = ", ".join(self.key_columns)
        v = self.value_column
        conflict = f"ON CONFLICT ({cols}) DO NOTHING " if on_conflict else ""
        return sa.text(
            f"WITH {self.rows_cte}, "
            f"seeded AS (INSERT INTO {self.name} ({cols}, {v}) SELECT {cols}, computed FROM rows "
            f"WHERE row_id IS NULL {conflict}RETURNING 1), "
            f"changed AS (UPDATE {self.name} AS t SET {v} = r.computed FROM rows AS r "
            f"WHERE t.id = ANY(ARRAY(SELECT row_id FROM rows WHERE row_id IS NOT NULL "
            f"AND cached IS DISTINCT FROM computed)) "
            f"AND t.id = r.row_id AND r.cached IS DISTINCT FROM r.computed RETURNING 1) "
            f"SELECT (SELECT count(*) FROM seeded) AS seeded, "
            f"(SELECT count(*) FROM rows WHERE row_id IS NOT NULL) AS computed, "
            f"(SELECT count(*) FROM changed) AS changed"
        )

    def _rows_where(self, values: str, where: str) -> sa.TextClause:
        """The keys (then `values`) of the rows CTE's rows that match `where`, in key order."""
        keys = self._list("rows", self.key_columns)
        return sa.text(f"WITH {self.rows_cte} SELECT {keys}{values} FROM rows WHERE {where} ORDER BY {keys}")

    @property
    def drift_statement(self) -> sa.TextClause:
        return self._rows_where(", cached, computed", "row_id IS NOT NULL AND cached IS DISTINCT FROM computed")

    @property
    def coverage_statement(self) -> sa.TextClause:
        return self._rows_where("", "row_id IS NULL")

    @property
    def explain_statement(self) -> sa.TextClause:
        return self._rows_where(", cached, computed", "row_id IS NOT NULL")


@dataclass
class RefreshCounts:
    seeded: int = 0
    changed: int = 0
    unchanged: int = 0
    batches: int = 0
    seconds: float = 0.0

    def add(self, other: "RefreshCounts") -> None:
        self.seeded += other.seeded
        self.changed += other.changed
        self.unchanged += other.unchanged
        self.batches += other.batches
        self.seconds += other.seconds

    def as_dict(self) -> dict[str, Any]:
        return {"seeded": self.seeded, "changed": self.changed, "unchanged": self.unchanged,
                "batches": self.batches, "seconds": round(self.seconds, 3)}


@dataclass
class RefreshResult:
    tables: dict[str, RefreshCounts] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0

    def merge(self, other: "RefreshResult") -> None:
        for name, counts in other.tables.items():
            self.tables.setdefault(name, RefreshCounts()).add(counts)
        self.batches += other.batches
        self.seconds += other.seconds

    @property
    def written(self) -> int:
        return sum(c.seeded + c.changed for c in self.tables.values())


def batch_facts_of(tables: Sequence[DerivedTable]) -> list[BatchFacts]:
    """The batch facts the tables need, each once, in declaration order."""
    found: dict[str, BatchFacts] = {}
    for table in tables:
        for facts in table.batch_facts:
            if found.setdefault(facts.name, facts) != facts:
                raise ValueError(f"two different batch facts are named {facts.name!r}")
    return list(found.values())


def prepare_batch(conn: sa.Connection, facts: Sequence[BatchFacts], params: dict[str, Any]) -> None:
    """Materialise the batch facts (over `batch_ids`) as temp tables dropped at commit, with planner statistics."""
    for f in facts:
        conn.execute(f.create_statement, params)
        conn.execute(f.analyze_statement)


def refresh_batch(conn: sa.Connection, table: DerivedTable, params: dict[str, Any]) -> RefreshCounts:
    """Seed, recompute and write back one batch of one table, in the caller's transaction
    (after `batch_ids` is filled and `prepare_batch` ran)."""
    started = time.perf_counter()
    try:
        with conn.begin_nested():
            seeded, computed, changed = conn.execute(table.refresh_statement(on_conflict=False), params).one()
    except sa.exc.IntegrityError as error:
        if getattr(error.orig, "sqlstate", None) != UNIQUE_VIOLATION:
            raise
        # A row of the batch was inserted by a writer outside the refresh: skip it, as ON CONFLICT does.
        seeded, computed, changed = conn.execute(table.refresh_statement(), params).one()
    return RefreshCounts(seeded=seeded, changed=changed, unchanged=computed - changed, batches=1,
                         seconds=time.perf_counter() - started)


@dataclass(frozen=True)
class Batch:
    """The batch now in `batch_ids`: how many ids, and its first and last id (bound as
    `:batch_first` / `:batch_last`, so queries can bound index scans by the batch's id range)."""

    count: int
    first: Any
    last: Any

    @property
    def params(self) -> dict[str, Any]:
        return {"batch_first": self.first, "batch_last": self.last}


@dataclass(frozen=True)
class BatchSource:
    """Where a scope's batches come from: a query `SELECT id … ORDER BY id LIMIT :limit` giving the ids
    after `:after` (a bigint, NULL on the first batch), run by Postgres straight into `batch_ids`."""

    sql: str
    params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = DEFAULT_BATCH_SIZE
    known_count: int | None = None  # how many ids in all, when known up front (a list of ids)
    # A cheaper query of (about) how many ids the scope has, for sizing parallel batches only: it never
    # decides which ids are refreshed, so an estimate costs at most a less even last round.
    count_sql: str | None = None

    def fill(self, conn: sa.Connection, after: Any, limit: int | None = None) -> Batch:
        """Create and fill `batch_ids` with the next batch (at most `limit` ids, the batch size unless
        given), inside the caller's transaction."""
        conn.execute(sa.text(f"CREATE TEMP TABLE {BATCH_TABLE} ON COMMIT DROP AS SELECT id FROM ({self.sql}) AS b"),
                     {**self.params, "after": after, "limit": limit or self.batch_size})
        batch = Batch(*conn.execute(sa.text(f"SELECT count(*), min(id), max(id) FROM {BATCH_TABLE}")).one())
        conn.execute(sa.text(f"ANALYZE {BATCH_TABLE}"))
        return batch

    def balanced_size(self, conn: sa.Connection, workers: int) -> int:
        """A batch size no larger than the batch size that splits the scope into a multiple of
        `workers` batches of equal size, so parallel workers finish together (6 batches of 10,000,
        10,000, …, 1,572 would leave one worker idle for the last round)."""
        count = self.known_count
        if count is None and self.count_sql is not None:
            count = conn.execute(sa.text(self.count_sql), self.params).scalar_one()
        if count is None:  # LIMIT NULL is no limit: the whole scope, counted without being fetched
            count = conn.execute(sa.text(f"SELECT count(*) FROM ({self.sql}) AS b"),
                                 {**self.params, "after": None, "limit": None}).scalar_one()
        rounds = max(1, -(-count // (workers * self.batch_size)))
        return max(1, min(self.batch_size, -(-count // (workers * rounds))))


def keyset_batches(sql: str, params: dict[str, Any], batch_size: int = DEFAULT_BATCH_SIZE,
                   count_sql: str | None = None) -> BatchSource:
    """Batches from a query `SELECT id … WHERE id > :after ORDER BY id LIMIT :limit` (keyset paging).

    `:after` is bound as a bigint; NULL on the first batch. `count_sql` (same parameters, no `:after`
    or `:limit`) estimates the scope's size for sizing parallel batches (see BatchSource.count_sql).
    """
    return BatchSource(sql, dict(params), batch_size, count_sql=count_sql)


def list_batches(ids: Iterable[int], batch_size: int = DEFAULT_BATCH_SIZE) -> BatchSource:
    """Batches from a known list of ids (deduplicated, sorted), keyset-paged by Postgres."""
    unique = sorted(set(ids))
    return BatchSource(
        "SELECT DISTINCT id FROM unnest(CAST(:ids AS bigint[])) AS i (id) "
        "WHERE CAST(:after AS bigint) IS NULL OR id > CAST(:after AS bigint) ORDER BY id LIMIT :limit",
        {"ids": unique}, batch_size, known_count=len(unique))


def _refresh_one_batch(conn: sa.Connection, tables: Sequence[DerivedTable], facts: Sequence[BatchFacts],
                       batch: Batch, params: dict[str, Any], result: RefreshResult) -> None:
    """Build the batch's facts and refresh every table over it, in the caller's transaction."""
    if not batch.count:
        return
    batch_params = {**params, **batch.params}
    prepare_batch(conn, facts, batch_params)
    for table in tables:
        result.tables[table.name].add(refresh_batch(conn, table, batch_params))
    result.batches += 1


def refresh(
    conn: sa.Connection,
    tables: Sequence[DerivedTable],
    batches: BatchSource,
    params: dict[str, Any],
    lock_key: int,
    finalize: Callable[[sa.Connection], None] | None = None,
    workers: int = 1,
    priority: bool = False,
) -> RefreshResult:
    """Refresh `tables` over every batch of ids, one transaction per batch (all tables together).

    `conn` must not be inside a transaction. `finalize(conn)` runs once every batch has committed, in
    the last transaction of the refresh, so work that must only count once the refresh is complete
    (e.g. marking requests processed) commits with it. `workers` > 1 refreshes that many batches at
    once, on connections of their own (see `_refresh_in_parallel`), unless the ids are known to fit
    one batch. `priority` takes only the write lock (see "Priority refreshes"), batch after batch.
    """
    if conn.in_transaction():
        conn.commit()  # e.g. autobegun by an earlier read
    one_batch = batches.known_count is not None and batches.known_count <= batches.batch_size
    if workers > 1 and not one_batch and not priority:
        return _refresh_in_parallel(conn, tables, batches, params, lock_key, finalize, workers)
    result = RefreshResult(tables={t.name: RefreshCounts() for t in tables})
    facts = batch_facts_of(tables)
    started = time.perf_counter()
    after = None
    done = False
    while not done:
        with conn.begin():
            conn.execute(BEGIN_PRIORITY_BATCH if priority else BEGIN_BATCH, {"key": lock_key})
            batch = batches.fill(conn, after)
            _refresh_one_batch(conn, tables, facts, batch, params, result)
            # The last batch is the first one shorter than the batch size (possibly empty).
            done = batch.count < batches.batch_size
            after = batch.last
            if done and finalize is not None:
                finalize(conn)
    result.seconds = time.perf_counter() - started
    return result


# A parallel refresh's coordinator holds the refresh lock for the whole refresh, in a transaction on
# its own connection; each worker batch checks, in its own transaction, that the coordinator's
# backend still holds it (a bigint advisory key shows in pg_locks as classid = high half,
# objid = low half, objsubid = 1).
_HOLD_REFRESH_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key), pg_backend_pid()")
_BEGIN_WORKER_BATCH = sa.text("""
    SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = :pid
                     AND classid = CAST((CAST(:key AS bigint) >> 32) AS oid)
                     AND objid = CAST((CAST(:key AS bigint) & 4294967295) AS oid) AND objsubid = 1),
           """ + BATCH_SETTINGS)
# Taken first in a worker's batch transaction, outside the hand-out lock: a worker that waits here
# for a priority refresh holds up no other worker.
_WORKER_WRITE_LOCK = sa.text("SELECT pg_advisory_xact_lock_shared(:key + 1)")


class RefreshLockLost(RuntimeError):
    """A parallel refresh's coordinator no longer holds the refresh lock (its connection ended)."""


def _refresh_in_parallel(conn: sa.Connection, tables: Sequence[DerivedTable], batches: BatchSource,
                         params: dict[str, Any], lock_key: int,
                         finalize: Callable[[sa.Connection], None] | None, workers: int) -> RefreshResult:
    """`workers` threads, each with its own connection, take the next batch in turn and refresh it.

    Batches are keyset pages as in a serial refresh, of an equal size no larger than the batch size
    (`BatchSource.balanced_size`): a worker fills `batch_ids` from the last id handed out (under a
    Python lock, so only this cheap step is serial), then builds the facts and writes the tables
    while the next worker fills its batch. Each batch is still one transaction over every
    table. Other refreshes are kept out by `conn`'s transaction holding the refresh lock until the end;
    `finalize` runs in that transaction after every batch has committed. The first error stops the
    workers after their current batch and is raised.
    """
    result = RefreshResult(tables={t.name: RefreshCounts() for t in tables})
    facts = batch_facts_of(tables)
    started = time.perf_counter()
    engine = conn.engine
    handout = threading.Lock()
    state: dict[str, Any] = {"after": None, "done": False, "error": None}

    def work(coordinator_pid: int, index: int) -> None:
        mine = RefreshResult(tables={t.name: RefreshCounts() for t in tables})
        # Each worker writes the tables starting from a different one: in step, both would insert into
        # the same table at once and contend for the same last pages of its heap and id index (5% of a
        # parallel empty-cache refresh). The order within a batch's transaction changes nothing else:
        # batches hold disjoint ids, so their writes never wait for each other.
        start = index * len(tables) // workers
        own_order = [*tables[start:], *tables[:start]]
        try:
            with engine.connect() as worker:
                while True:
                    with worker.begin():
                        worker.execute(_WORKER_WRITE_LOCK, {"key": lock_key})
                        with handout:
                            if state["done"] or state["error"] is not None:
                                break
                            held = worker.execute(_BEGIN_WORKER_BATCH,
                                                  {"pid": coordinator_pid, "key": lock_key}).scalar_one()
                            if not held:
                                raise RefreshLockLost("the refresh's coordinator connection lost the refresh "
                                                      "lock; stopping before another refresh overlaps")
                            batch = batches.fill(worker, state["after"], batch_size)
                            state["after"] = batch.last
                            state["done"] = batch.count < batch_size
                        _refresh_one_batch(worker, own_order, facts, batch, params, mine)
        except BaseException as error:  # noqa: BLE001 - handed to the coordinator, which raises it
            with handout:
                if state["error"] is None:
                    state["error"] = error
        finally:
            with handout:
                result.merge(mine)

    with conn.begin():
        coordinator_pid = conn.execute(_HOLD_REFRESH_LOCK, {"key": lock_key}).one()[1]
        batch_size = batches.balanced_size(conn, workers)
        threads = [threading.Thread(target=work, args=(coordinator_pid, i), name=f"refresh-worker-{i}")
                   for i in range(workers)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:  # e.g. the run was terminated: no worker takes another batch
            with handout:
                state["done"] = True
            raise
        if state["error"] is not None:
            raise state["error"]
        if finalize is not None:
            finalize(conn)
    result.seconds = time.perf_counter() - started
    return result


@contextmanager
def read_transaction(conn: sa.Connection) -> Iterator[None]:
    """A transaction (or, inside a caller's, a savepoint) that is rolled back at the end: checks and
    explain only create temp tables."""
    tx = conn.begin_nested() if conn.in_transaction() else conn.begin()
    try:
        yield
    finally:
        tx.rollback()


def _read_batch(conn: sa.Connection, tables: Sequence[DerivedTable], batches: BatchSource, after: Any,
                params: dict[str, Any], statement: Callable[[DerivedTable], sa.TextClause],
                found: dict[str, list[dict]]) -> Batch:
    """One batch of a check: fill `batch_ids`, build the facts, run `statement` of each table."""
    with read_transaction(conn):
        conn.execute(sa.text(f"SELECT {BATCH_SETTINGS}"))
        batch = batches.fill(conn, after)
        if batch.count:
            batch_params = {**params, **batch.params}
            prepare_batch(conn, batch_facts_of(tables), batch_params)
            for table in tables:
                found[table.name].extend(dict(r) for r in conn.execute(statement(table), batch_params).mappings())
    return batch


def drift(conn: sa.Connection, tables: Sequence[DerivedTable], sample_ids: Sequence[int],
          params: dict[str, Any]) -> dict[str, list[dict]]:
    """Per table: rows of the sample whose cached value differs from a fresh computation (keys and values)."""
    found: dict[str, list[dict]] = {t.name: [] for t in tables}
    if sample_ids:
        sample = list_batches(sample_ids, batch_size=len(sample_ids))
        _read_batch(conn, tables, sample, None, params, lambda t: t.drift_statement, found)
    return found


def coverage(conn: sa.Connection, tables: Sequence[DerivedTable], batches: BatchSource, params: dict[str, Any],
             limit: int = 1000) -> dict[str, list[dict]]:
    """Per table: expected keys that have no row (up to `limit`), scanning every batch of the scope."""
    found: dict[str, list[dict]] = {t.name: [] for t in tables}
    after = None
    while all(len(rows) < limit for rows in found.values()):
        batch = _read_batch(conn, tables, batches, after, params, lambda t: t.coverage_statement, found)
        if batch.count < batches.batch_size:
            break
        after = batch.last
    return {name: rows[:limit] for name, rows in found.items()}


def explain(conn: sa.Connection, tables: Sequence[DerivedTable], batch_id: int,
            params: dict[str, Any]) -> dict[str, list[dict]]:
    """Per table: cached vs recomputed value of every row of one batch id (e.g. one patient)."""
    found: dict[str, list[dict]] = {t.name: [] for t in tables}
    _read_batch(conn, tables, list_batches([batch_id]), None, params, lambda t: t.explain_statement, found)
    return found


def fill_batch_ids(conn: sa.Connection, ids: Sequence[int]) -> dict[str, Any]:
    """`batch_ids` holding exactly `ids`, in the caller's transaction (explain's input queries); returns
    the batch's bound parameters."""
    return list_batches(ids, max(1, len(ids))).fill(conn, None).params
