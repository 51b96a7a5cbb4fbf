"""Cached statuses (Mavis, domain.md §1 as amended by statuses-v2.md): the five status tables as
programme-partitioned assets.

- `sql`: the rules, as set-based SQL declared as derived tables (orchestration/patterns/derived_table.py);
- `refresh`: scope → batches → refresh, and the refresh requests a run settles;
- `checks`: drift, coverage and bad-input checks (plain functions);
- `explain`: one patient's statuses and the inputs that decided them (`pso explain`);
- `wiring`: the Dagster multi-asset, asset checks, jobs, and the run requests sensors and schedules build.
"""

from assets.statuses.checks import bad_status_inputs, status_coverage, status_drift
from assets.statuses.explain import explain_statuses, format_explanation
from assets.statuses.refresh import (
    STATUS_REFRESH_LOCK_KEY,
    STATUS_TABLE_NAMES,
    StatusScope,
    mark_requests_processed,
    pending_request_ids,
    programme_ids_by_type,
    record_rules_version,
    refresh_statuses,
    request_full_refresh_if_rules_changed,
)
from assets.statuses.sql import (
    DATE_DEPENDENT_TABLES,
    PROGRAMME_YEAR_GROUPS,
    RULES_VERSION,
    STATUS_TABLES,
)
from assets.statuses.wiring import (
    DATE_DEPENDENT_KEYS,
    NIGHTLY_DATE_TAG,
    STATUS_ASSET_KEYS,
    TRIGGER_TAG,
    all_programmes_tags,
    asset_checks,
    assets,
    jobs,
    refresh_run_config,
    run_check_keys,
    status_checks_job,
    status_refresh_job,
    status_tables,
)

__all__ = [
    "DATE_DEPENDENT_KEYS", "DATE_DEPENDENT_TABLES", "NIGHTLY_DATE_TAG", "PROGRAMME_YEAR_GROUPS",
    "RULES_VERSION", "STATUS_ASSET_KEYS", "STATUS_REFRESH_LOCK_KEY", "STATUS_TABLES", "STATUS_TABLE_NAMES",
    "StatusScope", "TRIGGER_TAG", "all_programmes_tags", "asset_checks", "assets", "bad_status_inputs",
    "explain_statuses", "format_explanation", "jobs", "mark_requests_processed", "pending_request_ids",
    "programme_ids_by_type", "record_rules_version", "refresh_run_config", "refresh_statuses", "run_check_keys",
    "request_full_refresh_if_rules_changed", "status_checks_job", "status_coverage", "status_drift",
    "status_refresh_job", "status_tables",
]
