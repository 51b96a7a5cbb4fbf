"""The daily/nightly/weekly schedules, one module per family."""

from schedules import cohort_stats, history, letters, pruning, statuses

ALL_SCHEDULES = [s for module in (statuses, cohort_stats, history, pruning, letters) for s in module.schedules]
