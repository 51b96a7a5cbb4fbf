"""Benchmark harness: `pso bench CASE --scale N`.

A case is a module `bench/<case>.py` with `run(db: BenchDatabase, scale: float) -> BenchReport`
(a case with `OWN_STACK = True` starts the product itself and gets `db=None`).
It builds its own data at the given scale in a scratch database, measures the project's way
and its baselines in the same run, and returns figures; the harness prints them as a table
with ratios and appends them to BENCHMARKS.md with the machine and date. Nothing here asserts
on time: the numbers are for people.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import sqlalchemy as sa

from orchestration.settings import PROJECT_ROOT, get_settings

BENCHMARKS_MD = PROJECT_ROOT / "BENCHMARKS.md"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""


@dataclass
class BenchReport:
    case: str
    scale: float
    figures: list[Figure] = field(default_factory=list)
    # (label, numerator figure, denominator figure, target text)
    ratios: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, note: str = "") -> None:
        self.figures.append(Figure(name, value, unit, note))

    def ratio(self, label: str, numerator: str, denominator: str, target: str = "") -> None:
        self.ratios.append((label, numerator, denominator, target))

    def value(self, name: str) -> float:
        return next(f.value for f in self.figures if f.name == name)


@contextmanager
def timed():
    """`with timed() as t: …` then `t()` gives the elapsed seconds."""
    started = time.perf_counter()
    elapsed = [None]
    yield lambda: elapsed[0] if elapsed[0] is not None else time.perf_counter() - started
    elapsed[0] = time.perf_counter() - started


@dataclass
class BenchDatabase:
    """A scratch database, migrated to head, dropped afterwards."""

    url: str  # SQLAlchemy URL

    @property
    def libpq_url(self) -> str:
        return self.url.replace("postgresql+psycopg://", "postgresql://", 1)

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.url, connect_args={"prepare_threshold": None})

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.libpq_url, prepare_threshold=None)


@contextmanager
def scratch_database(case: str):
    from orchestration.migrate import upgrade

    settings = get_settings()
    base = settings.database_url.rsplit("/", 1)[0]
    name = f"pso_bench_{case}"
    admin = base.replace("postgresql+psycopg://", "postgresql://", 1) + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    upgrade(url)
    try:
        yield BenchDatabase(url)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def format_report(report: BenchReport) -> str:
    lines = [f"case {report.case} at scale {report.scale:g}", "", f"{'figure':<48} {'value':>14}  unit"]
    for f in report.figures:
        lines.append(f"{f.name:<48} {f.value:>14,.3f}  {f.unit}{('  ' + f.note) if f.note else ''}")
    if report.ratios:
        lines += ["", f"{'ratio':<48} {'value':>14}  target"]
        for label, num, den, target in report.ratios:
            lines.append(f"{label:<48} {report.value(num) / report.value(den):>14,.2f}x  {target}")
    return "\n".join(lines)


def machine_description() -> str:
    cores = os.cpu_count()
    try:
        mem_kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        mem = "?"
    return f"{platform.machine()}, {cores} cores, {mem}, Python {platform.python_version()}"


def append_markdown(report: BenchReport, path: Path = BENCHMARKS_MD) -> None:
    if not path.exists():
        path.write_text("# Benchmarks\n\nAppended by `pso bench CASE --scale N`; figures measured on the machine named, "
                        "baselines measured in the same run.\n")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [f"\n## {report.case}, scale {report.scale:g} — {when} — {machine_description()}\n",
            "| figure | value | unit |", "|---|---:|---|"]
    rows += [f"| {f.name} | {f.value:,.3f} | {f.unit} |" for f in report.figures]
    if report.ratios:
        rows += ["", "| ratio | value | target |", "|---|---:|---|"]
        rows += [f"| {label} | {report.value(n) / report.value(d):,.2f}× | {t} |" for label, n, d, t in report.ratios]
    with path.open("a") as handle:
        handle.write("\n".join(rows) + "\n")


def run_case(case: str, scale: str | float, record: bool = True) -> int:
    try:
        module = importlib.import_module(f"bench.{case}")
    except ModuleNotFoundError:
        available = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in {"__init__", "runner"})
        print(f"unknown case {case!r}; available: {', '.join(available)}")
        return 2
    factor = float(scale)
    if getattr(module, "OWN_STACK", False):
        # The case starts the product itself (`bench.live_stack`): no scratch database, no running services.
        report = module.run(None, factor)
    else:
        with scratch_database(case) as db:
            report = module.run(db, factor)
    print(format_report(report))
    if record:
        append_markdown(report)
        print(f"\nrecorded in {BENCHMARKS_MD.name}")
    return 0
