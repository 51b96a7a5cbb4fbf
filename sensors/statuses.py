"""Status refresh sensors (domain.md §1.8): programme_added, day_change, status_refresh_requests,
and the statuses handler of the shared sync_complete sensor.

They request runs of the `status_refresh` job over programme partitions, except for patient events:
the request sensor refreshes small batches of patient and session requests itself, as priority
refreshes reported to Dagster as materializations (assets/statuses/events.py). A run that covers
every programme is ONE run over the partition range first..last (the asset has a single-run backfill
policy), so refresh requests can be marked processed in the same transaction as the run's last batch.
Whole refreshes never overlap (the asset's pool `status_refresh` has one slot, and every batch takes
the same `pg_advisory_xact_lock`); an event's priority refresh waits only for the batches in flight.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from dagster import (
    AssetKey,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.statuses import (
    DATE_DEPENDENT_KEYS,
    NIGHTLY_DATE_TAG,
    STATUS_ASSET_KEYS,
    TRIGGER_TAG,
    all_programmes_tags,
    refresh_run_config,
    request_full_refresh_if_rules_changed,
    run_check_keys,
    status_refresh_job,
)
from assets.statuses.events import (
    check_evaluations,
    materializations,
    refresh_requested,
    source_observations,
    split_requests,
)
from assets.statuses.refresh import rules_request_reason
from orchestration.alerts import raise_alert
from orchestration.automation import sensor_status
from orchestration.clock import (
    academic_year_start,
    london_today,
    now_utc,
    status_refresh_deadline,
)
from orchestration.metadata import source_observation
from orchestration.partitions import programmes_partitions
from orchestration.schema import RefreshScope
from orchestration.settings import get_settings
from resources.postgres import PostgresResource
from sensors.cursors import LOOK_BACK, HighWaterCursor
from sensors.sync import SyncReaction, SyncRun, SyncTick

MAX_PROGRAMME_ROWS_PER_TICK = 500  # up to one run each: bounds the runs one tick submits
MAX_REQUESTS_PER_RUN = 10_000
EXPIRING_DELAY_TABLE = "patient_triage_statuses"  # the only table a delay ending changes (v2 §1.8)
SESSION_PROGRAMMES = AssetKey("session_programmes")  # the source programme_added watches
# What an immunisation import writes: the imported vaccination records and the patients they name.
IMPORT_SOURCES = (AssetKey("patients"), AssetKey("vaccination_records"))
REQUEST_BATCH_TAG = "pso/request_batch"  # the merged refresh requests a run handles (ids only)
ACTIVE_STATUSES = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING,
                   DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def refresh_request(run_config: dict, **kwargs) -> RunRequest:
    """A status refresh run request with the run's own checks of the tables it selects: they judge what
    the run covered (its programmes, patients or sessions), in the refresh's step. The whole-cache
    checks stay in the `status_checks` job (05:00 London)."""
    if run_config["ops"]["status_tables"]["config"]["scope"] != "all":
        kwargs.setdefault("asset_selection", STATUS_ASSET_KEYS)
    if "asset_selection" in kwargs:
        kwargs["asset_check_keys"] = run_check_keys(kwargs["asset_selection"])
    return RunRequest(run_config=run_config, **kwargs)


def _programme_keys(context: SensorEvaluationContext) -> list[str]:
    return list(context.instance.get_dynamic_partitions(programmes_partitions.name))


# --- programme_added --------------------------------------------------------------------------


def new_session_programmes(conn: sa.Connection, cursor: HighWaterCursor,
                           limit: int = MAX_PROGRAMME_ROWS_PER_TICK) -> list[dict]:
    since = cursor.since
    rows = conn.execute(
        sa.text(
            """
            SELECT sp.id, sp.session_id, p.type AS programme, sp.created_at
            FROM session_programmes AS sp JOIN programmes AS p ON p.id = sp.programme_id
            WHERE (CAST(:since AS timestamptz) IS NULL OR sp.created_at >= CAST(:since AS timestamptz))
              AND NOT (sp.id = ANY(CAST(:seen AS bigint[])))
            ORDER BY sp.created_at, sp.id
            LIMIT :limit
            """
        ),
        {"since": since, "seen": cursor.seen_ids, "limit": limit},
    ).mappings().all()
    return [dict(r) for r in rows]


def session_programme_types(conn: sa.Connection) -> list[str]:
    """The programmes held in at least one session (those that need a partition)."""
    return conn.execute(sa.text(
        "SELECT DISTINCT p.type FROM programmes AS p JOIN session_programmes AS sp ON sp.programme_id = p.id "
        "ORDER BY p.type")).scalars().all()


def session_programmes_as_they_are(conn: sa.Connection) -> tuple[list[str], list[tuple[int, Any]]]:
    """(every programme held in a session, the newest rows as (id, created_at)): where an empty cursor
    starts from."""
    programmes = session_programme_types(conn)
    newest = conn.execute(sa.text(
        "SELECT id, created_at FROM session_programmes "
        "WHERE created_at >= (SELECT max(created_at) FROM session_programmes) - CAST(:look_back AS interval)"),
        {"look_back": LOOK_BACK}).all()
    return programmes, [(row_id, at) for row_id, at in newest]


def session_programmes_observation(row_ids: list[int], new_programmes: int):
    """session_programmes as the tick saw it: its newest row id is the data version (each row is seen by
    one tick only, so each tick's version is new)."""
    return source_observation(SESSION_PROGRAMMES, max(row_ids), rows=len(row_ids), new_programmes=new_programmes)


def new_programme_requests(programmes: list[str], known_partitions: set[str]):
    """(new partition keys, run requests): a programme that is not a partition yet becomes one, with one
    full refresh of it (which covers every session holding it), keyed by the programme alone."""
    new_keys = sorted(set(programmes) - known_partitions)
    requests = [refresh_request(refresh_run_config("all"), run_key=f"programme_added:{programme}:partition",
                                partition_key=programme, tags={TRIGGER_TAG: "programme_added"})
                for programme in new_keys]
    return new_keys, requests


def programme_added_requests(rows: list[dict], known_partitions: set[str]):
    """(new partition keys, run requests) for new session_programmes rows: a new programme gets its
    partition and a full refresh (new_programme_requests); a row of a known one, a session-scoped run
    keyed by that row (programme, session, row id). The keys name what a run is about, so a cursor
    reset re-derives the same keys and Dagster drops them; a programme removed from a session and
    added again is a new row, so a new run."""
    new_keys, requests = new_programme_requests([r["programme"] for r in rows], known_partitions)
    requests += [
        refresh_request(
            refresh_run_config("sessions", session_ids=[row["session_id"]]),
            run_key=f"programme_added:{row['programme']}:{row['session_id']}:{row['id']}",
            partition_key=row["programme"],
            tags={TRIGGER_TAG: "programme_added"},
        )
        for row in rows if row["programme"] not in new_keys
    ]
    return new_keys, requests


@sensor(
    name="programme_added",
    job=status_refresh_job,
    minimum_interval_seconds=30,
    default_status=sensor_status(),
    description="New session_programmes rows: a new programme gets its partition and a full refresh; a row "
                "of a known programme, a refresh of that session.",
)
def programme_added_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    cursor = HighWaterCursor.parse(context.cursor)
    known = set(_programme_keys(context))
    with postgres.connect() as conn:
        if cursor.watermark is None:
            # First deployment (or a reset cursor): take the table as it is, not one run per row ever
            # written: each programme not yet a partition gets one full refresh, and the watch starts
            # from the newest row (what a reset may miss was requested by the table's trigger too).
            programmes, newest = session_programmes_as_they_are(conn)
            if not programmes:
                return SkipReason("no session programmes yet")
            new_keys, requests = new_programme_requests(programmes, known)
            handled = newest
        else:
            rows = new_session_programmes(conn, cursor)
            if not rows:
                return SkipReason("no new session programmes")
            new_keys, requests = programme_added_requests(rows, known)
            handled = [(r["id"], r["created_at"]) for r in rows]
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[programmes_partitions.build_add_request(new_keys)] if new_keys else [],
        asset_events=[session_programmes_observation([row_id for row_id, _ in handled], len(new_keys))],
        cursor=cursor.advance(handled).dump(),
    )


