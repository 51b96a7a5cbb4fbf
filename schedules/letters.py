"""Letter schedules (domain.md §4.5): collation at 17:50 Europe/London daily, targeting that day's print
partition; the letters-still-created alert at 07:00 UTC Monday to Friday (upstream's UTC cron)."""

from dagster import RunRequest, ScheduleEvaluationContext, schedule

from assets.letters import letter_collation_job, letters_still_created_alert_job
from orchestration.automation import schedule_status
from orchestration.clock import london_date


@schedule(name="letter_collation_daily", cron_schedule="50 17 * * *", execution_timezone="Europe/London",
          job=letter_collation_job, default_status=schedule_status(),
          description="Collate the print day whose 17:30 London deadline just passed.")
def letter_collation_schedule(context: ScheduleEvaluationContext):
    day = london_date(context.scheduled_execution_time).isoformat()
    # The run key is the print day: a retried tick never launches a second collation of the same day.
    return RunRequest(run_key=f"letter_collation:{day}", partition_key=day)


@schedule(name="letters_still_created_alert_weekdays", cron_schedule="0 7 * * 1-5", execution_timezone="UTC",
          job=letters_still_created_alert_job, default_status=schedule_status(),
          description="Alert on normal letters still created past the previous day's deadline.")
def letters_still_created_alert_schedule(context: ScheduleEvaluationContext):
    return RunRequest(run_key=f"letters_still_created:{context.scheduled_execution_time:%Y-%m-%d}")


schedules: list = [letter_collation_schedule, letters_still_created_alert_schedule]
