"""The multiplex results backfill (§5) on 5,000,000 test orders (scale 1), against a row-at-a-time baseline.

Data are built in SQL (generate_series) over 24 months: 8% pending orders (60% of them without a result),
3% submitted without a result, 10% corrected (ORIGINAL + CORRECTED), 3% removed (ORIGINAL + REMOVED), the
rest one ORIGINAL event. The project's way is `backfill_results` (both passes, keyset batches of 10,000, one
transaction each), run as two ranges as a user would from the UI: the first FLOOR_MONTHS months, then the rest.
The baseline inserts the same order-pass rows one statement per source row (the way a loop in application code
would), on a sample: committing every 10,000 rows like the backfill, and again committing every row; its rows
are then deleted (scratch database) so the measured backfill starts from nothing.

The floor is what any set-based method can reach here: one bare `INSERT … SELECT` (no batches, no anti-join,
the backfill's projection) of the order-pass rows of the first FLOOR_MONTHS months into an empty copy of
`result` with the same indexes and foreign keys, and again into one without the foreign keys. It is a sample
(a smaller table than the backfill's by the end, so if anything a little optimistic) to keep scale 1 short.
The first range's order pass inserts exactly those rows into an empty `result`: the like-for-like comparison.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa

from assets.results import (ORDER_ROW_ID_SQL, ROW_ID_PARAMS, SNOMED_PARAMS, SNOMED_SQL, BackfillCounts,
                            backfill_results)
from bench.runner import BenchDatabase, BenchReport, timed
from orchestration.schema import COVID19_DISEASE_ID, SNOMED_BY_TEST_RESULT

ORDERS_AT_SCALE_1 = 5_000_000
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
END = datetime(2026, 1, 1, tzinfo=timezone.utc)
USER = uuid.UUID("00000000-0000-4000-8000-00000000beef")
FLOOR_MONTHS = 3
FLOOR_END = datetime(2024, 1 + FLOOR_MONTHS, 1, tzinfo=timezone.utc)

BUILD = [
    # test_order and test_event refer to each other: load both, then restore the key (validated once).
    "ALTER TABLE test_order DROP CONSTRAINT fk_test_order_test_event_id",
    """
    CREATE TEMP TABLE src AS
    SELECT i, k,
           (ARRAY['NEGATIVE', 'POSITIVE', 'UNDETERMINED'])[CASE WHEN h % 100 < 80 THEN 1 WHEN h % 100 < 95 THEN 2
                                                            ELSE 3 END] AS outcome,
           (ARRAY['POSITIVE', 'UNDETERMINED', 'NEGATIVE'])[1 + h % 3] AS first_outcome,
           CASE WHEN k < 8 THEN 0 WHEN k < 24 AND k >= 11 THEN 2 ELSE 1 END AS events,
           CAST(:start AS timestamptz) + (i::float8 / :n) * (CAST(:end AS timestamptz) - CAST(:start AS timestamptz))
               AS created_at
    FROM (SELECT i, abs(hashtext('k' || i)) % 100 AS k, abs(hashtext('h' || i)) AS h
          FROM generate_series(1, :n) AS i) AS s
    """,
    """
    INSERT INTO test_order (internal_id, created_at, created_by, updated_at, updated_by, result, test_event_id)
    SELECT md5('o' || i)::uuid, created_at, :user, created_at + interval '1 hour', :user,
           CASE WHEN k < 8 AND i % 10 < 6 THEN NULL WHEN k >= 8 AND k < 11 THEN NULL ELSE outcome END,
           CASE WHEN events = 0 THEN NULL ELSE md5('e' || i || '-' || (events - 1))::uuid END
    FROM src
    """,
    """
    INSERT INTO test_event (internal_id, created_at, created_by, updated_at, updated_by, test_order_id, result,
                            correction_status, prior_corrected_test_event_id)
    SELECT md5('e' || i || '-' || j)::uuid, created_at + j * interval '9 days' + interval '30 minutes', :user,
           created_at + j * interval '9 days' + interval '30 minutes', :user, md5('o' || i)::uuid,
           CASE WHEN k >= 8 AND k < 11 THEN NULL WHEN j = 0 AND k >= 11 AND k < 21 THEN first_outcome
                ELSE outcome END,
           CASE WHEN j = 0 THEN 'ORIGINAL' WHEN k < 21 THEN 'CORRECTED' ELSE 'REMOVED' END,
           CASE WHEN j = 0 THEN NULL ELSE md5('e' || i || '-' || (j - 1))::uuid END
    FROM src CROSS JOIN LATERAL generate_series(0, events - 1) AS j
    """,
    "ALTER TABLE test_order ADD CONSTRAINT fk_test_order_test_event_id FOREIGN KEY (test_event_id) "
    "REFERENCES test_event (internal_id)",
    "DROP TABLE src",
]

# The baseline: one statement per source row (rule 1 for that order, its row fetched beforehand).
ROW_AT_A_TIME = """
    INSERT INTO result (created_at, created_by, updated_at, updated_by, is_deleted,
                        test_event_id, test_order_id, disease_id, result, test_result)
    SELECT %s, %s, %s, %s, false, %s, %s, %s, %s, %s
    WHERE NOT EXISTS (SELECT 1 FROM result AS r WHERE r.test_order_id = %s)
    ON CONFLICT DO NOTHING
