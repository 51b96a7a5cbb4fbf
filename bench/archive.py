"""Notification archival of 1,000,000 rows (scale 1) against the floor and the upstream shape.

Same rows, same database, same run; the table is reloaded before each way:
- project: `assets.history.archive_notifications` — units per (service, type), batches of 50,000 ids in
  an ON COMMIT DROP temp table, INSERT … ON CONFLICT DO NOTHING + DELETE, one transaction per batch;
- floor: ONE statement, `WITH moved AS (DELETE … RETURNING …) INSERT INTO notification_history …`;
- upstream shape (baseline): per unit, a temp table holding 50,000 whole rows per transaction
  (`CREATE TEMP TABLE … AS SELECT cols FROM notifications WHERE … LIMIT 50000`, insert from it,
  `DELETE … WHERE id IN (SELECT id FROM temp)`), as `insert_notification_history_delete_notifications`.
"""

from __future__ import annotations

import random
import uuid
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa

from bench.runner import BenchDatabase, BenchReport, timed
from orchestration import schema
from orchestration.clock import retention_cutoff
from orchestration.bulk import copy_rows

TODAY = date(2026, 11, 23)
SERVICES = 4
COLUMNS = list(schema.NOTIFICATION_HISTORY_COLUMNS) + ["to", "personalisation"]
HISTORY_COLS = ", ".join(f'"{c}"' for c in schema.NOTIFICATION_HISTORY_COLUMNS)


def _rows(count: int, services: list[uuid.UUID]):
    rng = random.Random(7)
    template = uuid.UUID(int=rng.getrandbits(128), version=4)
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    for i in range(count):
        created = start + timedelta(seconds=rng.randrange(60 * 86_400))
        notification_type = "email" if i % 2 else "sms"
        yield (uuid.UUID(int=rng.getrandbits(128), version=4), None, None, services[i % len(services)], template, 1,
               None, "normal" if i % 10 else "team", notification_type, created, created, "ses", created, None, 1,
               None, False, None, None, "delivered", None, None, None,
               f"person{i}@example.com" if notification_type == "email" else "07700900123", '{"name": "Example"}')


def _reload(db: BenchDatabase) -> int:
    with db.connect() as conn:
        conn.execute("TRUNCATE notifications, notification_history")
        conn.execute("INSERT INTO notifications SELECT * FROM bench_source")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE notifications")
        conn.execute("CHECKPOINT")
        return conn.execute("SELECT count(*) FROM notifications").fetchone()[0]


def _check_moved(db: BenchDatabase, expected: int) -> None:
    with db.connect() as conn:
        live, hist = conn.execute("SELECT (SELECT count(*) FROM notifications), "
                                  "(SELECT count(*) FROM notification_history)").fetchone()
    if (live, hist) != (0, expected):
        raise AssertionError(f"expected every row moved: live {live}, history {hist}, expected {expected}")


def _floor(engine: sa.Engine, cutoff: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            f"WITH moved AS (DELETE FROM notifications WHERE created_at < :cutoff AND key_type IN ('normal', 'team') "
            f"RETURNING {HISTORY_COLS}) "
            f"INSERT INTO notification_history ({HISTORY_COLS}) SELECT {HISTORY_COLS} FROM moved "
            f"ON CONFLICT (id) DO NOTHING"), {"cutoff": cutoff})


def _upstream_shape(engine: sa.Engine, cutoff: datetime, batch: int = 50_000) -> int:
    with engine.connect() as conn:
        units = conn.execute(sa.text("SELECT DISTINCT service_id, notification_type FROM notifications "
                                     "WHERE created_at < :cutoff"), {"cutoff": cutoff}).all()
        conn.commit()
        batches = 0
        for service_id, notification_type in units:
            while True:
                with conn.begin():
                    conn.execute(sa.text(
                        f"CREATE TEMP TABLE notification_archive ON COMMIT DROP AS SELECT {HISTORY_COLS} "
                        f"FROM notifications WHERE service_id = :s AND notification_type = :t "
                        f"AND created_at < :cutoff AND key_type IN ('normal', 'team') LIMIT :limit"),
                        {"s": service_id, "t": notification_type, "cutoff": cutoff, "limit": batch})
                    conn.execute(sa.text(f"INSERT INTO notification_history ({HISTORY_COLS}) "
                                         f"SELECT {HISTORY_COLS} FROM notification_archive ON CONFLICT (id) DO NOTHING"))
                    deleted = conn.execute(sa.text(
                        "DELETE FROM notifications WHERE id IN (SELECT id FROM notification_archive)")).rowcount
                if not deleted:
                    break
                batches += 1
    return batches


def run(db: BenchDatabase, scale: float) -> BenchReport:
    from assets.history import archive_notifications

    report = BenchReport("archive", scale)
    count = int(1_000_000 * scale)
    services = [uuid.UUID(int=i + 1, version=4) for i in range(SERVICES)]
    cutoff = retention_cutoff(7, TODAY)
    with db.connect() as conn:
        conn.execute("INSERT INTO services (id) SELECT unnest(%s::uuid[])", ([str(s) for s in services],))
        conn.execute("CREATE TABLE bench_source (LIKE notifications)")
        with timed() as t:
            copy_rows(conn, "bench_source", COLUMNS, _rows(count, services))
            conn.commit()
        load_seconds = t()
    report.add("notifications archived per way", count, "rows")
    report.add("synthetic load (COPY)", count / load_seconds, "rows/s")
    engine = db.engine()

    _reload(db)
    with timed() as t:
        _floor(engine, cutoff)
    floor_seconds = t()
    _check_moved(db, count)

    _reload(db)
    with engine.connect() as conn, timed() as t:
        result = archive_notifications(conn, TODAY)
    project_seconds = t()
    _check_moved(db, count)

    _reload(db)
    with timed() as t:
        upstream_batches = _upstream_shape(engine, cutoff)
    upstream_seconds = t()
    _check_moved(db, count)
    engine.dispose()

    report.add("project: archive_notifications", project_seconds, "s",
               f"{result.units} units, {result.archived.batches} batches of ≤ 50,000")
    report.add("project rate", count / project_seconds, "rows/s", "target ≥ 100,000 rows/s")
    report.add("floor: one DELETE … RETURNING → INSERT", floor_seconds, "s")
    report.add("floor rate", count / floor_seconds, "rows/s")
    report.add("upstream shape: temp table of 50,000 rows per transaction", upstream_seconds, "s",
               f"{upstream_batches} batches")
    report.add("upstream shape rate (baseline)", count / upstream_seconds, "rows/s")
    report.ratio("project time / floor time", "project: archive_notifications",
                 "floor: one DELETE … RETURNING → INSERT", "≤ 2×")
    report.ratio("project rate / upstream-shape rate", "project rate", "upstream shape rate (baseline)",
                 "≥ 1× (upstream in production ~1,000 rows/s)")
    return report
