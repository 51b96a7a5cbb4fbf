"""`pso` commands that change data do it as a Dagster run of their job, so the UI shows the run with its
partition, tags and materializations, like any scheduled one.

With a daemon serving the instance (`pso run`, or any deployment sharing its storage), the run is
submitted to the run queue, where the pools and run limits apply, and the command waits for its end.
With none, the run executes in this process: still a run of the job on the instance, recorded with its
events, but no pool slot is claimed (nothing else is dequeuing runs then).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from orchestration.cli.environment import dagster_env
from orchestration.settings import PROJECT_ROOT, get_settings

PARTITION_TAG = "dagster/partition"
CLI_TAG = "pso/cli"
DAEMON_FRESH_SECONDS = 60
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@dataclass
class JobRun:
    run_id: str
    where: str  # "queue" (the daemon ran it) or "this process"
    success: bool
    # Per materialized asset key: its metadata as plain values.
    materializations: dict[str, dict] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def open_instance() -> DagsterInstance:
    """The project's instance (embedded or configured), with this process's environment exported for it;
    `with open_instance() as instance:` disposes of it at the end."""
    return DagsterInstance.from_config(dagster_env(get_settings())["DAGSTER_HOME"])


def daemon_is_running(instance: DagsterInstance) -> bool:
    beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp < DAEMON_FRESH_SECONDS


def run_job(instance: DagsterInstance, job_name: str, partition_key: str | None = None,
            run_config: dict | None = None, command: str = "") -> JobRun:
    """Run `job_name` (for one partition) as a Dagster run and return what it did."""
    tags = {CLI_TAG: command or job_name, **({PARTITION_TAG: partition_key} if partition_key else {})}
    if daemon_is_running(instance):
        run_id = _submit(instance, job_name, tags, run_config or {})
        print(f"dagster   run {run_id} of {job_name} submitted to the run queue; waiting for it", flush=True)
        _wait(instance, run_id)
        where = "queue"
    else:
        from orchestration.definitions import build_resources, defs

        print(f"dagster   no daemon is running: run of {job_name} executes in this process", flush=True)
        # Resources from the settings as they are now (the endpoints exported), not as at import time.
        result = defs.resolve_job_def(job_name).execute_in_process(
            run_config=run_config, instance=instance, partition_key=partition_key, tags=tags,
            resources=build_resources(), raise_on_error=False)
        run_id, where = result.run_id, "this process"
    return _outcome(instance, run_id, where)


def _submit(instance: DagsterInstance, job_name: str, tags: dict, run_config: dict) -> str:
    run_id = str(uuid.uuid4())
    env = {**os.environ, "DAGSTER_HOME": instance.root_directory}
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    subprocess.run([dagster, "job", "launch", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-j", job_name,
                    "--run-id", run_id, "--tags", json.dumps(tags), "--config-json", json.dumps(run_config)],
                   check=True, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env)
    return run_id


def _wait(instance: DagsterInstance, run_id: str, poll_seconds: float = 1.0) -> None:
    status = None
    while True:
        run = instance.get_run_by_id(run_id)
        if run.status != status:
            status = run.status
            print(f"dagster   run {run_id}: {status.value}", flush=True)
        if status in FINISHED:
            return
        time.sleep(poll_seconds)


def _outcome(instance: DagsterInstance, run_id: str, where: str) -> JobRun:
    run = instance.get_run_by_id(run_id)
    outcome = JobRun(run_id=run_id, where=where, success=run.status == DagsterRunStatus.SUCCESS)
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        materialization = record.event_log_entry.dagster_event.step_materialization_data.materialization
        outcome.materializations[materialization.asset_key.to_user_string()] = {
            key: value.value for key, value in materialization.metadata.items()}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        data = record.event_log_entry.dagster_event.step_failure_data
        described = data.user_failure_data.description if data.user_failure_data else None
        outcome.failures.append(described or (data.error.message.strip() if data.error else "step failed"))
    return outcome
