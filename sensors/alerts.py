"""Run-failure alerting: every failed run raises an alert (orchestration/alerts.py): a row in
`alerts`, a log line and the webhook. Only operational facts: run id, job, failing step keys and
the exception *class* of each failure, never a message (it could quote a row)."""

from __future__ import annotations

from typing import Any

from dagster import RunFailureSensorContext, run_failure_sensor

from orchestration.alerts import raise_alert
from orchestration.automation import sensor_status
from resources.postgres import PostgresResource


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
    default_status=sensor_status(),
    description="Records an alert (alerts table + log line) for every failed run, and POSTs it to "
    "PSO_ALERT_WEBHOOK_URL when that is set. No personal data: ids, job, steps, exception classes.",
)
def run_failure_alert(context: RunFailureSensorContext, postgres: PostgresResource) -> None:
    details = run_failure_details(context)
    steps = ", ".join(details["failed_steps"]) or "(no step failed: run-level failure)"
    message = f"run {details['run_id']} of job {details['job_name']} failed: {steps}"
    with postgres.connect() as conn:
        alert_id = raise_alert(conn, "run_failure", message, details, run_id=details["run_id"])
    context.log.warning(f"alert {alert_id}: {message} ({', '.join(details['error_classes'])})")


sensors = [run_failure_alert]
