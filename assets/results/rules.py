"""Multiplex results backfill rules (domain.md §5): the `result` table filled from legacy test orders and events.

Two passes, in this order, over the months of the source row's `created_at`:

1. the order pass: each order with a result and no `result` row carrying its id gets one COVID-19 row
   (its current event, or NULL for a pending order), audit columns copied from the order;
2. the event pass: each event with a result and no `result` row carrying its id gets one COVID-19 row,
   audit columns from the event — after pass 1 these are only the superseded (corrected/removed) events.

Each batch of 10,000 source rows (keyset on `(created_at, internal_id)`) is one transaction. An anti-join plus
`ON CONFLICT DO NOTHING` makes a rerun a no-op: the unique key alone would not, because Postgres treats
NULLs as distinct. The backfill only ever inserts `result` rows.

Order independence: months may run in any order, or concurrently. An event's month can be earlier or later
than its order's, so the event pass first applies the order pass to the orders of its batch (the same row
the order's own month would insert); otherwise a superseded event's row would make the order pass skip
the order. One transaction-scoped advisory lock serialises batches (PgBouncer-safe), so two runs never
both insert a pending order's row (NULL `test_event_id`, which the unique key cannot catch). A row's
`internal_id` is derived from its source row, so the same source rows always give the same `result` rows.
"""

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from orchestration.schema import COVID19_DISEASE_ID, SNOMED_BY_TEST_RESULT

BATCH_SIZE = 10_000
# pg_advisory_xact_lock key of the backfill ("multiplex" in ASCII, as a bigint): one writer at a time.
BACKFILL_LOCK_KEY = 0x6D756C7469706C78
# The keyset's starting point: just before the window (timestamptz has microsecond resolution), so every row
# of the window is after it whatever its id.
_ONE_MICROSECOND = timedelta(microseconds=1)
_NIL_UUID = uuid.UUID(int=0)

# --------------------------------------------------------------------------- SQL

def _snomed_case(column: str) -> tuple[str, dict]:
    """`CASE column WHEN … THEN <SNOMED> END` from SNOMED_BY_TEST_RESULT, with bound parameters."""
    whens, params = [], {}
    for i, (test_result, snomed) in enumerate(sorted(SNOMED_BY_TEST_RESULT.items())):
        whens.append(f"WHEN :tr{i} THEN :snomed{i}")
        params[f"tr{i}"] = test_result
        params[f"snomed{i}"] = snomed
    return f"CASE {column} {' '.join(whens)} END", params


SNOMED_SQL, SNOMED_PARAMS = _snomed_case("src.result")

# A backfilled row's internal_id is a name-based UUID, version 3 (RFC 9562): `uuid.uuid3(namespace, str(source
# id))`, with one namespace per pass (the disease is always COVID-19). A rerun or a second database gives the
# same ids, any UUID library can recompute and validates them, and it avoids gen_random_uuid(), which costs a
# /dev/urandom read per row on a server built without OpenSSL (the embedded one: ~5 µs a row, 15% of a batch).
ORDER_ROW_NAMESPACE = uuid.uuid5(COVID19_DISEASE_ID, "result-backfill/order-pass")
EVENT_ROW_NAMESPACE = uuid.uuid5(COVID19_DISEASE_ID, "result-backfill/event-pass")
ROW_ID_PARAMS = {"order_row_ns": ORDER_ROW_NAMESPACE.bytes, "event_row_ns": EVENT_ROW_NAMESPACE.bytes}


def name_based_uuid_sql(namespace_param: str, name: str) -> str:
    """SQL for uuid.uuid3(namespace, name): the MD5 of the namespace's 16 bytes (bound as `:namespace_param`)
    and the name's UTF-8, with the version (3) and variant (10xx) bits set."""
    digest = f"decode(md5(CAST(:{namespace_param} AS bytea) || convert_to({name}, 'UTF8')), 'hex')"
    return (f"CAST(encode(set_byte(set_byte({digest}, 6, (get_byte({digest}, 6) & 15) | 48), "
            f"8, (get_byte({digest}, 8) & 63) | 128), 'hex') AS uuid)")


ORDER_ROW_ID_SQL = name_based_uuid_sql("order_row_ns", "src.internal_id::text")
EVENT_ROW_ID_SQL = name_based_uuid_sql("event_row_ns", "src.internal_id::text")

_INSERT_COLUMNS = ("internal_id, created_at, created_by, updated_at, updated_by, is_deleted, "
                   "test_event_id, test_order_id, disease_id, result, test_result")

# The keyset over one month: (created_at, internal_id) after the last batch's key. The created_at index serves
# it (index scan + incremental sort), so a batch costs O(batch) however far into the month it is; ordering by
# internal_id alone would sort the rest of the month for every batch.
_KEYSET = """
        WHERE {t}.created_at >= :start AND {t}.created_at < :end
          AND {t}.created_at >= :after_at AND ({t}.created_at > :after_at OR {t}.internal_id > :after_id)
          AND {t}.result IS NOT NULL
        ORDER BY {t}.created_at, {t}.internal_id
        LIMIT :batch_size
"""