"""


# Copies of `result` for the floor: same columns, defaults, checks and indexes; the first also gets the FKs.
FLOOR_TABLES = {
    "result_floor_fk": [
        "CREATE TABLE result_floor_fk (LIKE result INCLUDING ALL)",
        "ALTER TABLE result_floor_fk ADD FOREIGN KEY (test_event_id) REFERENCES test_event (internal_id), "
        "ADD FOREIGN KEY (test_order_id) REFERENCES test_order (internal_id), "
        "ADD FOREIGN KEY (disease_id) REFERENCES supported_disease (internal_id)",
    ],
    "result_floor_no_fk": ["CREATE TABLE result_floor_no_fk (LIKE result INCLUDING ALL)"],
}

# The order pass's rows with its projection, in one statement: no batches, no anti-join, no conflict clause.
FLOOR_INSERT = f"""
    INSERT INTO {{table}} (internal_id, created_at, created_by, updated_at, updated_by, is_deleted,
                         test_event_id, test_order_id, disease_id, result, test_result)
    SELECT {ORDER_ROW_ID_SQL},
           src.created_at, src.created_by, src.updated_at, src.updated_by, false,
           src.test_event_id, src.internal_id, :disease_id, {SNOMED_SQL}, src.result
    FROM test_order AS src
    WHERE src.created_at >= :start AND src.created_at < :end AND src.result IS NOT NULL
