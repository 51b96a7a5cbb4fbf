"""The daily 04:00 Europe/London replica maintenance check (domain.md §3.5, §6).

One run per registered replica; each run decides whether the weekly purge is due
(last maintenance NULL or more than 7 days ago) and records a skipped prune_runs row if not.
"""

from __future__ import annotations

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from assets.pruning import replica_maintenance_job
from orchestration.automation import schedule_status
from orchestration.clock import london_date
from orchestration.partitions import replicas_partitions


@schedule(
    name="replica_maintenance_check",
    cron_schedule="0 4 * * *",
    execution_timezone="Europe/London",
    job=replica_maintenance_job,
    default_status=schedule_status(),
    description="Daily maintenance check of every replica; the purge itself runs weekly per replica.",
)
def replica_maintenance_schedule(context: ScheduleEvaluationContext):
    replicas = sorted(context.instance.get_dynamic_partitions(replicas_partitions.name))
    if not replicas:
        return SkipReason("no replicas registered")
    day = london_date(context.scheduled_execution_time).isoformat()
    # Run keys name the London day: one check per replica per day, even if the tick is retried.
    return [RunRequest(partition_key=replica_id, run_key=f"replica_maintenance:{day}:{replica_id}",
                       tags={"pso/replica_id": replica_id}) for replica_id in replicas]


schedules: list = [replica_maintenance_schedule]
