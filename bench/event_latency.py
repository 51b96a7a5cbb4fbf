"""From a patient event's commit to its changed status row, with the live daemon (issue 17 item 3).

For each configuration the product is started as a user starts it (`LiveStack`: embedded Postgres
and S3 on ports of their own, `pso run`), the first full refreshes are let finish, and then:

1. idle load: transactions per second on the service database with nothing to do (the sensors'
   polling), over IDLE_SECONDS;
2. events: EVENTS patient events — consents, triages, vaccination records, attendances — spread
   over the programmes, committed one every EVENT_GAP seconds; each is timed from its commit to
   the first change of any of that patient's status rows (polled every POLL seconds);
3. the same while a full refresh of every programme is running.

The configurations: the baseline (the request sensor as it was: every 30 s, one run per batch)
and the project's default, measured in the same run. For runs, where the seconds go: sensor wait
(commit → run created), launch (created → started), and in the run until the row changed.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass, field

from bench.live_stack import LiveStack
from bench.runner import BenchDatabase, BenchReport

OWN_STACK = True  # bench.runner: no scratch database
EVENTS = 24
EVENT_GAP = 1.5  # seconds between commits
POLL = 0.2
IDLE_SECONDS = 20
FULL_REFRESHES = 6  # queued at once for the "during a full refresh" phase
EVENT_TIMEOUT = 180
KINDS = ("consent", "triage", "vaccination", "attendance")

# (label, environment of the stack)
CONFIGURATIONS = [
    ("baseline: runs, 30 s sensor", {"PSO_STATUS_EVENTS": "runs", "PSO_STATUS_EVENTS_INTERVAL": "30"}),
    ("default", {}),
]

STATUS_ROWS_SQL = """
    SELECT 'c' || status || ':' || programme_id FROM patient_consent_statuses WHERE patient_id = %(p)s
    UNION ALL SELECT 't' || status || ':' || programme_id FROM patient_triage_statuses WHERE patient_id = %(p)s
    UNION ALL SELECT 'v' || status || ':' || programme_id FROM patient_vaccination_statuses WHERE patient_id = %(p)s
    UNION ALL SELECT 's' || s.status || ':' || s.programme_id || ':' || s.patient_session_id
      FROM patient_session_session_statuses s JOIN patient_sessions ps ON ps.id = s.patient_session_id
      WHERE ps.patient_id = %(p)s
    UNION ALL SELECT 'r' || r.status || ':' || r.patient_session_id
      FROM patient_session_registration_statuses r JOIN patient_sessions ps ON ps.id = r.patient_session_id
      WHERE ps.patient_id = %(p)s
