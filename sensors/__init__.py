"""Sensors: programme-added, day-change, refresh requests (statuses), sync-complete (shared), alerts."""

from sensors import alerts, cohort_stats, pruning, statuses, sync_complete

ALL_SENSORS = [s for module in (statuses, cohort_stats, pruning, sync_complete, alerts) for s in module.sensors]
