"""`pso letters collate` and `pso prune` change data as Dagster runs of their family's job: in the
command's process when no daemon serves the instance, through the run queue when one does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance
from test_letters import AFTER_DEADLINE, add_letter, add_service, london, put_pdf
from test_pruning_dagster import _replica

from orchestration.cli import main
from orchestration.cli.runs import daemon_is_running, open_instance
from orchestration.settings import PROJECT_ROOT, get_settings


def recorded_runs(instance: DagsterInstance) -> list[tuple]:
    return [(r.job_name, r.tags.get("dagster/partition"), r.tags.get("pso/cli"), r.status.value)
            for r in reversed(instance.get_runs())]


def test_letters_collate_is_a_run_of_the_collation_job(engine, settings, s3, dagster_storage, monkeypatch, capsys):
    monkeypatch.setenv("PSO_NOW", AFTER_DEADLINE.isoformat())
    with engine.connect() as conn:
        service = add_service(conn)
        for i in range(3):
            put_pdf(s3, settings, add_letter(conn, service, london(2026, 11, 20, 11, i)))

    assert main(["letters", "collate", "--print-date", "2026-11-20"]) == 0
    out = capsys.readouterr().out
    assert "no daemon is running" in out and "3 letters selected, 1 batch(es), 3 now sending" in out
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT notification_status, count(*) FROM notifications GROUP BY 1")).all()
    assert statuses == [("sending", 3)]

    instance = DagsterInstance.from_config(str(get_settings().dagster_home))
    try:
        assert recorded_runs(instance) == [("letter_collation", "2026-11-20", "letters collate", "SUCCESS")]
        event = instance.get_latest_materialization_event(AssetKey("letter_batches"))
        assert event.dagster_event.partition == "2026-11-20"
        assert event.asset_materialization.metadata["letters_sending"].value == 3
    finally:
        instance.dispose()


@pytest.fixture
def daemon(database_url, s3_env, dagster_storage):
    """A real `dagster-daemon` on the test instance (what `pso run` starts), stopped after the test."""
    instance = open_instance()  # writes DAGSTER_HOME/dagster.yaml and exports the endpoints
    env = {**os.environ, "DAGSTER_HOME": instance.root_directory}
    process = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
                                str(PROJECT_ROOT / "workspace.yaml")], env=env, cwd=PROJECT_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not daemon_is_running(instance):
            assert process.poll() is None and time.monotonic() < deadline, "the daemon did not start"
            time.sleep(1)
        yield instance
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        instance.dispose()


def test_prune_goes_through_the_run_queue_when_a_daemon_runs(engine, daemon, capsys):
    _replica(engine, "north", outside_patients=2)
    assert main(["prune", "north"]) == 0
    out = capsys.readouterr().out
    assert "submitted to the run queue" in out and "sync_group deleted 4 rows" in out
    run = daemon.get_runs()[0]
    assert (run.job_name, run.tags["dagster/partition"], run.status.value) == (
        "replica_sync_group_prune_job", "north", "SUCCESS")
    # Dequeued under the job's pool: the run is counted against `replica_prune`.
    assert run.run_op_concurrency is not None and "replica_prune" in run.run_op_concurrency.root_key_counts
