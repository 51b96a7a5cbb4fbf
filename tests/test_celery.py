"""Scale-out: the same assets on dagster-celery (Redis on loopback, two worker processes).

A backfill of 8 partitions of a cheap partitioned asset runs as 8 runs whose steps are celery
tasks. Each worker listens on its own queue and the runs alternate between the two queues (the
`task_default_queue` of the executor's config), so both workers must execute steps whatever order
Redis would hand a shared queue out in; the database must end up exactly as after a
single-process run of the same partitions on an identical copy of the data.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CELERY_DIR = ROOT / "deploy" / "celery"
REDIS = ("127.0.0.1", 6379)
PARTITIONS = 8
WORKERS = ("pso-w1", "pso-w2")
# Fixed so that both copies of the synthetic data are identical.
SEED_NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)

# Cheap, self-contained daily assets first (aggregations over source tables).
PREFERRED_ASSETS = ("ft_notification_status", "letter_print_volumes", "notification_history")


def redis_reachable() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def chosen_asset(defs):
    """The asset the scale-out test backfills: a daily-partitioned materializable asset, preferably
    one that only reads source tables. Deterministic, so workers resolve the same job."""
    from dagster import TimeWindowPartitionsDefinition

    graph = defs.resolve_asset_graph()
    candidates = [node for node in graph.asset_nodes
                  if node.is_materializable and isinstance(node.partitions_def, TimeWindowPartitionsDefinition)
                  and node.partitions_def.cron_schedule.split()[2:] == ["*", "*", "*"]]

    def rank(node):
        name = node.key.to_user_string()
        upstream = [k for k in node.parent_keys if graph.get(k).is_materializable]
        preferred = PREFERRED_ASSETS.index(name) if name in PREFERRED_ASSETS else len(PREFERRED_ASSETS)
        return (preferred, len(upstream), name)

    return min(candidates, key=rank) if candidates else None


def celery_scale_out_job():
    """The project's chosen asset as a job on the celery executor (loaded by the workers too)."""
    from dagster import Definitions, define_asset_job
    from dagster_celery import celery_executor

    from orchestration.definitions import defs

    node = chosen_asset(defs)
    job = define_asset_job("celery_scale_out", selection=[node.key], executor_def=celery_executor)
    return Definitions.merge(defs, Definitions(jobs=[job])).resolve_job_def("celery_scale_out")


def database_digest(url: str) -> dict[str, str]:
    """Per public table: a digest of its rows, leaving out values a run stamps (timestamps, generated ids)."""
    digests = {}
    with psycopg.connect(url) as conn:
        tables = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                              "AND table_type = 'BASE TABLE' ORDER BY 1").fetchall()
        for (table,) in tables:
            columns = [name for name, dtype, default, identity in conn.execute(
                "SELECT column_name, data_type, column_default, is_identity FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position", (table,))
                if not dtype.startswith("timestamp") and identity != "YES"
                and "gen_random_uuid" not in (default or "") and "nextval" not in (default or "")]
            if not columns:
                continue
            select = ", ".join(f'"{c}"::text' for c in columns)
            rows = conn.execute(f'SELECT {select} FROM "{table}" ORDER BY {", ".join(f"{i}" for i in range(1, len(columns) + 1))}').fetchall()
            digests[table] = hashlib.sha256(repr(rows).encode()).hexdigest() + f":{len(rows)}"
    return digests


def libpq(sqlalchemy_url: str) -> str:
    return re.sub(r"^postgresql\+\w+://", "postgresql://", sqlalchemy_url)