# --- day_change -------------------------------------------------------------------------------


def sessions_between(conn: sa.Connection, first: date, last: date) -> list[int]:
    return conn.execute(
        sa.text("SELECT DISTINCT session_id FROM session_dates WHERE value BETWEEN :a AND :b ORDER BY session_id"),
        {"a": first, "b": last},
    ).scalars().all()


def academic_year_starts_within(first: date, last: date) -> bool:
    """True when a 1 September lies in [first, last], i.e. academic_year(first - 1 day) ≠ academic_year(last):
    the academic year rolled over (statuses-v2 §1.8)."""
    return first <= academic_year_start(last) <= last


def first_unhandled_day(handled: date | None, today: date) -> date:
    """The first date this tick handles: the day after the last one handled (today on a first tick)."""
    return handled + timedelta(days=1) if handled is not None else today


def delays_expiring_between(conn: sa.Connection, first: date, last: date) -> list[int]:
    """Patients with a non-invalidated delay_vaccination triage whose delay ends in [first, last] (v2 D2): on
    that date their triage status goes back to `required`."""
    return conn.execute(sa.text(
        "SELECT DISTINCT patient_id FROM triages WHERE delay_vaccination_until BETWEEN :a AND :b "
        "AND status = 3 AND invalidated_at IS NULL ORDER BY patient_id"), {"a": first, "b": last}).scalars().all()