# The batch's size and its last key, for the next batch.
_BATCH_SUMMARY = """
    SELECT (SELECT count(*) FROM batch) AS scanned, last.created_at AS last_at, last.internal_id AS last_id,
           (SELECT count(*) FROM inserted) AS inserted
    FROM (SELECT 1) AS one
    LEFT JOIN (SELECT created_at, internal_id FROM batch ORDER BY created_at DESC, internal_id DESC LIMIT 1)
        AS last ON true
"""

# Rule 1 for the orders picked by `{orders}` (a query yielding test_order rows as `src`).
_ORDER_ROWS_INSERT = f"""
    INSERT INTO result ({_INSERT_COLUMNS})
    SELECT {ORDER_ROW_ID_SQL},
           src.created_at, src.created_by, src.updated_at, src.updated_by, false,
           src.test_event_id, src.internal_id, :disease_id, {SNOMED_SQL}, src.result
    FROM {{orders}} AS src
    WHERE src.result IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM result AS r WHERE r.test_order_id = src.internal_id)
    ORDER BY src.internal_id
    ON CONFLICT DO NOTHING
    RETURNING 1
"""

ORDER_PASS_BATCH = sa.text(f"""
    WITH batch AS (
        SELECT o.internal_id, o.test_event_id, o.result, o.created_at, o.created_by, o.updated_at, o.updated_by
        FROM test_order AS o
        {_KEYSET.format(t="o")}
    ), inserted AS ({_ORDER_ROWS_INSERT.format(orders="batch")})
    {_BATCH_SUMMARY}
""")

# The event pass's next batch: the same keyset for its order rows and its event rows.
_EVENT_BATCH = f"""
        SELECT e.internal_id, e.test_order_id, e.result, e.created_at, e.created_by, e.updated_at, e.updated_by
        FROM test_event AS e
        {_KEYSET.format(t="e")}
"""

# Rule 1 for the orders of the batch's events, before rule 2 (order independence, see the module docstring).
# Two statements of one transaction: the second must see the first one's rows.
EVENT_PASS_ORDER_ROWS = sa.text(f"""
    WITH batch AS ({_EVENT_BATCH}), orders AS (
        -- Orders inside this run's window had their order pass already.
        SELECT o.* FROM test_order AS o
        WHERE o.internal_id IN (SELECT test_order_id FROM batch)
          AND (o.created_at < :run_start OR o.created_at >= :run_end)
    ), inserted AS ({_ORDER_ROWS_INSERT.format(orders="orders")})
    SELECT count(*) FROM inserted
""")

EVENT_PASS_BATCH = sa.text(f"""
    WITH batch AS ({_EVENT_BATCH}), inserted AS (
        INSERT INTO result ({_INSERT_COLUMNS})
        SELECT {EVENT_ROW_ID_SQL},
               src.created_at, src.created_by, src.updated_at, src.updated_by, false,
               src.internal_id, src.test_order_id, :disease_id, {SNOMED_SQL}, src.result
        FROM batch AS src
        WHERE NOT EXISTS (SELECT 1 FROM result AS r WHERE r.test_event_id = src.internal_id)
        ORDER BY src.internal_id
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    {_BATCH_SUMMARY}
""")

LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")


# --------------------------------------------------------------------------- plain functions

@dataclass
class BackfillCounts:
    """What a backfill over a window did, per pass and per month (`YYYY-MM` of the source row)."""

    order_pass: dict[str, int] = field(default_factory=dict)
    event_pass: dict[str, int] = field(default_factory=dict)
    # Order rows the event pass inserted for orders of its events (order not backfilled yet).
    order_rows_from_event_pass: int = 0
    scanned: int = 0
    batches: int = 0
    seconds: float = 0.0
    order_pass_seconds: float = 0.0
    event_pass_seconds: float = 0.0

    @property
    def order_rows(self) -> int:
        return sum(self.order_pass.values())

    @property
    def event_rows(self) -> int:
        return sum(self.event_pass.values())

    @property
    def inserted(self) -> int:
        return self.order_rows + self.event_rows + self.order_rows_from_event_pass

    def add(self, other: "BackfillCounts") -> None:
        """Fold in a later run's counts (e.g. consecutive ranges of one backfill)."""
        for mine, theirs in ((self.order_pass, other.order_pass), (self.event_pass, other.event_pass)):
            for month, rows in theirs.items():
                mine[month] = mine.get(month, 0) + rows
        self.order_rows_from_event_pass += other.order_rows_from_event_pass
        self.scanned += other.scanned
        self.batches += other.batches
        self.seconds += other.seconds
        self.order_pass_seconds += other.order_pass_seconds
        self.event_pass_seconds += other.event_pass_seconds


