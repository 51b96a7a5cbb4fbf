"""What a run costs beyond its own work, with the live daemon (issue 17 item 2).

The product is started as a user starts it (`LiveStack`: embedded Postgres and S3 on ports of their
own, `pso run`), its first runs are let finish, and then each family's job is launched through GraphQL
(`launchRun`, as the UI does) for one partition the stack has, and waited for. Per run, from the launch
and the run's event log:

- wall: from the launch request to the run's end (queue, dequeue, run worker start, steps, teardown);
- work: the time some step was computing, i.e. the union of the steps' STEP_START → STEP_SUCCESS
  intervals (the materialization and its checks; process start-up and code loading happen before a
  step's STEP_START and are not work);
- overhead: wall − work; and where it goes: queued (launch → RUN_DEQUEUED: the daemon's dequeue
  interval), run worker start (→ RUN_START: a process starts and imports the code location) and,
  inside the run, the time no step was computing (step processes starting, between steps); the rest
  is the run's teardown.

Each job runs REPEATS times in each executor configuration, alternating the order, in the same stack:
the baseline, Dagster's multiprocess executor (one process per step: run config
`execution: {config: {multiprocess: {}}}`), and the project's default (no execution config: the
in-process executor of `orchestration/definitions.py`). Figures are medians. Target: overhead ≤ 5 s.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Callable
from zoneinfo import ZoneInfo

from bench.live_stack import LiveStack
from bench.runner import BenchDatabase, BenchReport

OWN_STACK = True  # bench.runner: no scratch database
REPEATS = 3
RUN_TIMEOUT = 900
PARTITION_WAIT = 240  # seconds to wait for a registry sensor's first partitions
TARGET_OVERHEAD = 5.0

# (label, execution config or None for the project's default)
MODES = [("multiprocess", {"multiprocess": {}}), ("in-process", None)]
BASELINE, DEFAULT = MODES[0][0], MODES[1][0]


@dataclass
class Case:
    """One family's job: which asset's partitions to launch, how to pick one, its op config."""

    job: str
    asset: str
    pick: Callable[[LiveStack, list[str]], str | None]
    ops: dict = field(default_factory=dict)


@dataclass
class RunTimes:
    wall: float
    work: float
    queued: float  # launch → RUN_DEQUEUED (the daemon's dequeue interval, pools, run slots)
    worker_start: float  # RUN_DEQUEUED → RUN_START (a run worker process starts and loads the code)
    idle_in_run: float  # RUN_START → RUN_SUCCESS with no step computing
    steps: int

    @property
    def overhead(self) -> float:
        return self.wall - self.work


# ------------------------------------------------------------------ picking a partition the stack has

def _london_today() -> date:
    return datetime.now(ZoneInfo("Europe/London")).date()


def _first(keys: list[str], preferred: list[str]) -> str | None:
    return next((k for k in preferred if k in keys), keys[0] if keys else None)


def _programme(stack: LiveStack, keys: list[str]) -> str | None:
    return _first(keys, ["flu", "hpv"])


def _registered(stack: LiveStack, keys: list[str]) -> str | None:
    return keys[0] if keys else None


def _archive_day(stack: LiveStack, keys: list[str]) -> str | None:
    """The London day, past a week ago, with the most notifications."""
    with stack.connect() as conn:
        row = conn.execute("""SELECT (created_at AT TIME ZONE 'Europe/London')::date AS d FROM notifications
                              WHERE created_at < now() - interval '8 days' GROUP BY 1 ORDER BY count(*) DESC, 1
                              LIMIT 1""").fetchone()
    day = row[0] if row else _london_today() - timedelta(days=10)
    return day.isoformat()


def _print_day(stack: LiveStack, keys: list[str]) -> str | None:
    return (_london_today() - timedelta(days=1)).isoformat()  # today's is collatable only after 17:30


def _month(stack: LiveStack, keys: list[str]) -> str | None:
    """The month of the most legacy test orders."""
    with stack.connect() as conn:
        row = conn.execute("SELECT date_trunc('month', created_at)::date FROM test_order GROUP BY 1 "
                           "ORDER BY count(*) DESC, 1 LIMIT 1").fetchone()
    return row[0].replace(day=1).isoformat() if row else None


CASES = [
    Case("status_refresh", "patient_consent_statuses", _programme,
         {"status_tables": {"config": {"scope": "all"}}}),
    Case("facility_stats_aot", "facility_stats_dialysis", _registered,
         {"facility_stats_dialysis": {"config": {"force": True, "reason": "manual"}},
          "facility_stats_demographics": {"config": {"force": True, "reason": "manual"}}}),
    Case("notification_archive_job", "notification_history", _archive_day),
    Case("ft_notification_status_job", "ft_notification_status", _archive_day),
    Case("letter_collation", "letter_batches", _print_day),
    Case("replica_sync_group_prune_job", "replica_sync_group_prune", _registered),
    Case("replica_maintenance_job", "replica_maintenance", _registered,
         {"replica_maintenance": {"config": {"force": True}}}),
    Case("multiplex_backfill", "result", _month),
]


# ------------------------------------------------------------------ GraphQL

def _repository(stack: LiveStack) -> dict:
    data = stack.graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    node = data["repositoriesOrError"]["nodes"][0]
    return {"repositoryName": node["name"], "repositoryLocationName": node["location"]["name"]}


def _partition_keys(stack: LiveStack, selector: dict) -> dict[str, list[str]]:
    data = stack.graphql("""query($selector: RepositorySelector!) { repositoryOrError(repositorySelector: $selector) {
        ... on Repository { assetNodes { assetKey { path } partitionKeys } } } }""", {"selector": selector})
    return {"/".join(a["assetKey"]["path"]): a["partitionKeys"] or [] for a in data["repositoryOrError"]["assetNodes"]}


def _wait_for_partitions(stack: LiveStack, selector: dict, assets: list[str]) -> dict[str, list[str]]:
    """Partition keys by asset, once every dynamic set the cases need has some (the registry sensors)."""
    deadline = time.monotonic() + PARTITION_WAIT
    while True:
        keys = _partition_keys(stack, selector)
        if all(keys.get(a) for a in assets) or time.monotonic() > deadline:
            return keys
        time.sleep(2)


def _launch(stack: LiveStack, selector: dict, job: str, partition: str, ops: dict, execution: dict | None) -> str:
    run_config: dict = {"ops": ops} if ops else {}
    if execution is not None:
        run_config["execution"] = {"config": execution}
    result = stack.graphql("""mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
        ... on RunConfigValidationInvalid { errors { message } } } }""", {"params": {
        "selector": {**selector, "jobName": job},
        "runConfigData": run_config,
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition},
                                       {"key": "pso/trigger", "value": "bench"}]}}})
    launched = result["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"could not launch {job}: {launched}")
    return launched["run"]["runId"]


def _wait_for_end(stack: LiveStack, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        run = stack.graphql("""query($id: ID!) { runOrError(runId: $id) { ... on Run {
            status startTime endTime } } }""", {"id": run_id})["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        time.sleep(0.25)
    raise TimeoutError(f"run {run_id} did not end in {RUN_TIMEOUT} s")


def _events(stack: LiveStack, run_id: str) -> list[tuple[str, str | None, float]]:
    """(event type, step key, epoch seconds) of the run's events."""
    events, cursor = [], None
    while True:
        data = stack.graphql("""query($id: ID!, $cursor: String) { logsForRun(runId: $id, afterCursor: $cursor,
            limit: 1000) { ... on EventConnection { cursor hasMore events { ... on MessageEvent {
            eventType stepKey timestamp } } } } }""", {"id": run_id, "cursor": cursor})["logsForRun"]
        events += [(e["eventType"], e["stepKey"], int(e["timestamp"]) / 1000) for e in data["events"] if e]
        cursor = data["cursor"]
        if not data["hasMore"]:
            return events