def ordinary_day_requests(conn: sa.Connection, handled: date | None, today: date, tags: dict) -> list[RunRequest]:
    """An ordinary day: the session and registration statuses of the sessions held from the last handled
    date to today, and the triage statuses of the patients whose delay ended since the last handled date.
    The keys hold the date, so a date never gets its runs twice."""
    requests = []
    session_ids = sessions_between(conn, handled or today, today)
    if session_ids:
        requests.append(refresh_request(refresh_run_config("sessions", session_ids=session_ids, today=today),
                                        run_key=f"day_change:{today.isoformat()}", tags=tags,
                                        asset_selection=DATE_DEPENDENT_KEYS))
    patient_ids = delays_expiring_between(conn, first_unhandled_day(handled, today), today)
    if patient_ids:
        requests.append(refresh_request(refresh_run_config("patients", patient_ids=patient_ids, today=today),
                                        run_key=f"day_change:{today.isoformat()}:delays", tags=tags,
                                        asset_selection=[AssetKey(EXPIRING_DELAY_TABLE)]))
    return requests


@sensor(
    name="day_change",
    job=status_refresh_job,
    minimum_interval_seconds=60,
    default_status=sensor_status(),
    description="Once per Europe/London date: refresh the session and registration statuses of the sessions "
                "held between the last handled date and today, and the triage statuses of patients whose "
                "delay-vaccination triage ended; on an academic-year rollover, everything.",
)
def day_change_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    today = london_today(now_utc())
    handled = date.fromisoformat(context.cursor) if context.cursor else None
    if handled is not None and handled >= today:
        return SkipReason(f"{today.isoformat()} already handled")
    partitions = _programme_keys(context)
    if not partitions:
        # The cursor stays: once programme_added registers partitions, today still gets its run.
        return SkipReason("no programme partitions yet")
    tags = {**all_programmes_tags(partitions), TRIGGER_TAG: "day_change"}
    if academic_year_starts_within(first_unhandled_day(handled, today), today):
        # Academic-year rollover (even one the daemon slept through): last year's consents, triages and
        # flu doses stop counting and every year group changes, in every programme: everything, once.
        request = refresh_request(refresh_run_config("all", today=today), run_key=f"day_change:{today.isoformat()}",
                                  tags=tags, asset_selection=STATUS_ASSET_KEYS)
        return SensorResult(run_requests=[request], cursor=today.isoformat())
    with postgres.connect() as conn:
        requests = ordinary_day_requests(conn, handled, today, tags)
    if not requests:
        return SensorResult(skip_reason=SkipReason(f"no sessions or expiring delays from {handled or today} to {today}"),
                            cursor=today.isoformat())
    return SensorResult(run_requests=requests, cursor=today.isoformat())


# --- status_refresh_requests ------------------------------------------------------------------


