"""facility_stats_aot: every 8 hours at 00:00, 08:00, 16:00 UTC (= the TTL, domain.md §2.5).

Each tick reads `stats_settings` (cutoff, kinds, TTL) and requests one run per registered unit
above the cutoff, for the kinds in `aot_kinds` only; units at or below the cutoff are never
precomputed. A unit that is eligible but not yet a `renal_units` partition is left to the
`renal_units_registry` sensor (it registers it and requests its first run within 5 minutes):
schedules in Dagster 1.13 cannot return dynamic-partition requests.
"""

from __future__ import annotations

from dagster import ScheduleEvaluationContext, SkipReason, schedule

from assets.cohort_stats import eligible_units, facility_stats_job, read_stats_settings, stats_run_request
from orchestration.automation import schedule_status
from orchestration.partitions import renal_units_partitions
from resources.postgres import PostgresResource

CRON = "0 0,8,16 * * *"


@schedule(
    name="facility_stats_aot_schedule",
    job=facility_stats_job,
    cron_schedule=CRON,
    execution_timezone="UTC",
    default_status=schedule_status(),
    description="Refreshes the stats of every registered renal unit above stats_settings.aot_min_records, "
    "for the kinds in stats_settings.aot_kinds (read at each tick).",
)
def facility_stats_aot_schedule(context: ScheduleEvaluationContext, postgres: PostgresResource):
    tick = context.scheduled_execution_time
    with postgres.connect() as conn:
        with conn.begin():
            settings = read_stats_settings(conn)
            eligible, _ = eligible_units(conn, settings)
    if not settings.aot_kinds:
        return SkipReason("stats_settings.aot_kinds is empty: nothing is computed ahead of time")
    registered = set(context.instance.get_dynamic_partitions(renal_units_partitions.name))
    units = [c.facility_code for c in eligible if c.facility_code in registered]
    pending = [c.facility_code for c in eligible if c.facility_code not in registered]
    if pending:
        context.log.info(f"not yet registered (the renal_units_registry sensor adds them): {', '.join(pending)}")
    if not units:
        return SkipReason(f"no registered unit above the cutoff {settings.aot_min_records}")
    stamp = tick.strftime("%Y-%m-%dT%H:%M") if tick else "manual"
    return [stats_run_request(u, settings.aot_kinds, f"aot:{stamp}:{u}", force=False, reason="schedule")
            for u in units]


schedules = [facility_stats_aot_schedule]
