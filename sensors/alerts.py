"""Run-failure alerting: every failed run leaves a row in `alerts`, a log line, and (when
PSO_ALERT_WEBHOOK_URL is set) a JSON POST to that URL.

What an alert holds is operational only: run id, job name, failing step keys and the
exception *class* of each failure. Error messages and stack traces are left out on purpose,
because a message can quote a row (a name, a phone number) and alerts leave the system.

`record_alert(conn, kind, message, details, run_id=None)` is the one way to write an alert;
other families use it too (e.g. letters still `created` after the cut-off).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any, Mapping

import sqlalchemy as sa
from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from orchestration.schema import alerts
from resources.postgres import PostgresResource

log = logging.getLogger(__name__)

WEBHOOK_ENV = "PSO_ALERT_WEBHOOK_URL"
WEBHOOK_TIMEOUT_SECONDS = 10.0


def record_alert(conn: sa.Connection, kind: str, message: str, details: Mapping[str, Any] | None,
                 run_id: str | None = None) -> int:
    """Insert one alert row (in the caller's transaction) and log it; returns the alert id.

    `message` and `details` must not contain personal data: ids, counts, names of jobs.
    """
    alert_id = conn.execute(
        sa.insert(alerts).values(kind=kind, message=message, details=dict(details) if details else None,
                                 run_id=run_id).returning(alerts.c.id)
    ).scalar_one()
    log.warning("alert %s [%s] %s", alert_id, kind, message)
    return alert_id


def post_webhook(url: str, payload: Mapping[str, Any], timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> bool:
    """POST `payload` as JSON. A failing webhook is logged, never raised: the alert row is
    already committed and the sensor must keep running."""
    try:
        request = urllib.request.Request(
            url, data=json.dumps(payload, default=str).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "public-service-orchestration-alerts"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            ok = 200 <= response.status < 300
            if not ok:
                log.warning("alert webhook answered HTTP %s", response.status)
            return ok
    except (urllib.error.URLError, OSError, ValueError) as error:
        # The URL may carry a token: log only the error class and reason, not the URL.
        log.warning("alert webhook failed: %s: %s", type(error).__name__, getattr(error, "reason", error))
        return False


def post_alert_webhook(kind: str, alert_id: int, message: str, details: Mapping[str, Any]) -> None:
    """POST a recorded alert to $PSO_ALERT_WEBHOOK_URL when it is set (never raises)."""
    url = os.environ.get(WEBHOOK_ENV)
    if url:
        post_webhook(url, {"kind": kind, "alert_id": alert_id, "message": message, **details})


def root_error_class(error) -> str | None:
    """Class name of the user's exception under Dagster's wrappers (SerializableErrorInfo.cause chain)."""
    if error is None:
        return None
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.cls_name


def run_failure_details(context: RunFailureSensorContext) -> dict[str, Any]:
    """The PII-free facts of a failed run: job, failing steps, exception classes."""
    run = context.dagster_run
    step_failures = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        step_failures.append({"step_key": event.step_key, "error_class": root_error_class(error)})
    run_error = getattr(context.failure_event.event_specific_data, "error", None)
    return {
        "job_name": run.job_name,
        "run_id": run.run_id,
        "failed_steps": sorted(f["step_key"] for f in step_failures if f["step_key"]),
        "error_classes": sorted({f["error_class"] for f in step_failures if f["error_class"]}
                                | ({root_error_class(run_error)} if run_error is not None and not step_failures else set())),
        "partition": run.tags.get("dagster/partition"),
        "backfill_id": run.tags.get("dagster/backfill"),
    }


@run_failure_sensor(
    name="run_failure_alert",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Records an alert (alerts table + log line) for every failed run, and POSTs it to "
    f"${WEBHOOK_ENV} when that is set. No personal data: ids, job, steps, exception classes.",
)
def run_failure_alert(context: RunFailureSensorContext, postgres: PostgresResource) -> None:
    details = run_failure_details(context)
    steps = ", ".join(details["failed_steps"]) or "(no step failed: run-level failure)"
    message = f"run {details['run_id']} of job {details['job_name']} failed: {steps}"
    with postgres.begin() as conn:
        alert_id = record_alert(conn, "run_failure", message, details, run_id=details["run_id"])
    context.log.warning(f"alert {alert_id}: {message} ({', '.join(details['error_classes'])})")
    post_alert_webhook("run_failure", alert_id, message, details)


sensors = [run_failure_alert]