def pending_requests(conn: sa.Connection, limit: int = MAX_REQUESTS_PER_RUN, after: int = 0) -> list[dict]:
    """The oldest pending requests with an id above `after` (those of a run in flight are its own)."""
    rows = conn.execute(
        sa.text(
            """
            SELECT id, scope, patient_id, session_id, reason FROM status_refresh_requests
            WHERE processed_at IS NULL AND id > :after ORDER BY id LIMIT :limit
            """
        ),
        {"limit": limit, "after": after},
    ).mappings().all()
    return [dict(r) for r in rows]


def merged_request_config(requests: list[dict]) -> dict:
    ids = [r["id"] for r in requests]
    if any(r["scope"] == RefreshScope.ALL for r in requests):
        return refresh_run_config("all", request_ids=ids)
    patients = [r["patient_id"] for r in requests if r["scope"] == RefreshScope.PATIENT]
    sessions = [r["session_id"] for r in requests if r["scope"] == RefreshScope.SESSION]
    scope = "patients_and_sessions" if patients and sessions else ("patients" if patients else "sessions")
    return refresh_run_config(scope, patient_ids=patients, session_ids=sessions, request_ids=ids)


def request_batch_id(requests: list[dict]) -> str:
    """Names the merged batch by its request ids (first-last:count:digest): the same pending set
    always gets the same name, a different one another."""
    ids = [r["id"] for r in requests]
    digest = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:12]
    return f"{ids[0]}-{ids[-1]}:{len(ids)}:{digest}"


def unsuccessful_runs_of_batch(instance, batch: str) -> int:
    """Runs of this batch that ended without success (the batch is still pending, so none succeeded)."""
    return instance.get_runs_count(filters=RunsFilter(
        job_name=status_refresh_job.name, statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED],
        tags={REQUEST_BATCH_TAG: batch}))


def last_request_of_batch(batch: str) -> int:
    """The newest request id a run's batch holds (its tag is `first-last:count:digest`)."""
    return int(batch.split(":", 1)[0].rsplit("-", 1)[1])


def requests_run(requests: list[dict], partitions: list[str], instance) -> RunRequest:
    """One run over every programme for `requests`. No cursor: the pending rows and the instance's runs
    are the state, so a cursor reset changes nothing; each unsuccessful run of the batch moves it to the
    next key, and Dagster drops repeated keys."""
    batch = request_batch_id(requests)
    attempt = unsuccessful_runs_of_batch(instance, batch)
    return refresh_request(
        merged_request_config(requests),
        run_key=f"status_requests:{batch}:{attempt}",
        tags={**all_programmes_tags(partitions), TRIGGER_TAG: "status_refresh_requests", REQUEST_BATCH_TAG: batch},
    )


@sensor(
    name="status_refresh_requests",
    job=status_refresh_job,
    minimum_interval_seconds=get_settings().status_events_interval,
    default_status=sensor_status(),
    description="Every few seconds (PSO_STATUS_EVENTS_INTERVAL): refreshes up to 2,000 pending patient and "
                "session requests itself, reported as materializations of their programme partitions "
                "(PSO_STATUS_EVENTS=inline); whole-programme requests and the rest go to one run over every "
                "programme, which marks them processed with its last batch (at-least-once).",
)
def status_refresh_requests_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    inline = get_settings().status_events == "inline"
    in_flight = context.instance.get_runs(
        filters=RunsFilter(job_name=status_refresh_job.name, statuses=ACTIVE_STATUSES,
                           tags={TRIGGER_TAG: "status_refresh_requests"}), limit=1)
    if in_flight and not inline:
        return SkipReason(f"run {in_flight[0].run_id} is still handling earlier requests")
    # Inline, the requests of a run in flight are its own; newer ones need not wait for it.
    after = last_request_of_batch(in_flight[0].tags[REQUEST_BATCH_TAG]) if in_flight else 0
    partitions = _programme_keys(context)
    with postgres.connect() as conn:
        # Rules changed since the caches were last fully computed (e.g. an upgrade): one full refresh.
        if request_full_refresh_if_rules_changed(conn):
            context.log.info(f"status rules changed: a full refresh was requested ({rules_request_reason()})")
        requests = pending_requests(conn, after=after)
        if not requests:
            return SkipReason("no pending refresh requests")
        if not partitions:
            return SkipReason("no programme partitions yet (programme_added adds them)")
        now_here, for_run = split_requests(requests) if inline else ([], requests)
        events = []
        if now_here:
            today = london_today(now_utc())
            done = refresh_requested(conn, now_here, partitions, today)
            context.log.info(f"refreshed {len(done.patient_ids)} patient(s) and {len(done.session_ids)} session(s) "
                             f"of {len(done.request_ids)} request(s) in {done.seconds:.3f} s")
            events = [*materializations(done), *check_evaluations(conn, done, today), *source_observations(now_here)]
    runs = [requests_run(for_run, partitions, context.instance)] if for_run and not in_flight else []
    if not runs and not events:
        return SkipReason(f"the pending requests wait for run {in_flight[0].run_id}")
    return SensorResult(run_requests=runs, asset_events=events)


