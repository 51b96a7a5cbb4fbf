"""Sensors: programme-added, day-change, refresh requests (statuses), sync-complete (shared), alerts."""

from sensors import cohort_stats, pruning, statuses, sync_complete

ALL_SENSORS = [s for module in (statuses, cohort_stats, pruning, sync_complete) for s in module.sensors]
