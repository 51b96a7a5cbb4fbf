"""`pso seed` and `pso bench` start the embedded Postgres and S3 when nothing is configured or
running, say so, and stop only what they started (issue 17, item 7)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from orchestration.services import EmbeddedPostgres, EmbeddedS3, free_port_block
from orchestration.settings import PROJECT_ROOT

PSO = Path(sys.executable).with_name("pso")


@pytest.fixture
def embedded_env():
    """An environment with nothing configured: the embedded default, in a data folder of its own, on free ports."""
    # Not under pytest's tmp folder (see conftest: the unprivileged Postgres user must reach it).
    data_dir = Path(tempfile.mkdtemp(prefix="pso-test-cli-"))
    pg_port = free_port_block(1, start=random.randint(35000, 37000))
    s3_port = free_port_block(10, start=random.randint(37000, 39000))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PSO_", "AWS_", "DAGSTER_"))}
    env.update(PSO_DATA_DIR=str(data_dir), PSO_PG_PORT=str(pg_port), PSO_S3_PORT=str(s3_port))
    postgres, s3 = EmbeddedPostgres(data_dir, pg_port), EmbeddedS3(data_dir, s3_port)
    try:
        yield env, postgres, s3
    finally:
        s3.stop()
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def pso(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(PSO), *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def test_seed_and_bench_start_and_stop_the_embedded_services(embedded_env):
    env, postgres, s3 = embedded_env
    seed = pso("seed", "--scale", "tiny", env=env)
    assert seed.returncode == 0, seed.stdout[-3000:] + seed.stderr[-3000:]
    assert "postgres  started for `pso seed`" in seed.stdout and "s3        started for `pso seed`" in seed.stdout
    assert "postgres  stopped (started for `pso seed`)" in seed.stdout
    assert not postgres.is_running() and not s3.is_running()

    bench = pso("bench", "generator_load", "--scale", "0.01", "--no-record", env=env)
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    assert "postgres  started for `pso bench`" in bench.stdout and "COPY load rate" in bench.stdout
    assert not postgres.is_running() and not s3.is_running()

    # What was already running is left running, and the seeded data is there.
    postgres.start()
    again = pso("seed", "--if-empty", env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "postgres  started" not in again.stdout and "already has data" in again.stdout
    assert postgres.is_running()
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres dbname=pso") as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] > 0
