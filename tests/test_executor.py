"""The project's executor (issue 17 item 2): a run's steps — its materialization and its checks — run in
the run's own process by default; one process per step only when the run config asks for `multiprocess`.
Judged by the process ids Dagster records on each step's events, never by time."""

from __future__ import annotations

from dagster import (
    AssetCheckResult,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    asset,
    asset_check,
    define_asset_job,
    execute_job,
    build_reconstructable_job,
)

from orchestration.definitions import defs, step_executor


@asset
def tiny() -> int:
    return 1


@asset_check(asset=tiny)
def tiny_is_one() -> AssetCheckResult:
    return AssetCheckResult(passed=True)


@asset_check(asset=tiny)
def tiny_is_positive() -> AssetCheckResult:
    return AssetCheckResult(passed=True)


def tiny_job():
    job = define_asset_job("tiny_job", selection=[tiny])
    return Definitions(assets=[tiny], asset_checks=[tiny_is_one, tiny_is_positive], jobs=[job],
                       executor=step_executor).resolve_job_def("tiny_job")


# Step processes rebuild the job by importing this module from the project root.
TINY_JOB = build_reconstructable_job("tests.test_executor", "tiny_job")


def _step_pids(run_config: dict) -> tuple[set[int], set[int], set[str]]:
    """(pid of the run, pids of its step starts, step keys) of one run on a persistent temporary instance."""
    with DagsterInstance.local_temp() as instance:
        result = execute_job(TINY_JOB, instance=instance, run_config=run_config)
        assert result.success
        records = instance.all_logs(result.run_id)
    events = [r.dagster_event for r in records if r.dagster_event]
    run_pids = {e.pid for e in events if e.event_type == DagsterEventType.RUN_START}
    step_starts = [e for e in events if e.event_type == DagsterEventType.STEP_START]
    return run_pids, {e.pid for e in step_starts}, {e.step_key for e in step_starts}


def test_every_project_job_uses_the_project_executor():
    repository = defs.get_repository_def()
    assert {job.name: job.executor_def.name for job in repository.get_all_jobs()} == {
        job.name: "in_process_or_multiprocess" for job in repository.get_all_jobs()}


def test_a_run_and_its_checks_share_one_process_by_default():
    run_pids, step_pids, steps = _step_pids({})
    assert len(steps) == 3  # the materialization and both checks, as steps of their own
    assert step_pids == run_pids and len(run_pids) == 1


def test_multiprocess_on_request_runs_each_step_in_its_own_process():
    run_pids, step_pids, steps = _step_pids({"execution": {"config": {"multiprocess": {"max_concurrent": 1}}}})
    assert len(steps) == 3
    assert len(step_pids) == 3 and not step_pids & run_pids