@pytest.fixture
def seeded_pair(pg_admin_url, template_database, s3_env, monkeypatch):
    """Two identical seeded databases (A for the single-process run, B for celery) + Dagster storage."""
    from orchestration import settings as settings_module
    from orchestration.settings import load_settings
    from orchestration.synthetic import seed_all

    base = pg_admin_url.rsplit("/", 1)[0]
    suffix = uuid.uuid4().hex[:8]
    names = {"a": f"pso_celery_a_{suffix}", "b": f"pso_celery_b_{suffix}", "dagster": f"pso_celery_dagster_{suffix}"}
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{names["a"]}" TEMPLATE "{template_database}"')
        admin.execute(f'CREATE DATABASE "{names["dagster"]}"')
    url_a = f"{base}/{names['a']}".replace("postgresql://", "postgresql+psycopg://", 1)
    monkeypatch.setenv("PSO_DATABASE_URL", url_a)
    settings_module.get_settings.cache_clear()
    settings = load_settings()
    s3 = settings.s3_client()
    settings.ensure_buckets(s3)
    seed_all(url_a, scale="tiny", s3=s3, settings=settings, now=SEED_NOW, echo=lambda *_: None)
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{names["b"]}" TEMPLATE "{names["a"]}"')
    urls = {
        "a": url_a,
        "b": f"{base}/{names['b']}".replace("postgresql://", "postgresql+psycopg://", 1),
        "dagster": f"{base}/{names['dagster']}".replace("postgresql://", "postgresql+psycopg2://", 1),
    }
    yield urls
    from resources.postgres import _engines

    for key, engine in list(_engines.items()):
        if any(key[0].endswith(f"/{n}") for n in names.values()):
            engine.dispose()
            _engines.pop(key, None)
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_worker(name: str, env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
         "-y", str(CELERY_DIR / "celery_config.yaml"), "-n", name, "-q", name, "--", "--concurrency=1",
         "--without-gossip", "--without-mingle"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_workers(logs: list[Path], processes: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(" ready." in p.read_text() for p in logs):
            return
        for process, log in zip(processes, logs):
            if process.poll() is not None:
                pytest.fail(f"celery worker exited early:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    pytest.fail("celery workers not ready:\n" + "\n".join(p.read_text()[-2000:] for p in logs))


@pytest.mark.timeout(300)  # a lost celery task would otherwise leave the orchestrator polling
@pytest.mark.skipif(not redis_reachable(), reason="no Redis answering on 127.0.0.1:6379 (the celery broker)")
def test_backfill_on_two_celery_workers_equals_single_process(seeded_pair, s3_env, tmp_path, monkeypatch):
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (test extras)")
    from dagster import DagsterInstance, execute_job, materialize, reconstructable

    from orchestration.definitions import build_resources, defs
    from orchestration.instance import apply_pool_limits

    node = chosen_asset(defs)
    if node is None:
        pytest.skip("no daily-partitioned asset is defined yet")
    keys = node.partitions_def.get_partition_keys(current_time=SEED_NOW)[-PARTITIONS:]
    assert len(keys) == PARTITIONS
    before = database_digest(libpq(seeded_pair["a"]))

    # Single process, database A.
    monkeypatch.setenv("PSO_DATABASE_URL", seeded_pair["a"])
    with DagsterInstance.ephemeral() as instance:
        for key in keys:
            result = materialize([*defs.assets, *(defs.asset_checks or [])], selection=[node.key], partition_key=key,
                                 instance=instance, resources=build_resources())
            assert result.success

    # Celery, database B: a real instance (Postgres storage) shared by the test and both workers.
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(CELERY_DIR / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("PSO_DAGSTER_STORAGE_URL", seeded_pair["dagster"])
    monkeypatch.setenv("PSO_DATABASE_URL", seeded_pair["b"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}  # the job is defined in this module
    celery_config = yaml.safe_load((CELERY_DIR / "celery_config.yaml").read_text())["execution"]["config"]

    from dagster_celery.make_app import make_app

    app = make_app({"broker": celery_config["broker"], "backend": celery_config["backend"]})
    app.control.purge()  # tasks left by an interrupted earlier run would confuse the count

    # The storage's tables are created by the first process that opens an empty storage database; two
    # workers starting at once would both try (`type "secondary_indexes" already exists`), so create them
    # here first, as `dagster instance migrate` does in deploy/celery/README.md.
    with DagsterInstance.get() as instance:
        instance.upgrade()

    logs = [tmp_path / f"{name}.log" for name in WORKERS]
    workers = [start_worker(name, env, log) for name, log in zip(WORKERS, logs)]
    try:
        wait_for_workers(logs, workers)
        with DagsterInstance.get() as instance:
            apply_pool_limits(instance)
            job = reconstructable(celery_scale_out_job)

            def run_partition(key: str, queue: str) -> bool:
                config = {**celery_config,
                          "config_source": {**celery_config.get("config_source", {}), "task_default_queue": queue}}
                with execute_job(job, instance=instance, run_config={"execution": {"config": config}},
                                 tags={"dagster/partition": key}) as result:
                    return result.success

            # One run per partition, one after the other, alternating between the workers' queues:
            # on one shared queue a worker that is quicker to ask can take every task.
            outcomes = [run_partition(key, WORKERS[i % len(WORKERS)]) for i, key in enumerate(keys)]
    finally:
        for worker in workers:
            stop_worker(worker)

    assert outcomes == [True] * PARTITIONS
    received = {name: log.read_text().count("Task execute_plan[") for name, log in zip(WORKERS, logs)}
    succeeded = {name: len(re.findall(r"Task execute_plan\[[^\]]+\] succeeded", log.read_text()))
                 for name, log in zip(WORKERS, logs)}
    print(f"celery split of {PARTITIONS} partitions of {node.key.to_user_string()}: {succeeded}")
    assert sum(succeeded.values()) >= PARTITIONS
    assert all(count >= PARTITIONS // len(WORKERS) for count in succeeded.values()), \
        f"a worker ran fewer steps than the runs sent to its queue: {received}"

    after_a, after_b = database_digest(libpq(seeded_pair["a"])), database_digest(libpq(seeded_pair["b"]))
    assert after_b == after_a
    assert after_a != before, "the backfill wrote nothing: the comparison would prove nothing"
