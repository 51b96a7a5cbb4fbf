"""The generator's COPY load rate against a plain `executemany` insert of the same rows."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

from bench.runner import BenchDatabase, BenchReport, timed
from orchestration.bulk import copy_rows

COLUMNS = ["id", "service_id", "created_at", "notify_number", "provider_date", "provider_reference", "provider",
           "user_number", "content"]


def _rows(count: int, seed: int):
    rng = random.Random(seed)
    service = uuid.UUID(int=rng.getrandbits(128))
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(count):
        at = start + timedelta(seconds=i)
        yield (uuid.UUID(int=rng.getrandbits(128)), service, at, "07700900000", at, f"ref-{i}", "mmg",
               "07700900123", "synthetic message")


def run(db: BenchDatabase, scale: float) -> BenchReport:
    report = BenchReport("generator_load", scale)
    copy_count = int(200_000 * scale)
    sample = max(1_000, copy_count // 20)  # executemany is slow; measure it on a sample, per row
    with db.connect() as conn:
        conn.execute("INSERT INTO services (id) VALUES (%s)", (uuid.UUID(int=random.Random(1).getrandbits(128)),))
        with timed() as t:
            copy_rows(conn, "inbound_sms", COLUMNS, _rows(copy_count, 1))
            conn.commit()
        copy_seconds = t()
        conn.execute("TRUNCATE inbound_sms")
        conn.commit()
        rows = list(_rows(sample, 1))
        with timed() as t:
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO inbound_sms ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * 9)})", rows)
            conn.commit()
        exec_seconds = t()
    report.add("COPY rows", copy_count, "rows")
    report.add("COPY load rate", copy_count / copy_seconds, "rows/s")
    report.add("executemany sample rows", sample, "rows")
    report.add("executemany load rate (baseline)", sample / exec_seconds, "rows/s")
    report.ratio("COPY vs executemany, per row", "COPY load rate", "executemany load rate (baseline)", "> 1× (COPY is the faster path)")
    return report