def month_starts(start: datetime, end: datetime) -> list[datetime]:
    """First instants (UTC) of the months that intersect [start, end)."""
    start = start.astimezone(timezone.utc)
    current = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    months = []
    while current < end:
        months.append(current)
        current = (current + timedelta(days=32)).replace(day=1)
    return months


def _month_windows(start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    windows = []
    for month in month_starts(start, end):
        following = (month + timedelta(days=32)).replace(day=1)
        windows.append((month.strftime("%Y-%m"), max(month, start), min(following, end)))
    return windows


def _run_batches(conn: sa.Connection, window: tuple[datetime, datetime], run: tuple[datetime, datetime],
                 batch_size: int, statement: sa.TextClause, counts: BackfillCounts,
                 before_batch: sa.TextClause | None = None) -> int:
    """Keyset loop over one month's `window` of a run over `run`: one transaction per batch; returns rows
    inserted by `statement`."""
    inserted = 0
    after_at, after_id = window[0] - _ONE_MICROSECOND, _NIL_UUID
    while True:
        params = {"start": window[0], "end": window[1], "run_start": run[0], "run_end": run[1],
                  "after_at": after_at, "after_id": after_id,
                  "batch_size": batch_size, "disease_id": COVID19_DISEASE_ID, **SNOMED_PARAMS, **ROW_ID_PARAMS}
        conn.execute(LOCK, {"key": BACKFILL_LOCK_KEY})
        if before_batch is not None:
            counts.order_rows_from_event_pass += conn.execute(before_batch, params).scalar_one()
        row = conn.execute(statement, params).one()
        conn.commit()
        counts.batches += 1
        counts.scanned += row.scanned
        inserted += row.inserted
        if row.scanned < batch_size:
            return inserted
        after_at, after_id = row.last_at, row.last_id


def backfill_results(conn: sa.Connection, start: datetime, end: datetime, batch_size: int = BATCH_SIZE,
                     log=None) -> BackfillCounts:
    """Both passes over source rows created in [start, end): the order pass over every month, then the event pass.

    Commits after each batch, so `conn` must not be inside a caller's transaction.
    """
    if conn.in_transaction():
        conn.commit()  # a caller's autobegun read transaction; each batch is its own transaction
    counts = BackfillCounts()
    started = time.perf_counter()
    windows = _month_windows(start, end)
    for month, window_start, window_end in windows:
        counts.order_pass[month] = _run_batches(conn, (window_start, window_end), (start, end), batch_size,
                                                ORDER_PASS_BATCH, counts)
        if log:
            log.info(f"order pass {month}: {counts.order_pass[month]} result rows inserted")
    counts.order_pass_seconds = time.perf_counter() - started
    for month, window_start, window_end in windows:
        counts.event_pass[month] = _run_batches(conn, (window_start, window_end), (start, end), batch_size,
                                                EVENT_PASS_BATCH, counts, before_batch=EVENT_PASS_ORDER_ROWS)
        if log:
            log.info(f"event pass {month}: {counts.event_pass[month]} result rows inserted")
    counts.seconds = time.perf_counter() - started
    counts.event_pass_seconds = counts.seconds - counts.order_pass_seconds
    return counts


MISSING_BY_MONTH = sa.text("""
    SELECT 'order' AS source, to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month, count(*) AS missing,
           (array_agg(o.internal_id::text ORDER BY o.internal_id))[1:5] AS sample_ids
    FROM test_order AS o
    WHERE o.result IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM result AS r WHERE r.test_order_id = o.internal_id)
    GROUP BY 2
    UNION ALL
    SELECT 'event', to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM'), count(*),
           (array_agg(e.internal_id::text ORDER BY e.internal_id))[1:5]
    FROM test_event AS e
    WHERE e.result IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM result AS r WHERE r.test_event_id = e.internal_id)
    GROUP BY 2
    ORDER BY 2, 1
""")


@dataclass
class MissingResults:
    orders: int
    events: int
    by_month: list[tuple[str, str, int]]  # (source, month, missing)
    sample_order_ids: list[str]
    sample_event_ids: list[str]

    @property
    def total(self) -> int:
        return self.orders + self.events


def find_missing_results(conn: sa.Connection, sample: int = 5) -> MissingResults:
    """Orders and events that have a result but no `result` row carrying their id (ids only)."""
    rows = conn.execute(MISSING_BY_MONTH).all()
    orders = [r for r in rows if r.source == "order"]
    events = [r for r in rows if r.source == "event"]
    return MissingResults(
        orders=sum(r.missing for r in orders),
        events=sum(r.missing for r in events),
        by_month=[(r.source, r.month, r.missing) for r in rows],
        sample_order_ids=[i for r in orders for i in r.sample_ids][:sample],
        sample_event_ids=[i for r in events for i in r.sample_ids][:sample],
    )