# ------------------------------------------------------------------ measuring

def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _times(launched: float, run: dict, events: list[tuple[str, str | None, float]]) -> RunTimes:
    starts: dict[str, float] = {}
    intervals = []
    for kind, step, at in events:
        if kind == "STEP_START":
            starts[step] = at
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and step in starts:
            intervals.append((starts.pop(step), at))
    run_start = next(at for kind, _, at in events if kind == "RUN_START")
    dequeued = next((at for kind, _, at in events if kind in ("RUN_DEQUEUED", "RUN_STARTING")), run_start)
    run_end = next((at for kind, _, at in events if kind in ("RUN_SUCCESS", "RUN_FAILURE")), run["endTime"])
    work = _union(intervals)
    return RunTimes(wall=run["endTime"] - launched, work=work, queued=dequeued - launched,
                    worker_start=run_start - dequeued,
                    idle_in_run=(run_end - run_start) - work, steps=len(intervals))


def _measure_one(stack: LiveStack, selector: dict, case: Case, partition: str, execution: dict | None) -> RunTimes | str:
    stack.wait_until_idle()  # a sensor's run holding the job's pool would count as queue time
    launched = time.time()
    run_id = _launch(stack, selector, case.job, partition, case.ops, execution)
    run = _wait_for_end(stack, run_id)
    if run["status"] != "SUCCESS":
        return f"{run['status']} (run {run_id})"
    return _times(launched, run, _events(stack, run_id))


