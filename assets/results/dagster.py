"""Dagster wiring of the results backfill: source tables, the month-partitioned `result` asset, its check, the job."""

import warnings

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    BetaWarning,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
    define_asset_job,
)

from assets.results.rules import BackfillCounts, backfill_results, find_missing_results
from orchestration import schema
from orchestration.metadata import family_spec, records_table, source_spec, table_result
from orchestration.partitions import months_partitions
from resources.postgres import PostgresResource

GROUP = "results"
FAMILY = "results"

# Source tables (lineage).
test_order_spec = source_spec("test_order", FAMILY, table=schema.test_order, group_name=GROUP,
                              description="SimpleReport test orders (operational; written by the app). "
                                          "Legacy outcome in `result`; `test_event_id` is the current event.")
test_event_spec = source_spec("test_event", FAMILY, table=schema.test_event, group_name=GROUP,
                              description="SimpleReport test events (operational, immutable): ORIGINAL, "
                                          "CORRECTED and REMOVED events chained by prior_corrected_test_event_id.")
supported_disease_spec = source_spec("supported_disease", FAMILY, table=schema.supported_disease, group_name=GROUP,
                                     description="Diseases a result can be for (COVID-19, Flu A, Flu B).")


def _counts_table(counts: BackfillCounts):
    """Rows inserted per month by each pass, as a `MetadataValue.table`."""
    months = sorted(set(counts.order_pass) | set(counts.event_pass))
    return records_table(["month", "order_pass", "event_pass"],
                         [[m, counts.order_pass.get(m, 0), counts.event_pass.get(m, 0)] for m in months])


def _result(context: AssetExecutionContext, postgres: PostgresResource) -> MaterializeResult:
    window = context.partition_time_window
    context.log.info(f"results backfill over [{window.start.isoformat()}, {window.end.isoformat()})")
    with postgres.connect() as conn:
        counts = backfill_results(conn, window.start, window.end, log=context.log)
    return MaterializeResult(metadata=table_result(schema.result, **{
        "rows_inserted": counts.inserted,
        "rows_inserted_order_pass": counts.order_rows,
        "rows_inserted_event_pass": counts.event_rows,
        "order_rows_inserted_by_event_pass": MetadataValue.int(counts.order_rows_from_event_pass),
        "source_rows_scanned": counts.scanned,
        "batches": counts.batches,
        "months": len(counts.order_pass),
        "duration_seconds": MetadataValue.float(round(counts.seconds, 3)),
        "order_pass_seconds": MetadataValue.float(round(counts.order_pass_seconds, 3)),
        "event_pass_seconds": MetadataValue.float(round(counts.event_pass_seconds, 3)),
        "rows_inserted_per_month": _counts_table(counts),
    }))


# BackfillPolicy is marked beta but is the documented way to run a range as one run.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)
    result = asset(
        name="result",
        group_name=GROUP,
        kinds={"postgres"},
        deps=[test_order_spec, test_event_spec, supported_disease_spec],
        partitions_def=months_partitions,
        # A backfill over any range of months is one run: order pass over the range, then event pass.
        backfill_policy=BackfillPolicy.single_run(),
        pool="multiplex_backfill",
        **family_spec(FAMILY, schema.result),
        description="One row per disease per test (§5). Backfilled from legacy orders and events: COVID-19 only, "
                    "SNOMED codes, audit columns copied. Partitions are months of the source row's created_at; "
                    "manual only (launch a backfill from the UI). Inserts only; a rerun is a no-op.",
    )(_result)


@asset_check(asset=result, name="every_result_backfilled",
             description="Orders and events with a result but no `result` row carrying their id: must be 0.")
def every_result_backfilled(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
    with postgres.connect() as conn:
        missing = find_missing_results(conn)
    table = records_table(["source", "month", "missing"], missing.by_month)
    return AssetCheckResult(
        passed=missing.total == 0,
        severity=AssetCheckSeverity.ERROR,
        description=None if missing.total == 0 else (
            f"{missing.total} orders/events have a result but no result row "
            f"(orders {missing.orders}, events {missing.events})"),
        metadata={
            "missing": missing.total,
            "orders_missing": missing.orders,
            "events_missing": missing.events,
            "sample_order_ids": MetadataValue.json(missing.sample_order_ids),
            "sample_event_ids": MetadataValue.json(missing.sample_event_ids),
            "missing_per_month": table,
        },
    )


multiplex_backfill_job = define_asset_job(
    "multiplex_backfill", selection=[result.key],
    description="Manual: backfill `result` for a month (or a range: one run, order pass then event pass).",
)

assets: list = [test_order_spec, test_event_spec, supported_disease_spec, result]
asset_checks: list = [every_result_backfilled]
jobs: list = [multiplex_backfill_job]
