"""Deterministic synthetic data for every family, bulk-loaded with COPY.

`seed_all(database_url, scale=…, seed=…)` runs each family's generator in order. The same
seed and scale give the same rows. `scale` multiplies volumes: SCALES["demo"] loads in well
under a minute; SCALES["bench"] has ≥ 50,000 patients in one programme and ≥ 1,000,000
notifications.
"""

from __future__ import annotations

import importlib
import random
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Iterable

import psycopg

from orchestration.bulk import copy_rows
from orchestration.clock import london_today, now_utc
from resources.postgres import with_driver

SCALES = {"tiny": 0.05, "demo": 1.0, "bench": 20.0}

# Order matters only for readability; families do not share rows except sync_runs.
FAMILY_GENERATORS = [
    "orchestration.synthetic.statuses",
    "orchestration.synthetic.cohort_stats",
    "orchestration.synthetic.notifications",
    "orchestration.synthetic.letters",
    "orchestration.synthetic.results",
    "orchestration.synthetic.replicas",
]


def parse_scale(value: str | float) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if value in SCALES:
        return SCALES[value]
    try:
        scale = float(value)
    except ValueError:
        raise ValueError(f"scale must be one of {sorted(SCALES)} or a number, got {value!r}") from None
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return scale


def libpq_url(database_url: str) -> str:
    """SQLAlchemy URL → libpq URL for a raw psycopg connection."""
    return with_driver(database_url, "psycopg").replace("postgresql+psycopg://", "postgresql://", 1)


@dataclass
class LoadStats:
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@dataclass
class SynthContext:
    """What a family generator gets: a raw psycopg connection (COPY), a seeded RNG and the scale."""

    conn: psycopg.Connection
    rng: random.Random
    scale: float
    now: datetime
    today: date
    s3: Any = None  # boto3 client, or None when S3 objects are not wanted
    settings: Any = None
    stats: LoadStats = field(default_factory=LoadStats)

    def n(self, base: int, minimum: int = 1) -> int:
        """A volume scaled from its demo-size `base`."""
        return max(minimum, int(round(base * self.scale)))

    def copy(self, table: str, columns: list[str], rows: Iterable[tuple]) -> int:
        """COPY rows into `table` (schema-qualified names allowed); returns the row count."""
        count = copy_rows(self.conn, table, columns, rows)
        self.stats.rows[table] = self.stats.rows.get(table, 0) + count
        return count


def database_is_empty(database_url: str) -> bool:
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM programmes) + (SELECT count(*) FROM services)").fetchone()
        return row[0] == 0


def seed_all(database_url: str, scale: str | float = "demo", seed: int = 20251123, s3=None, settings=None,
             now: datetime | None = None, families: list[str] | None = None, echo=print) -> LoadStats:
    """Load every family's synthetic data in one transaction per family."""
    factor = parse_scale(scale)
    now = now or now_utc()
    stats = LoadStats()
    started = time.perf_counter()
    with psycopg.connect(libpq_url(database_url), prepare_threshold=None) as conn:
        for module_name in families or FAMILY_GENERATORS:
            module = importlib.import_module(module_name)
            family_started = time.perf_counter()
            before = stats.total
            # Each family gets its own RNG stream so adding rows to one leaves the others unchanged.
            rng = random.Random(f"{seed}:{module_name}")
            ctx = SynthContext(conn=conn, rng=rng, scale=factor, now=now, today=london_today(now), s3=s3,
                               settings=settings, stats=stats)
            with conn.transaction():
                # Bulk loads skip the refresh-request triggers; the first refresh covers everything.
                conn.execute("SET LOCAL pso.skip_refresh_triggers = 'on'")
                module.generate(ctx)
            rows = stats.total - before
            seconds = time.perf_counter() - family_started
            echo(f"  {module_name.rsplit('.', 1)[-1]:<14} {rows:>10,} rows in {seconds:6.2f}s "
                 f"({rows / max(seconds, 1e-9):,.0f} rows/s)")
        conn.execute("ANALYZE")
    stats.seconds = time.perf_counter() - started
    echo(f"  {'total':<14} {stats.total:>10,} rows in {stats.seconds:6.2f}s "
         f"({stats.total / max(stats.seconds, 1e-9):,.0f} rows/s)")
    return stats
