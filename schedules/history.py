"""Nightly history schedules, at upstream Notify's UTC times (domain.md §6).

Each tick requests ONE run over a range of London-day partitions (tags
dagster/asset_partition_range_start/_end), covering the days that can hold due rows:
- 00:30 ft_notification_status: yesterday and 3 days before for email/SMS; 9 days before for letters;
- 01:35 deep archive: the 10 days up to the one holding the limit (now − 365 d, down to the hour), so the
  hours already past the limit move that night; the run moves ≤ 240 hours (upstream's limit per run);
- 01:40 inbound SMS and 03:00 notification archive: the last 100 days (upstream's longest retention is 90).
Rows older than these windows are reached by a backfill from the UI.
"""

from __future__ import annotations

from datetime import date, timedelta

from dagster import RunRequest, ScheduleEvaluationContext, schedule

from assets.history import (
    FACT_DAYS_BACK,
    NIGHTLY_LOOKBACK_DAYS,
    deep_archive_job,
    ft_notification_status_job,
    inbound_sms_archive_job,
    notification_archive_job,
)
from orchestration.automation import schedule_status
from orchestration.clock import deep_archive_limit, london_date
from orchestration.partitions import london_days_partitions

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
FIRST_DAY = london_days_partitions.start.date()


def _range_request(name: str, first: date, last: date, tick_day: date, run_config: dict | None = None) -> RunRequest:
    first = max(first, FIRST_DAY)
    return RunRequest(
        run_key=f"{name}:{tick_day.isoformat()}",
        run_config=run_config or {},
        tags={RANGE_START: first.isoformat(), RANGE_END: last.isoformat()},
    )


def _today(context: ScheduleEvaluationContext) -> date:
    return london_date(context.scheduled_execution_time)


def _lookback_request(name: str, context: ScheduleEvaluationContext) -> RunRequest:
    """One run over the London days up to yesterday, NIGHTLY_LOOKBACK_DAYS back (rows past retention)."""
    today = _today(context)
    yesterday = today - timedelta(days=1)
    return _range_request(name, yesterday - timedelta(days=NIGHTLY_LOOKBACK_DAYS), yesterday, today)


@schedule(name="ft_notification_status_nightly", job=ft_notification_status_job, cron_schedule="30 0 * * *",
          execution_timezone="UTC", default_status=schedule_status())
def ft_notification_status_nightly(context: ScheduleEvaluationContext):
    today = _today(context)
    yesterday = today - timedelta(days=1)
    requests = []
    for types, days_back in ((["email", "sms"], FACT_DAYS_BACK["email"]), (["letter"], FACT_DAYS_BACK["letter"])):
        requests.append(_range_request(
            f"ft_notification_status:{'+'.join(types)}", yesterday - timedelta(days=days_back - 1), yesterday,
            today, {"ops": {"ft_notification_status": {"config": {"notification_types": types}}}}))
    return requests


@schedule(name="notification_history_deep_archive_nightly", job=deep_archive_job, cron_schedule="35 1 * * *",
          execution_timezone="UTC", default_status=schedule_status())
def notification_history_deep_archive_nightly(context: ScheduleEvaluationContext):
    # The window reaches the limit itself (§3.2a step 1): its last day is the London day holding the limit.
    last = london_date(deep_archive_limit(context.scheduled_execution_time))
    return _range_request("deep_archive", last - timedelta(days=9), last, _today(context))


@schedule(name="inbound_sms_archive_nightly", job=inbound_sms_archive_job, cron_schedule="40 1 * * *",
          execution_timezone="UTC", default_status=schedule_status())
def inbound_sms_archive_nightly(context: ScheduleEvaluationContext):
    return _lookback_request("inbound_sms_archive", context)


@schedule(name="notification_archive_nightly", job=notification_archive_job, cron_schedule="0 3 * * *",
          execution_timezone="UTC", default_status=schedule_status())
def notification_archive_nightly(context: ScheduleEvaluationContext):
    return _lookback_request("notification_archive", context)


schedules = [ft_notification_status_nightly, notification_history_deep_archive_nightly, inbound_sms_archive_nightly,
             notification_archive_nightly]
