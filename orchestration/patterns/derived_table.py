"""The *derived table* pattern: a table kept equal to a set-based computation over source tables.

A declaration is SQL plus a little configuration:

    DerivedTable(
        name="patient_consent_statuses",
        key_columns=("patient_id", "programme_id"),
        seed_sql="SELECT … AS patient_id, … AS programme_id FROM … WHERE <scope>",   # rows that must exist
        compute_sql="SELECT s.patient_id, s.programme_id, <expr> AS status FROM patient_consent_statuses s …",
    )

Both queries see the same bound parameters: `:batch_ids` (bigint[], the ids of one batch, e.g. 10,000
patients) plus whatever the family passes (`:today`, `:programme_id`, …). `compute_sql` returns
(key…, value) for every row of the batch that exists *after* seeding, so rows that are no longer
expected are still recomputed (they go only by cascade).

The mechanism, per batch and in ONE transaction (so a scope is never half-written):
1. takes `pg_advisory_xact_lock(lock_key)` (two refreshes never interleave, PgBouncer-safe);
2. seeds: `INSERT INTO t (keys) SELECT keys FROM (seed) ON CONFLICT DO NOTHING`;
3. recomputes and writes only the changed rows: `UPDATE t SET value = c.value FROM (compute) c
   WHERE keys match AND t.value IS DISTINCT FROM c.value`;
   (with `batch_seed_sql`, steps 2–3 are one statement that inserts new rows with their value;)
4. commits. A re-run of the same scope therefore writes 0 rows.

Shared per-batch facts (optional): a table may declare `batch_facts`, named queries over the batch
that several tables read (e.g. per-patient consent facts). `refresh` materialises each one ONCE per
batch as `CREATE TEMP TABLE <name> ON COMMIT DROP AS <sql>` (PgBouncer-safe) and ANALYZEs it; the
table's `batch_seed_sql` / `batch_compute_sql` then read it by name. `batch_seed_sql` returns the
expected rows WITH their value, so a new row is written once (inserted with its value), not
inserted with the default and then updated. `seed_sql` / `compute_sql` stay self-contained (they
define the same facts as CTEs) for the checks and `explain`, which run outside a refresh.

Checks: `drift` recomputes a random sample of batch ids and names mismatched keys; `coverage`
names expected keys that are missing. `explain` returns the cached and the recomputed value of one
batch id's rows, for a CLI that prints why a value is what it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import sqlalchemy as sa

DEFAULT_BATCH_SIZE = 10_000


@dataclass(frozen=True)
class BatchFacts:
    """A query over one batch (same bound parameters) materialised once per batch as a temp table.

    It may read batch facts listed before it (`refresh` creates them in first-declared order)."""

    name: str
    sql: str

    @property
    def create_statement(self) -> sa.TextClause:
        return sa.text(f"CREATE TEMP TABLE {self.name} ON COMMIT DROP AS {self.sql}")

    @property
    def analyze_statement(self) -> sa.TextClause:
        return sa.text(f"ANALYZE {self.name}")


@dataclass(frozen=True)
class DerivedTable:
    """One derived table: its name, unique key, the rows it must hold, and how to compute them."""

    name: str
    key_columns: tuple[str, ...]
    seed_sql: str  # SELECT key… : the rows expected for :batch_ids
    compute_sql: str  # SELECT key…, value : every existing row for :batch_ids, recomputed from sources
    value_column: str = "status"
    description: str = ""
    # Optional refresh-time variants reading the per-batch temp tables of `batch_facts` (see above).
    batch_facts: tuple[BatchFacts, ...] = ()
    batch_seed_sql: str | None = None  # SELECT key…, value : the expected rows with their value
    batch_compute_sql: str | None = None  # as compute_sql, reading the batch facts

    def _keys(self, alias: str) -> str:
        return ", ".join(f"{alias}.{k}" for k in self.key_columns)

    def _join(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{k} = {right}.{k}" for k in self.key_columns)

    @property
    def seed_statement(self) -> sa.TextClause:
        cols = ", ".join(self.key_columns)
        return sa.text(
            f"WITH seeded AS (INSERT INTO {self.name} ({cols}) SELECT {cols} FROM ({self.seed_sql}) AS expected "
            f"ON CONFLICT ({cols}) DO NOTHING RETURNING 1) SELECT count(*) FROM seeded"
        )

    @property
    def update_statement(self) -> sa.TextClause:
        v = self.value_column
        compute = self.batch_compute_sql if self.batch_compute_sql is not None else self.compute_sql
        return sa.text(
            f"WITH computed AS MATERIALIZED ({compute}), "
            f"changed AS (UPDATE {self.name} AS t SET {v} = c.{v} FROM computed AS c "
            f"WHERE {self._join('t', 'c')} AND t.{v} IS DISTINCT FROM c.{v} RETURNING 1) "
            f"SELECT (SELECT count(*) FROM computed) AS computed, (SELECT count(*) FROM changed) AS changed"
        )

    @property
    def seed_and_update_statement(self) -> sa.TextClause:
        """Seeding and write-back in ONE statement (tables with `batch_seed_sql`).

        All parts see the snapshot taken before the statement, so `computed` covers the rows that
        existed before it (the UPDATE writes those that changed) and `seeded` inserts the new rows with
        their value: each row is written at most once, and new rows are not recomputed a second time.
        """
        cols = ", ".join(self.key_columns)
        v = self.value_column
        return sa.text(
            f"WITH seeded AS (INSERT INTO {self.name} ({cols}, {v}) SELECT {cols}, {v} "
            f"FROM ({self.batch_seed_sql}) AS expected ON CONFLICT ({cols}) DO NOTHING RETURNING 1), "
            f"computed AS MATERIALIZED ({self.batch_compute_sql or self.compute_sql}), "
            f"changed AS (UPDATE {self.name} AS t SET {v} = c.{v} FROM computed AS c "
            f"WHERE {self._join('t', 'c')} AND t.{v} IS DISTINCT FROM c.{v} RETURNING 1) "
            f"SELECT (SELECT count(*) FROM seeded) AS seeded, (SELECT count(*) FROM computed) AS computed, "
            f"(SELECT count(*) FROM changed) AS changed"
        )

    @property
    def drift_statement(self) -> sa.TextClause:
        v = self.value_column
        return sa.text(
            f"SELECT {self._keys('t')}, t.{v} AS cached, c.{v} AS computed "
            f"FROM ({self.compute_sql}) AS c JOIN {self.name} AS t ON {self._join('t', 'c')} "
            f"WHERE t.{v} IS DISTINCT FROM c.{v} ORDER BY {self._keys('t')}"
        )

    @property
    def coverage_statement(self) -> sa.TextClause:
        return sa.text(
            f"SELECT {self._keys('e')} FROM ({self.seed_sql}) AS e "
            f"WHERE NOT EXISTS (SELECT 1 FROM {self.name} AS t WHERE {self._join('t', 'e')}) "
            f"ORDER BY {self._keys('e')}"
        )

    @property
    def explain_statement(self) -> sa.TextClause:
        v = self.value_column
        return sa.text(
            f"SELECT {self._keys('c')}, t.{v} AS cached, c.{v} AS computed "
            f"FROM ({self.compute_sql}) AS c JOIN {self.name} AS t ON {self._join('t', 'c')} "
            f"ORDER BY {self._keys('c')}"
        )


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
    """Materialise the batch facts as temp tables dropped at commit, with planner statistics."""
    for f in facts:
        conn.execute(f.create_statement, params)
        conn.execute(f.analyze_statement)


def refresh_batch(conn: sa.Connection, table: DerivedTable, params: dict[str, Any]) -> RefreshCounts:
    """Seed, recompute and write back one batch of one table, in the caller's transaction
    (after `prepare_batch` if the table reads batch facts)."""
    started = time.perf_counter()
    if table.batch_seed_sql is not None:
        # `computed` counts the rows that existed before (seeded rows were written with their value).
        seeded, computed, changed = conn.execute(table.seed_and_update_statement, params).one()
    else:
        seeded = conn.execute(table.seed_statement, params).scalar_one()
        computed, changed = conn.execute(table.update_statement, params).one()
    return RefreshCounts(seeded=seeded, changed=changed, unchanged=computed - changed, batches=1,
                         seconds=time.perf_counter() - started)


# A batch source returns the next batch of ids after `after` (None at the start), or [] when done.
BatchSource = Callable[[sa.Connection, Any], list]


def keyset_batches(sql: str, params: dict[str, Any], batch_size: int = DEFAULT_BATCH_SIZE) -> BatchSource:
    """Batches from a query `SELECT id … WHERE id > :after ORDER BY id LIMIT :limit` (keyset paging).

    `:after` is bound as a bigint; NULL on the first batch.
    """

    def next_batch(conn: sa.Connection, after: Any) -> list:
        rows = conn.execute(sa.text(sql), {**params, "after": after, "limit": batch_size}).scalars().all()
        return list(rows)

    return next_batch


def list_batches(ids: Iterable[int], batch_size: int = DEFAULT_BATCH_SIZE) -> BatchSource:
    """Batches from a known list of ids (deduplicated, sorted)."""
    ordered = sorted(set(ids))

    def next_batch(_conn: sa.Connection, after: Any) -> list:
        start = 0
        if after is not None:
            import bisect

            start = bisect.bisect_right(ordered, after)
        return ordered[start:start + batch_size]

    return next_batch


def refresh(
    conn: sa.Connection,
    tables: Sequence[DerivedTable],
    batches: BatchSource,
    params: dict[str, Any],
    lock_key: int,
    finalize: Callable[[sa.Connection], None] | None = None,
) -> RefreshResult:
    """Refresh `tables` over every batch of ids, one transaction per batch (all tables together).

    `conn` must not be inside a transaction. `finalize(conn)` runs inside the LAST batch's
    transaction (or in a transaction of its own if the scope is empty), so work that must only
    count once the refresh is complete (e.g. marking requests processed) commits with it.
    """
    if conn.in_transaction():
        conn.commit()  # e.g. autobegun by an earlier read
    result = RefreshResult(tables={t.name: RefreshCounts() for t in tables})
    facts = batch_facts_of(tables)
    started = time.perf_counter()
    after = None
    pending = None
    # Look one batch ahead so that `finalize` can run in the last batch's transaction.
    with conn.begin():
        ids = batches(conn, after)
    while True:
        if not ids:
            if pending is None and finalize is not None:
                with conn.begin():
                    finalize(conn)
            break
        with conn.begin():
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
            batch_params = {**params, "batch_ids": ids}
            prepare_batch(conn, facts, batch_params)
            for table in tables:
                result.tables[table.name].add(refresh_batch(conn, table, batch_params))
            result.batches += 1
            next_ids = batches(conn, ids[-1])
            if not next_ids and finalize is not None:
                finalize(conn)
        pending = ids
        ids = next_ids
    result.seconds = time.perf_counter() - started
    return result


def drift(conn: sa.Connection, table: DerivedTable, sample_ids: Sequence[int], params: dict[str, Any]) -> list[dict]:
    """Rows of the sample whose cached value differs from a fresh computation (keys and values only)."""
    if not sample_ids:
        return []
    rows = conn.execute(table.drift_statement, {**params, "batch_ids": list(sample_ids)}).mappings().all()
    return [dict(r) for r in rows]


def coverage(conn: sa.Connection, table: DerivedTable, batches: BatchSource, params: dict[str, Any],
             limit: int = 1000) -> list[dict]:
    """Expected keys that have no row (up to `limit`), scanning every batch of the scope."""
    missing: list[dict] = []
    after = None
    while len(missing) < limit:
        ids = batches(conn, after)
        if not ids:
            break
        rows = conn.execute(table.coverage_statement, {**params, "batch_ids": ids}).mappings().all()
        missing.extend(dict(r) for r in rows)
        after = ids[-1]
    return missing[:limit]


def explain(conn: sa.Connection, table: DerivedTable, batch_id: int, params: dict[str, Any]) -> list[dict]:
    """Cached vs recomputed value of every row of one batch id (e.g. one patient)."""
    rows = conn.execute(table.explain_statement, {**params, "batch_ids": [batch_id]}).mappings().all()
    return [dict(r) for r in rows]