"""


@dataclass
class Event:
    kind: str
    programme: str
    patient_id: int
    before: frozenset
    committed: float = 0.0  # epoch seconds
    seen: float | None = None


@dataclass
class Phase:
    events: list[Event] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return sorted(e.seen - e.committed for e in self.events if e.seen is not None)


def _candidates(conn, kind: str) -> list[tuple[str, int]]:
    """(programme, patient) pairs where the event surely changes a status row."""
    sql = {
        # No consent yet and not vaccinated: a refusal makes the consent status `refused`.
        "consent": """SELECT p.type, c.patient_id FROM patient_consent_statuses c JOIN programmes p ON p.id = c.programme_id
                      JOIN patient_vaccination_statuses v USING (patient_id, programme_id)
                      WHERE c.status = 0 AND v.status = 0""",
        # Triage required: a nurse's "do not vaccinate" changes it.
        "triage": """SELECT p.type, t.patient_id FROM patient_triage_statuses t JOIN programmes p ON p.id = t.programme_id
                     WHERE t.status = 1""",
        # Not vaccinated against flu: a dose given now makes them vaccinated.
        "vaccination": """SELECT p.type, v.patient_id FROM patient_vaccination_statuses v JOIN programmes p ON p.id = v.programme_id
                          WHERE v.status = 0 AND p.type = 'flu'""",
        # In a session held today, registration unknown: attending changes it.
        "attendance": """SELECT p.type, ps.patient_id FROM patient_session_registration_statuses r
                         JOIN patient_sessions ps ON ps.id = r.patient_session_id
                         JOIN session_dates sd ON sd.session_id = ps.session_id AND sd.value = (now() AT TIME ZONE 'Europe/London')::date
                         JOIN session_programmes sp ON sp.session_id = ps.session_id JOIN programmes p ON p.id = sp.programme_id
                         WHERE r.status = 0""",
    }[kind]
    return [(r[0], r[1]) for r in conn.execute(sql + " LIMIT 2000").fetchall()]


def _status_rows(conn, patient_id: int) -> frozenset:
    return frozenset(r[0] for r in conn.execute(STATUS_ROWS_SQL, {"p": patient_id}).fetchall())


def _commit_event(conn, event: Event) -> None:
    programme_id = conn.execute("SELECT id FROM programmes WHERE type = %s", (event.programme,)).fetchone()[0]
    args = {"p": event.patient_id, "g": programme_id}
    with conn.transaction():
        if event.kind == "consent":
            parent = conn.execute("INSERT INTO parents (full_name) VALUES (NULL) RETURNING id").fetchone()[0]
            conn.execute("INSERT INTO consents (patient_id, programme_id, parent_id, response, route) "
                         "VALUES (%(p)s, %(g)s, %(parent)s, 1, 0)", {**args, "parent": parent})
        elif event.kind == "triage":
            conn.execute("INSERT INTO triages (patient_id, programme_id, status) VALUES (%(p)s, %(g)s, 1)", args)
        elif event.kind == "vaccination":
            conn.execute("INSERT INTO vaccination_records (patient_id, programme_id, outcome, performed_at) "
                         "VALUES (%(p)s, %(g)s, 0, now())", args)
        else:
            conn.execute("""INSERT INTO session_attendances (patient_session_id, session_date_id, attending)
                            SELECT ps.id, sd.id, true FROM patient_sessions ps
                            JOIN session_dates sd ON sd.session_id = ps.session_id
                             AND sd.value = (now() AT TIME ZONE 'Europe/London')::date
                            WHERE ps.patient_id = %(p)s ON CONFLICT DO NOTHING""", args)
    event.committed = time.time()


def _pick_events(conn, rng: random.Random, count: int, used: set[int]) -> list[Event]:
    pools = {kind: [c for c in _candidates(conn, kind) if c[1] not in used] for kind in KINDS}
    events: list[Event] = []
    for i in range(count * 4):
        if len(events) == count:
            break
        kind = KINDS[i % len(KINDS)]
        pool = [c for c in pools[kind] if c[1] not in used]
        if not pool:
            continue
        programme, patient = rng.choice(pool)
        used.add(patient)
        events.append(Event(kind, programme, patient, _status_rows(conn, patient)))
    return events


def _run_events(stack: LiveStack, events: list[Event]) -> None:
    """Commit the events EVENT_GAP apart while a poller watches every committed one."""
    done = threading.Event()

    def poll() -> None:
        with stack.connect() as conn:
            while not done.is_set():
                for event in events:
                    if event.committed and event.seen is None and _status_rows(conn, event.patient_id) != event.before:
                        event.seen = time.time()
                time.sleep(POLL)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    with stack.connect() as conn:
        for event in events:
            _commit_event(conn, event)
            time.sleep(EVENT_GAP)
    deadline = time.time() + EVENT_TIMEOUT
    while time.time() < deadline and any(e.seen is None for e in events):
        time.sleep(0.5)
    done.set()
    poller.join()


def _idle_transactions_per_second(stack: LiveStack) -> float:
    sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'pso'"
    with stack.connect() as conn:
        first = conn.execute(sql).fetchone()[0]
        time.sleep(IDLE_SECONDS)
        last = conn.execute(sql).fetchone()[0]
    return (last - first - 2) / IDLE_SECONDS  # less our own two reads


def _launch_full_refresh(stack: LiveStack) -> str:
    """One `status_refresh` run over every registered programme partition (scope all), as the UI's
    materialize-all does."""
    repo = stack.graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    node = repo["repositoriesOrError"]["nodes"][0]
    assets = stack.graphql("""query($selector: RepositorySelector!) { repositoryOrError(repositorySelector: $selector) {
        ... on Repository { assetNodes { assetKey { path } partitionKeys } } } }""",
                           {"selector": {"repositoryName": node["name"], "repositoryLocationName": node["location"]["name"]}})
    registered = next(a["partitionKeys"] for a in assets["repositoryOrError"]["assetNodes"]
                      if a["assetKey"]["path"] == ["patient_consent_statuses"])
    result = stack.graphql("""mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""", {"params": {
        "selector": {"repositoryName": node["name"], "repositoryLocationName": node["location"]["name"],
                     "jobName": "status_refresh"},
        "runConfigData": {"ops": {"status_tables": {"config": {"scope": "all"}}}},
        "executionMetadata": {"tags": [{"key": "dagster/asset_partition_range_start", "value": registered[0]},
                                       {"key": "dagster/asset_partition_range_end", "value": registered[-1]},
                                       {"key": "pso/trigger", "value": "bench"}]}}})
    launched = result["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"could not launch the full refresh: {launched}")
    return launched["run"]["runId"]


def _wait_started(stack: LiveStack, run_id: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = next((r for r in stack.runs(job_name="status_refresh", limit=20) if r["runId"] == run_id), None)
        if run and run["status"] in ("STARTED", "SUCCESS", "FAILURE"):
            return
        time.sleep(0.2)
    raise TimeoutError("the full refresh did not start")


def _breakdown(stack: LiveStack, events: list[Event]) -> dict[str, float]:
    """Median seconds per stage, for events handled by request-sensor runs."""
    runs = [r for r in stack.runs(job_name="status_refresh", tags={"pso/trigger": "status_refresh_requests"})
            if r["startTime"] and r["endTime"]]
    stages: dict[str, list[float]] = {"sensor wait": [], "launch": [], "in the run, to the changed row": []}
    for event in events:
        if event.seen is None:
            continue
        # The first run created after the commit, if it started before the change showed (the row is written
        # inside the run, before the run's end).
        run = min((r for r in runs if r["creationTime"] >= event.committed), key=lambda r: r["creationTime"], default=None)
        if run is None or run["startTime"] > event.seen:
            continue
        stages["sensor wait"].append(run["creationTime"] - event.committed)
        stages["launch"].append(run["startTime"] - run["creationTime"])
        stages["in the run, to the changed row"].append(event.seen - run["startTime"])
    return {k: statistics.median(v) for k, v in stages.items() if v}


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def _measure(label: str, env: dict[str, str], scale: float, report: BenchReport, rng: random.Random) -> None:
    with LiveStack(scale, env) as stack:
        stack.wait_until_idle()
        report.add(f"{label}: idle load", _idle_transactions_per_second(stack), "transactions/s")
        used: set[int] = set()
        for phase_name, during_full in (("quiet", False), ("during a full refresh", True)):
            with stack.connect() as conn:
                events = _pick_events(conn, rng, EVENTS, used)
            if during_full:
                # Full refreshes back to back (the pool runs one at a time) for as long as the events last.
                runs = [_launch_full_refresh(stack) for _ in range(FULL_REFRESHES)]
                _wait_started(stack, runs[0])
            _run_events(stack, events)
            phase = Phase(events)
            lat = phase.latencies
            print(f"{label}, {phase_name}: " + ", ".join(
                f"{e.kind}/{e.programme} {e.seen - e.committed:.1f}s" if e.seen else f"{e.kind}/{e.programme} never"
                for e in events), flush=True)
            missed = sum(e.seen is None for e in events)
            prefix = f"{label}, {phase_name}"
            report.add(f"{prefix}: events", len(events), "events", f"{missed} not seen in {EVENT_TIMEOUT} s")
            if lat:
                report.add(f"{prefix}: p50", statistics.median(lat), "s", "target ≤ 10 s")
                report.add(f"{prefix}: p95", _percentile(lat, 0.95), "s", "target ≤ 20 s")
                report.add(f"{prefix}: max", lat[-1], "s")
            for stage, seconds in _breakdown(stack, events).items():
                report.add(f"{prefix}: median {stage}", seconds, "s")
            stack.wait_until_idle()


def run(db: BenchDatabase | None, scale: float) -> BenchReport:
    del db  # the stack has its own database
    report = BenchReport("event_latency", scale)
    rng = random.Random(20261206)
    for label, env in CONFIGURATIONS:
        _measure(label, env, scale, report, rng)
    base, new = CONFIGURATIONS[0][0], CONFIGURATIONS[1][0]
    for phase in ("quiet", "during a full refresh"):
        if any(f.name == f"{new}, {phase}: p50" for f in report.figures) and \
                any(f.name == f"{base}, {phase}: p50" for f in report.figures):
            report.ratio(f"p50 {phase}: baseline / default", f"{base}, {phase}: p50", f"{new}, {phase}: p50",
                         "higher is better")
    return report
