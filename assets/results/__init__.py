"""Multiplex results backfill (domain.md §5): the `result` table filled from legacy test orders and events.

`rules` holds the SQL and the plain functions (`backfill_results`, `find_missing_results`); `dagster`
the source tables, the month-partitioned `result` asset, its check and the manual job.
"""

from assets.results.dagster import (
    asset_checks,
    assets,
    every_result_backfilled,
    jobs,
    multiplex_backfill_job,
    result,
    supported_disease_spec,
    test_event_spec,
    test_order_spec,
)
from assets.results.rules import (
    BACKFILL_LOCK_KEY,
    BATCH_SIZE,
    EVENT_ROW_ID_SQL,
    EVENT_ROW_NAMESPACE,
    ORDER_ROW_ID_SQL,
    ORDER_ROW_NAMESPACE,
    ROW_ID_PARAMS,
    SNOMED_PARAMS,
    SNOMED_SQL,
    BackfillCounts,
    MissingResults,
    backfill_results,
    find_missing_results,
    month_starts,
    name_based_uuid_sql,
)

__all__ = [
    "BACKFILL_LOCK_KEY", "BATCH_SIZE", "EVENT_ROW_ID_SQL", "EVENT_ROW_NAMESPACE", "ORDER_ROW_ID_SQL",
    "ORDER_ROW_NAMESPACE", "ROW_ID_PARAMS", "SNOMED_PARAMS", "SNOMED_SQL", "BackfillCounts", "MissingResults",
    "asset_checks", "assets", "backfill_results", "every_result_backfilled", "find_missing_results", "jobs",
    "month_starts", "multiplex_backfill_job", "name_based_uuid_sql", "result", "supported_disease_spec",
    "test_event_spec", "test_order_spec",
]