def _report_case(report: BenchReport, case: Case, partition: str, results: dict[str, list[RunTimes]],
                 failures: dict[str, list[str]]) -> None:
    for mode, _ in MODES:
        runs = results[mode]
        prefix = f"{case.job} [{mode}]"
        note = f"partition {partition}; {len(runs)} runs" + (f"; failed: {', '.join(failures[mode])}"
                                                             if failures[mode] else "")
        if not runs:
            report.add(f"{prefix}: runs", 0, "runs", note)
            continue
        median = {k: statistics.median(getattr(r, k) for r in runs)
                  for k in ("wall", "work", "overhead", "queued", "worker_start", "idle_in_run")}
        report.add(f"{prefix}: wall", median["wall"], "s", note)
        report.add(f"{prefix}: work", median["work"], "s", f"{runs[0].steps} steps")
        target = f"target ≤ {TARGET_OVERHEAD:g} s" if mode == DEFAULT else ""
        report.add(f"{prefix}: overhead", median["overhead"], "s", target)
        report.add(f"{prefix}:   queued", median["queued"], "s", "launch → dequeued")
        report.add(f"{prefix}:   run worker start", median["worker_start"], "s", "dequeued → RUN_START")
        report.add(f"{prefix}:   in run, no step computing", median["idle_in_run"], "s",
                   "RUN_START → RUN_SUCCESS less work")
    if results[BASELINE] and results[DEFAULT]:
        report.ratio(f"{case.job}: overhead {BASELINE} / {DEFAULT}", f"{case.job} [{BASELINE}]: overhead",
                     f"{case.job} [{DEFAULT}]: overhead", "higher is better")
        report.ratio(f"{case.job}: wall {BASELINE} / {DEFAULT}", f"{case.job} [{BASELINE}]: wall",
                     f"{case.job} [{DEFAULT}]: wall", "higher is better")


def _measure_case(stack: LiveStack, selector: dict, case: Case, partition: str | None, report: BenchReport) -> None:
    if partition is None:
        report.add(f"{case.job}: runs", 0, "runs", f"no {case.asset} partition on the stack")
        return
    results: dict[str, list[RunTimes]] = {mode: [] for mode, _ in MODES}
    failures: dict[str, list[str]] = {mode: [] for mode, _ in MODES}
    for repeat in range(REPEATS):
        for mode, execution in (MODES if repeat % 2 == 0 else MODES[::-1]):
            outcome = _measure_one(stack, {**selector}, case, partition, execution)
            if isinstance(outcome, str):
                failures[mode].append(outcome)
                print(f"{case.job} [{mode}] {partition}: {outcome}", flush=True)
            else:
                results[mode].append(outcome)
                print(f"{case.job} [{mode}] {partition}: wall {outcome.wall:.1f} s, work {outcome.work:.1f} s, "
                      f"overhead {outcome.overhead:.1f} s ({outcome.steps} steps)", flush=True)
    _report_case(report, case, partition, results, failures)


def run(db: BenchDatabase | None, scale: float) -> BenchReport:
    del db  # the stack has its own database
    report = BenchReport("run_overhead", scale)
    with LiveStack(scale) as stack:
        selector = _repository(stack)
        keys = _wait_for_partitions(stack, selector, ["patient_consent_statuses", "facility_stats_dialysis",
                                                      "replica_sync_group_prune"])
        stack.wait_until_idle()  # the first refreshes and registry fills
        # Chosen before any run changes the data (the archive moves the day it picks).
        partitions = {case.job: case.pick(stack, keys.get(case.asset, [])) for case in CASES}
        for case in CASES:
            _measure_case(stack, selector, case, partitions[case.job], report)
    default = [f for f in report.figures if f.name.endswith(f"[{DEFAULT}]: overhead")]
    if default:
        worst = max(default, key=lambda f: f.value)
        report.add(f"worst {DEFAULT} overhead ({worst.name.split(' [')[0]})", worst.value, "s",
                   f"target ≤ {TARGET_OVERHEAD:g} s")
    return report
