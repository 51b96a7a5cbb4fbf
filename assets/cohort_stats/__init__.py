"""Cohort stats (domain.md §2): dialysis (KRT) and demographics statistics per renal unit and window,
cached in `facility_stats` ahead of time for units above a runtime cutoff, read-through below it.

Where things are:
- `windows`      — W1/W2 of a day (inclusive London dates);
- `eligibility`  — `stats_settings`, UKRDC record counts, the cutoff, `facility_record_counts`;
- `dialysis`, `demographics` — the calculators (SQL aggregates; `shaping` turns their rows into payloads);
- `cache`        — `STATS_CACHE` (the TTL cache), the read-through and the ahead-of-time refresh;
- `metadata`     — the tables run metadata shows (`MetadataValue.table`);
- `wiring`       — Dagster assets, the expiry check, the job and the run requests.

This module exposes what the rest of the project imports (`assets`, `asset_checks`, `jobs` for
`assets/__init__.py`; the functions the schedule, sensors, CLI, bench and tests use).
"""

from assets.cohort_stats.cache import (
    CALCULATOR_VERSIONS,
    CALCULATORS,
    REFRESH_GRACE,
    STATS_CACHE,
    UnitRefresh,
    cache_key,
    compute_for,
    expired_aot_entries,
    get_facility_stats,
    refresh_unit,
    refresh_units,
)
from assets.cohort_stats.demographics import ETHNIC_GROUPS, GENDERS, demographics_stats
from assets.cohort_stats.dialysis import (
    FREQUENCY_BIN_EDGES,
    HD_CODES,
    INCENTRE_SESSION_CODE,
    KRT_CODES,
    MODALITIES,
    PD_CODES,
    dialysis_stats,
)
from assets.cohort_stats.eligibility import (
    DEFAULT_TTL,
    EXCLUDED_SENDING_FACILITIES,
    KINDS,
    MissingFacilityError,
    StatsSettings,
    UnitCount,
    eligible_units,
    read_stats_settings,
    refresh_record_counts,
    ukrdc_record_counts,
    unit_record_count,
)
from assets.cohort_stats.metadata import TABLES, demographics_tables, dialysis_tables
from assets.cohort_stats.windows import Window, quarter_start, stats_windows, window_named
from assets.cohort_stats.wiring import (
    GROUP,
    JOB_NAME,
    POOL,
    SOURCE_KEYS,
    SOURCE_SPECS,
    STATS_ASSETS,
    FacilityStatsConfig,
    asset_checks,
    assets,
    facility_record_counts,
    facility_stats_demographics,
    facility_stats_dialysis,
    facility_stats_job,
    jobs,
    run_asset_selection,
    stats_run_config,
    stats_run_request,
)

__all__ = [
    "CALCULATORS", "CALCULATOR_VERSIONS", "DEFAULT_TTL", "ETHNIC_GROUPS", "EXCLUDED_SENDING_FACILITIES",
    "FREQUENCY_BIN_EDGES", "FacilityStatsConfig", "GENDERS", "GROUP", "HD_CODES", "INCENTRE_SESSION_CODE",
    "JOB_NAME", "KINDS", "KRT_CODES", "TABLES", "MODALITIES", "MissingFacilityError", "PD_CODES", "POOL",
    "REFRESH_GRACE", "SOURCE_KEYS", "SOURCE_SPECS", "STATS_ASSETS", "STATS_CACHE", "StatsSettings", "UnitCount",
    "UnitRefresh", "Window", "asset_checks", "assets", "cache_key", "compute_for", "demographics_tables",
    "demographics_stats", "dialysis_tables", "dialysis_stats", "eligible_units", "expired_aot_entries",
    "facility_record_counts", "facility_stats_demographics", "facility_stats_dialysis", "facility_stats_job",
    "get_facility_stats", "jobs", "quarter_start", "read_stats_settings", "refresh_record_counts", "refresh_unit",
    "refresh_units", "run_asset_selection", "stats_run_config", "stats_run_request", "stats_windows",
    "ukrdc_record_counts", "unit_record_count", "window_named",
]