# --- sync_complete (shared sensor) handler ----------------------------------------------------


def on_sync_complete(run: SyncRun, tick: SyncTick) -> SyncReaction:
    """An immunisation import finished: refresh exactly the patients it touched, every programme, and
    observe the sources it wrote (data version: the sync run id)."""
    patient_ids = sorted({int(p) for p in (run.touched or [])})
    if not patient_ids:
        return SyncReaction()
    observations = [source_observation(key, run.id, sync_run_id=run.id, patients=len(patient_ids))
                    for key in IMPORT_SOURCES]
    # One run per programme held in a session; programme_added may not have registered all of
    # them yet, so the tick adds the missing partitions with its run requests.
    programmes = session_programme_types(tick.conn)
    unregistered = sorted(set(programmes) - set(tick.instance.get_dynamic_partitions(programmes_partitions.name)))
    requests = [
        refresh_request(
            refresh_run_config("patients", patient_ids=patient_ids),
            run_key=f"sync_complete:{run.id}:{programme}",
            job_name=status_refresh_job.name,
            partition_key=programme,
            tags={TRIGGER_TAG: "sync_complete", "pso/sync_run_id": str(run.id)},
        )
        for programme in programmes
    ]
    return SyncReaction(run_requests=requests,
                        dynamic_partitions_requests=[programmes_partitions.build_add_request(unregistered)]
                        if unregistered else [],
                        observations=observations)


# --- status_refresh_deadline --------------------------------------------------------------------


def nightly_refresh_succeeded(instance, day: date) -> bool:
    """Whether a run of the nightly full refresh for London date `day` succeeded (a retry counts)."""
    runs = instance.get_runs(filters=RunsFilter(job_name=status_refresh_job.name, statuses=[DagsterRunStatus.SUCCESS],
                                                tags={NIGHTLY_DATE_TAG: day.isoformat()}), limit=1)
    return bool(runs)


@sensor(
    name="status_refresh_deadline",
    minimum_interval_seconds=300,
    default_status=sensor_status(),
    description="Once a London day, after 06:00 London: records an alert (alerts table, log line, webhook) if "
                "that day's 03:00 full status refresh has not succeeded (§1.8). Cursor: the last date checked.",
)
def status_refresh_deadline_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    now = now_utc()
    day = london_today(now)
    if now < status_refresh_deadline(day):
        return SkipReason(f"before 06:00 London on {day.isoformat()}")
    if context.cursor == day.isoformat():
        return SkipReason(f"{day.isoformat()} already checked")
    if nightly_refresh_succeeded(context.instance, day):
        context.update_cursor(day.isoformat())
        return SkipReason(f"the nightly refresh for {day.isoformat()} succeeded")
    message = f"the 03:00 London full status refresh for {day.isoformat()} had not succeeded by 06:00 London"
    details = {"job_name": status_refresh_job.name, "date": day.isoformat()}
    with postgres.connect() as conn:
        alert_id = raise_alert(conn, "status_refresh_late", message, details)
    context.log.warning(f"alert {alert_id}: {message}")
    # Only after the alert is committed: a failure above leaves the cursor, so the next tick retries.
    context.update_cursor(day.isoformat())
    return SkipReason(f"alert {alert_id} recorded")


sensors = [programme_added_sensor, day_change_sensor, status_refresh_requests_sensor, status_refresh_deadline_sensor]
