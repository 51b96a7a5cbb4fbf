"""The results backfill behind a real PgBouncer in transaction pooling mode (domain.md §0 Connections).

PgBouncer (Debian's package, installed by scripts/install-test-deps.sh) runs as an unprivileged user in front
of the test Postgres with a server pool of 5. Concurrent backfill runs, each with Dagster's multiprocess
executor, go through it and must give the same rows as a direct run; an exhausted pool makes a run wait and
retry with a log line instead of failing.
"""

import logging
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import sqlalchemy as sa

from orchestration.services import _as_os_user, free_port_block

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
UTC = timezone.utc
pytestmark = pytest.mark.skipif(
    not os.path.exists(PGBOUNCER),
    reason="pgbouncer is not installed: run `bash scripts/install-test-deps.sh` as root (Debian package pgbouncer)",
)

# 24 months of generated orders: 2024-11 … 2026-10 (the generator spans the 26 months before its `now`).
FIRST_MONTH, MONTHS = datetime(2024, 11, 1, tzinfo=UTC), 24


def _month_keys() -> list[str]:
    keys, year, month = [], FIRST_MONTH.year, FIRST_MONTH.month
    for _ in range(MONTHS):
        keys.append(f"{year:04d}-{month:02d}-01")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return keys


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text() if log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("pgbouncer did not start listening")


@contextmanager
def running_pgbouncer(database_url: str, **settings):
    """A PgBouncer in transaction mode in front of `database_url`'s server; yields its SQLAlchemy URL."""
    target = urlsplit(database_url)
    port = free_port_block(1, start=36000)
    workdir = Path(tempfile.mkdtemp(prefix="pso-pgbouncer-"))
    config = {
        "listen_addr": "127.0.0.1", "listen_port": port, "unix_socket_dir": "",
        "auth_type": "trust", "auth_file": workdir / "userlist.txt",
        "pool_mode": "transaction", "default_pool_size": 5, "min_pool_size": 0, "reserve_pool_size": 0,
        "max_db_connections": 5, "max_client_conn": 500,
        "ignore_startup_parameters": "extra_float_digits,options",
        "server_reset_query": "", "logfile": workdir / "pgbouncer.log", "pidfile": workdir / "pgbouncer.pid",
        **settings,
    }
    (workdir / "userlist.txt").write_text(f'"{target.username}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={target.hostname} port={target.port}\n\n[pgbouncer]\n"
        + "".join(f"{key} = {value}\n" for key, value in config.items()))
    user = _as_os_user()  # PgBouncer refuses to run as root: drop to the embedded Postgres' user
    preexec = None
    if user:
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, *user)

        def preexec() -> None:
            os.setgid(user[1])
            os.setuid(user[0])

    proc = subprocess.Popen([PGBOUNCER, str(workdir / "pgbouncer.ini")], preexec_fn=preexec,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port, proc, workdir / "pgbouncer.log")
        yield f"postgresql+psycopg://{target.username}@127.0.0.1:{port}{target.path}", workdir / "pgbouncer.log"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- concurrent backfill


def backfill_job():
    """The family's job with a Postgres resource from the environment (PSO_DATABASE_URL → PgBouncer)."""
    from dagster import AssetSelection, Definitions, EnvVar, define_asset_job

    from assets import results
    from resources.postgres import PostgresResource

    # The family's asset without its whole-table check (checked once at the end instead).
    job = define_asset_job("multiplex_backfill", selection=AssetSelection.assets(results.result).without_checks())
    defs = Definitions(assets=results.assets, jobs=[job],
                       resources={"postgres": PostgresResource(database_url=EnvVar("PSO_DATABASE_URL"))})
    return defs.resolve_job_def("multiplex_backfill")


_worker_instance = None


def _start_worker() -> None:
    """One Dagster instance (temporary, on disk: the multiprocess executor needs one) per worker process."""
    global _worker_instance
    from dagster import DagsterInstance

    _worker_instance = DagsterInstance.local_temp(tempfile.mkdtemp(prefix="pso-dagster-"))


def _run_months(key_range: tuple[str, str]) -> tuple[tuple[str, str], bool, list[str]]:
    """One run over a range of months with the multiprocess executor (in a worker process), as a
    multi-run backfill launches it."""
    from dagster import execute_job, reconstructable

    result = execute_job(
        reconstructable(backfill_job), instance=_worker_instance,
        tags={"dagster/asset_partition_range_start": key_range[0], "dagster/asset_partition_range_end": key_range[1]},
        # forkserver: each step process forks from a preloaded server instead of importing Dagster again.
        run_config={"execution": {"config": {"multiprocess": {
            "max_concurrent": 4,
            "start_method": {"forkserver": {"preload_modules": ["dagster", "assets.results"]}}}}}},
    )
    failures = [str(event.message) for event in result.all_events if event.is_failure]
    return key_range, result.success, failures