"""


def _floor(conn: sa.Connection, table: str) -> tuple[int, float]:
    """Rows and seconds of the bare INSERT … SELECT into a fresh copy `table` (dropped afterwards)."""
    for statement in FLOOR_TABLES[table]:
        conn.execute(sa.text(statement))
    conn.commit()
    with timed() as t:
        rows = conn.execute(sa.text(FLOOR_INSERT.format(table=table)), {
            "start": START, "end": FLOOR_END, "disease_id": COVID19_DISEASE_ID,
            **SNOMED_PARAMS, **ROW_ID_PARAMS}).rowcount
        conn.commit()
    seconds = t()
    conn.execute(sa.text(f"DROP TABLE {table}"))
    conn.commit()
    return rows, seconds


def _checkpoint(conn: sa.Connection) -> None:
    conn.execute(sa.text("CHECKPOINT"))  # superuser in the scratch database
    conn.commit()


def _build_orders(engine, orders: int) -> tuple[float, int]:
    """Set-up: `orders` test orders and their events, built in SQL; the seconds it took and the events."""
    with engine.connect() as conn:
        with timed() as t:
            for statement in BUILD:
                conn.execute(sa.text(statement), {"n": orders, "start": START, "end": END, "user": USER})
            conn.commit()
            conn.execute(sa.text("ANALYZE test_order, test_event, result"))
            conn.commit()
        build_seconds = t()
        events = conn.execute(sa.text("SELECT count(*) FROM test_event")).scalar_one()
    return build_seconds, events


def _time_row_at_a_time(conn, rows: list) -> float:
    """One INSERT per row, commit per 10,000: the seconds it took."""
    with timed() as t:
        with conn.cursor() as cur:
            for n, (order_id, event_id, result, created_at, created_by, updated_at, updated_by) in enumerate(
                    rows, 1):
                cur.execute(ROW_AT_A_TIME, (created_at, created_by, updated_at, updated_by, event_id, order_id,
                                            COVID19_DISEASE_ID, SNOMED_BY_TEST_RESULT[result], result, order_id))
                if n % 10_000 == 0:
                    conn.commit()
        conn.commit()
    return t()


def _time_row_at_a_time_commit_per_row(conn, rows: list) -> float:
    """The same loop committing every row (an ORM-style save per row); synchronous_commit is off here."""
    with timed() as t:
        with conn.cursor() as cur:
            for order_id, event_id, result, created_at, created_by, updated_at, updated_by in rows:
                cur.execute(ROW_AT_A_TIME, (created_at, created_by, updated_at, updated_by, event_id, order_id,
                                            COVID19_DISEASE_ID, SNOMED_BY_TEST_RESULT[result], result, order_id))
                conn.commit()
    return t()


def _measure_row_at_a_time(db: BenchDatabase, sample: int) -> tuple[int, int, float, float]:
    """Baseline on a sample of orders with a result: the sample's size, the rows the first loop inserted, and
    the seconds of each loop. Its rows are deleted after each, so the measured backfill starts from nothing."""
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT internal_id, test_event_id, result, created_at, created_by, updated_at, updated_by "
            "FROM test_order WHERE result IS NOT NULL ORDER BY internal_id LIMIT %s", (sample,)).fetchall()
        baseline_seconds = _time_row_at_a_time(conn, rows)
        baseline_rows = conn.execute("SELECT count(*) FROM result").fetchone()[0]
        conn.execute("DELETE FROM result")  # scratch database: the measured backfill starts from nothing
        conn.commit()
        per_row_commit_seconds = _time_row_at_a_time_commit_per_row(conn, rows)
        conn.execute("DELETE FROM result")
        conn.commit()
    return len(rows), baseline_rows, baseline_seconds, per_row_commit_seconds


def _measure_backfill(conn: sa.Connection) -> tuple[BackfillCounts, BackfillCounts, float]:
    """Two range runs, as from the UI: the first FLOOR_MONTHS months (the floor's rows, like for like), then
    the rest. The first range's counts, both ranges' counts and the seconds of both."""
    # Each timed phase starts after a CHECKPOINT, so none pays for another's dirty pages and a checkpoint
    # that falls inside a short phase does not decide its figure.
    _checkpoint(conn)
    with timed() as t:
        first = backfill_results(conn, START, FLOOR_END)
        rest = backfill_results(conn, FLOOR_END, END)
    backfill_seconds = t()
    counts = BackfillCounts()
    for range_counts in (first, rest):
        counts.add(range_counts)
    return first, counts, backfill_seconds


def _measure_rerun(conn: sa.Connection) -> tuple[BackfillCounts, float]:
    """The backfill over every month again (must insert nothing)."""
    with timed() as t:
        rerun = backfill_results(conn, START, END)
    return rerun, t()


def _measure_floors(conn: sa.Connection) -> tuple[int, float, int, float]:
    """The floor with foreign keys, then without: rows and seconds of each."""
    # After the backfill, so its FK row locks on the sources do not change what the backfill meets.
    _checkpoint(conn)
    floor_rows, floor_seconds = _floor(conn, "result_floor_fk")
    _checkpoint(conn)
    floor_no_fk_rows, floor_no_fk_seconds = _floor(conn, "result_floor_no_fk")
    return floor_rows, floor_seconds, floor_no_fk_rows, floor_no_fk_seconds


def _report_backfill(report: BenchReport, counts: BackfillCounts, backfill_seconds: float,
                     first: BackfillCounts) -> None:
    report.add("backfill: result rows inserted", counts.inserted, "rows",
               f"order pass {counts.order_rows:,}, event pass {counts.event_rows:,}")
    report.add("backfill: source rows scanned", counts.scanned, "rows", f"{counts.batches:,} batches of ≤ 10,000")
    report.add("backfill: wall time", backfill_seconds, "s")
    report.add("backfill rate", counts.inserted / backfill_seconds, "rows/s", "both passes")
    report.add("backfill: order pass", counts.order_pass_seconds, "s", f"{counts.order_rows:,} rows")
    report.add("backfill: event pass", counts.event_pass_seconds, "s",
               f"{counts.event_rows:,} rows (superseded events)")
    report.add("backfill: order pass rate", counts.order_rows / counts.order_pass_seconds, "rows/s")
    report.add(f"backfill, first {FLOOR_MONTHS} months (one run): order pass", first.order_pass_seconds, "s",
               f"{first.order_rows:,} rows")
    report.add(f"backfill, first {FLOOR_MONTHS} months: order pass rate", first.order_rows / first.order_pass_seconds,
               "rows/s")


def _report_floors(report: BenchReport, floor_rows: int, floor_seconds: float, floor_no_fk_rows: int,
                   floor_no_fk_seconds: float) -> None:
    report.add("floor sample: one INSERT … SELECT", floor_rows, "rows",
               f"order-pass rows of the first {FLOOR_MONTHS} months")
    report.add("floor rate (indexes + FKs)", floor_rows / floor_seconds, "rows/s")
    report.add("floor rate (indexes, no FKs)", floor_no_fk_rows / floor_no_fk_seconds, "rows/s")


def _report_row_at_a_time(report: BenchReport, baseline_rows: int, baseline_seconds: float,
                          per_row_commit_seconds: float) -> None:
    report.add("row-at-a-time sample", baseline_rows, "rows")
    report.add("row-at-a-time rate (baseline)", baseline_rows / baseline_seconds, "rows/s")
    report.add("row-at-a-time, commit per row: rate", baseline_rows / per_row_commit_seconds, "rows/s")


def _compare_backfill_with_floor_and_baseline(report: BenchReport) -> None:
    report.ratio(f"backfill order pass, first {FLOOR_MONTHS} months vs floor of the same rows",
                 f"backfill, first {FLOOR_MONTHS} months: order pass rate", "floor rate (indexes + FKs)",
                 "like for like: same rows, into an empty table")
    report.ratio("backfill order pass (24 months) vs floor (indexes + FKs)", "backfill: order pass rate",
                 "floor rate (indexes + FKs)", "")
    report.ratio("backfill (both passes) vs floor (indexes + FKs)", "backfill rate", "floor rate (indexes + FKs)")
    report.ratio("floor (indexes + FKs) vs row-at-a-time", "floor rate (indexes + FKs)",
                 "row-at-a-time rate (baseline)", "what a bare INSERT … SELECT reaches")
    report.ratio("floor (no FKs) vs row-at-a-time", "floor rate (indexes, no FKs)", "row-at-a-time rate (baseline)")
    report.ratio("set-based backfill vs row-at-a-time, per row", "backfill rate", "row-at-a-time rate (baseline)",
                 "≥ 100×")
    report.ratio("set-based backfill vs row-at-a-time with a commit per row", "backfill rate",
                 "row-at-a-time, commit per row: rate", "≥ 100×")


def run(db: BenchDatabase, scale: float) -> BenchReport:
    report = BenchReport("results_backfill", scale)
    orders = max(10_000, int(ORDERS_AT_SCALE_1 * scale))
    sample = max(2_000, min(20_000, orders // 100))
    engine = db.engine()
    build_seconds, events = _build_orders(engine, orders)
    sampled, baseline_rows, baseline_seconds, per_row_commit_seconds = _measure_row_at_a_time(db, sample)
    with engine.connect() as conn:
        first, counts, backfill_seconds = _measure_backfill(conn)
        rerun, rerun_seconds = _measure_rerun(conn)
        floors = _measure_floors(conn)
    engine.dispose()
    assert rerun.inserted == 0, "a rerun must be a no-op"
    assert baseline_rows == sampled

    report.add("test orders", orders, "rows")
    report.add("test events", events, "rows")
    report.add("data build (SQL)", build_seconds, "s")
    _report_backfill(report, counts, backfill_seconds, first)
    _report_floors(report, *floors)
    report.add("rerun (no-op): wall time", rerun_seconds, "s")
    _report_row_at_a_time(report, baseline_rows, baseline_seconds, per_row_commit_seconds)
    _compare_backfill_with_floor_and_baseline(report)
    return report
