"""The whole product running as a user runs it, for benchmarks that need the daemon.

`LiveStack` starts the embedded Postgres and S3 on ports and a data folder of its own, loads the
synthetic data at a scale, starts `pso run` (the Dagster webserver and daemon) and talks to it as a
user would: GraphQL for runs, SQL for the service's tables. On exit it stops everything it started
and removes its folder. Nothing here uses the developer's own `.pso/` or ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

from orchestration.services import free_port_block
from orchestration.settings import PROJECT_ROOT

# Variables that would point the stack at the developer's own servers instead of its own.
_FOREIGN = ("PSO_DATABASE_URL", "PSO_DAGSTER_STORAGE_URL", "PSO_S3_ENDPOINT_URL", "PSO_S3_ACCESS_KEY_ID",
            "PSO_S3_SECRET_ACCESS_KEY", "PSO_S3_USE_AWS", "PSO_DATA_DIR", "PSO_PG_PORT", "PSO_S3_PORT",
            "PSO_DAGSTER_PORT", "DAGSTER_HOME", "PSO_NOW")


class LiveStack:
    """`with LiveStack(scale=1, env={...}) as stack:` — the product, up and serving."""

    def __init__(self, scale: float, env: dict[str, str] | None = None, ready_timeout: float = 300):
        self.scale, self.extra_env, self.ready_timeout = scale, env or {}, ready_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="pso-live-"))
        # One block: Postgres, Dagster's webserver, then 10 ports for the S3 server.
        base = free_port_block(12, start=41000, end=49000)
        self.pg_port, self.dagster_port, self.s3_port = base, base + 1, base + 2
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
        env.update(PSO_DATA_DIR=str(self.dir), PSO_PG_PORT=str(self.pg_port), PSO_S3_PORT=str(self.s3_port),
                   PSO_DAGSTER_PORT=str(self.dagster_port), **self.extra_env)
        return env

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/pso"

    def pso(self, *args: str, timeout: float = 1800) -> None:
        pso = Path(sys.executable).with_name("pso")
        subprocess.run([str(pso), *args], env=self.env, cwd=PROJECT_ROOT, check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL)

    def __enter__(self) -> LiveStack:
        try:
            self.pso("services", "start")
            self.pso("seed", "--scale", f"{self.scale:g}")
            log = open(self.dir / "pso-run.log", "wb")
            self.process = subprocess.Popen([str(Path(sys.executable).with_name("pso")), "run", "--no-seed",
                                             "--keep-services"], env=self.env, cwd=PROJECT_ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_for_webserver()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        try:
            self.pso("services", "stop", timeout=120)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _wait_for_webserver(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pso run exited early; see {self.dir / 'pso-run.log'}")
            try:
                if self.graphql("{ version }").get("version"):
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError("the Dagster webserver did not answer in time")

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.dagster_port}/graphql", method="POST",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        if body.get("errors"):
            raise ValueError(body["errors"])
        return body["data"]

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url, autocommit=True)

    def runs(self, job_name: str | None = None, tags: dict[str, str] | None = None, limit: int = 200) -> list[dict]:
        """Runs, newest first, with their times (epoch seconds) and status."""
        run_filter: dict = {}
        if job_name:
            run_filter["pipelineName"] = job_name
        if tags:
            run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        data = self.graphql("""
            query Runs($filter: RunsFilter, $limit: Int) {
              runsOrError(filter: $filter, limit: $limit) {
                ... on Runs { results { runId jobName status creationTime startTime endTime
                                        tags { key value } } }
              }
            }""", {"filter": run_filter, "limit": limit})
        runs = data["runsOrError"]["results"]
        for run in runs:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return runs

    def wait_until_idle(self, timeout: float = 900, job_name: str | None = None) -> None:
        """Until no run is queued or running (e.g. the first full refreshes after start-up)."""
        deadline = time.monotonic() + timeout
        busy = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}
        while time.monotonic() < deadline:
            if not any(r["status"] in busy for r in self.runs(job_name=job_name, limit=50)):
                return
            time.sleep(1)
        raise TimeoutError("runs still in flight")