def _result_rows(url: str) -> list[tuple]:
    engine = sa.create_engine(url, connect_args={"prepare_threshold": None}, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT test_event_id, test_order_id, disease_id, result, test_result, is_deleted, created_at, "
            "created_by, updated_at, updated_by FROM result")).all()
    engine.dispose()
    return sorted(tuple(str(v) for v in r) for r in rows)


def test_a_24_month_backfill_through_pgbouncer_matches_a_direct_run(database_url, pg_admin_url, monkeypatch):
    from assets.results import backfill_results, find_missing_results
    from orchestration.synthetic import SynthContext, libpq_url
    from orchestration.synthetic import results as generator

    with psycopg.connect(libpq_url(database_url), prepare_threshold=None) as conn, conn.transaction():
        generator.generate(SynthContext(conn=conn, rng=random.Random(11), scale=0.4,
                                        now=datetime(2026, 11, 20, 12, tzinfo=UTC), today=datetime(2026, 11, 20).date()))
    # The direct run's copy of the same data (cloned before any backfill).
    direct_db = f"{urlsplit(database_url).path.lstrip('/')}_direct"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{direct_db}" TEMPLATE "{urlsplit(database_url).path.lstrip("/")}"')
    direct_url = database_url.rsplit("/", 1)[0] + f"/{direct_db}"
    try:
        engine = sa.create_engine(direct_url, connect_args={"prepare_threshold": None}, poolclass=sa.pool.NullPool)
        end = datetime(2026, 11, 1, tzinfo=UTC)
        with engine.connect() as conn:
            direct = backfill_results(conn, FIRST_MONTH, end)
        engine.dispose()
        assert direct.order_rows > 0 and direct.event_rows > 0

        with running_pgbouncer(database_url) as (bouncer_url, log):
            monkeypatch.setenv("PSO_DATABASE_URL", bouncer_url)  # inherited by the workers and their steps
            # The 24 months as six runs of four months (BackfillPolicy.multi_run(4)'s shape), all at once, each
            # run's step in its own process: more clients than the server pool of 5.
            with ProcessPoolExecutor(max_workers=6, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_start_worker) as pool:
                keys = _month_keys()
                outcomes = list(pool.map(_run_months, [(keys[i], keys[i + 3]) for i in range(0, MONTHS, 4)]))
            bouncer_log = log.read_text()
        failed = [(key, failures) for key, ok, failures in outcomes if not ok]
        assert not failed, failed
        assert len(outcomes) == MONTHS // 4
        problems = [line for line in bouncer_log.splitlines() if " ERROR " in line or " WARNING " in line]
        assert not problems, problems[:5]
        assert "registered new auto-database" in bouncer_log  # the runs really went through PgBouncer
        assert _result_rows(database_url) == _result_rows(direct_url)
        with sa.create_engine(database_url, poolclass=sa.pool.NullPool).connect() as conn:
            # Only the generator's rows outside the 24 months are left (its first and last weeks).
            missing = find_missing_results(conn)
            assert {month for _, month, _ in missing.by_month} <= {"2024-09", "2024-10", "2026-11"}
    finally:
        from resources.postgres import _engines

        for key in [k for k in _engines if k[0].endswith(f"/{direct_db}")]:
            _engines.pop(key).dispose()
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{direct_db}" WITH (FORCE)')


# --------------------------------------------------------------------------- an exhausted pool


def test_an_exhausted_pool_makes_a_run_wait_and_retry(database_url, caplog):
    from resources.postgres import PostgresResource

    with running_pgbouncer(database_url, max_client_conn=2) as (bouncer_url, _log):
        libpq = bouncer_url.replace("postgresql+psycopg://", "postgresql://", 1)
        held = [psycopg.connect(libpq, prepare_threshold=None) for _ in range(2)]  # every client slot taken
        releaser = threading.Timer(1.5, lambda: [c.close() for c in held])
        releaser.start()
        resource = PostgresResource(database_url=bouncer_url, pool_size=1)
        try:
            with caplog.at_level(logging.WARNING, logger="resources.postgres"):
                with resource.connect() as conn:
                    assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        finally:
            releaser.join()
            resource.engine.dispose()
    waits = [r.getMessage() for r in caplog.records if "no connection free" in r.getMessage()]
    assert waits, "the resource should have logged that it waits for a free connection"
    assert "retrying" in waits[0]
