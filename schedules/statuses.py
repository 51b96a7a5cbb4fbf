"""03:00 Europe/London full refresh of every programme partition (domain.md §1.8), and at 05:00 the
whole-cache checks.

One run over the whole programme partition range; it also marks every refresh request made before
it started. The asset retries 3 times (RetryPolicy); the assets' FreshnessPolicy (deadline 06:00
London) makes a refresh that has not succeeded by 06:00 visible as failing freshness in the UI, and the
`status_refresh_deadline` sensor records an alert (sensors/statuses.py).

The refresh's own checks judge the programmes it refreshed, in its step; the judgements of the whole
cache (every programme, bad input) are the `status_checks` job, at 05:00 London once the nightly
refresh has had two hours.
"""

from __future__ import annotations

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from assets.statuses import (
    NIGHTLY_DATE_TAG,
    TRIGGER_TAG,
    all_programmes_tags,
    refresh_run_config,
    status_checks_job,
    status_refresh_job,
)
from orchestration.automation import schedule_status
from orchestration.clock import london_date
from orchestration.partitions import programmes_partitions


@schedule(
    name="status_refresh_nightly",
    job=status_refresh_job,
    cron_schedule="0 3 * * *",
    execution_timezone="Europe/London",
    default_status=schedule_status(),
    description="Full refresh of the cached statuses of every programme at 03:00 London (safety net for the "
                "day change and for changes that raised no refresh request).",
)
def status_refresh_nightly(context: ScheduleEvaluationContext):
    partitions = list(context.instance.get_dynamic_partitions(programmes_partitions.name))
    if not partitions:
        return SkipReason("no programme partitions yet")
    day = london_date(context.scheduled_execution_time)
    return RunRequest(
        run_key=f"status_refresh_nightly:{day.isoformat()}",
        run_config=refresh_run_config("all", today=day),
        tags={**all_programmes_tags(partitions), TRIGGER_TAG: "nightly", NIGHTLY_DATE_TAG: day.isoformat()},
    )


@schedule(
    name="status_checks_daily",
    job=status_checks_job,
    cron_schedule="0 5 * * *",
    execution_timezone="Europe/London",
    default_status=schedule_status(),
    description="Whole-cache checks of the cached statuses at 05:00 London, after the 03:00 full refresh: drift on "
                "a random sample and coverage in every programme, and bad input.",
)
def status_checks_daily(context: ScheduleEvaluationContext):
    day = london_date(context.scheduled_execution_time)
    return RunRequest(run_key=f"status_checks_daily:{day.isoformat()}", tags={TRIGGER_TAG: "status_checks_daily"})


schedules = [status_refresh_nightly, status_checks_daily]
