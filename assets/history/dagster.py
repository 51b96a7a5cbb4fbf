"""Dagster wiring of the history family: source tables, the four partitioned assets, their jobs.

Assets are thin: they read their partition window, call the plain functions of this package (which
take a SQLAlchemy Connection), and report counts as metadata — never personal data.
"""


import time
import warnings
from datetime import date, datetime, timedelta

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Backoff,
    BetaWarning,
    AssetMaterialization,
    Config,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    OpExecutionContext,
    RetryPolicy,
    asset,
    define_asset_job,
    job,
    op,
)
from dagster_aws.s3 import S3Resource

from assets.history.archival import archive_inbound_sms, archive_notifications
from assets.history.checks import inbound_sms_count, notification_counts
from assets.history.deep_archive import (
    DEEP_ARCHIVE_MAX_HOURS,
    DEEP_ARCHIVE_PREFIX,
    deep_archive_notification_history,
    hour_prefix,
    restore_hour,
)
from assets.history.facts import rebuild_ft_notification_status
from assets.history.letter_pdfs import ensure_pdf_lifecycle_rules
from orchestration import schema
from orchestration.clock import UTC, london_date, london_today, now_utc
from orchestration.metadata import family_spec, row_count, s3_objects, s3_uri, source_spec, table_result
from orchestration.partitions import london_days_partitions
from resources.postgres import PostgresResource
from resources.s3 import S3Buckets

GROUP = "history"
FAMILY = "history"
FIRST_PARTITION_START = london_days_partitions.start.astimezone(UTC)

SOURCE_TABLES = {
    "services": "Notify services (with their organisation).",
    "service_data_retention": "Days of retention per (service, notification type); 7 when absent.",
    "inbound_numbers": "Inbound SMS numbers and the services they belong to.",
    "notifications": "The hot notifications table written by the Notify app; holds personal data.",
    "inbound_sms": "Inbound text messages; holds the sender's number and the message.",
}
SOURCE_KEYS = {name: AssetKey(["notify", name]) for name in SOURCE_TABLES}
source_specs = [source_spec(SOURCE_KEYS[name], FAMILY, text, table=getattr(schema, name), group_name=GROUP)
                for name, text in SOURCE_TABLES.items()]

RETRY = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL)


def _days_asset(max_partitions_per_run: int, table=None, **kwargs):
    """@asset over London days whose runs each cover a range of days (BackfillPolicy is beta in Dagster 1.13),
    with the family's owners and tags and, for a table, its name and column schema."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return asset(group_name=GROUP, partitions_def=london_days_partitions, retry_policy=RETRY,
                     backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=max_partitions_per_run),
                     **family_spec(FAMILY, table), **kwargs)


def _window(context: AssetExecutionContext) -> tuple[datetime | None, datetime]:
    """UTC bounds of the run's partition range; the first partition is unbounded below."""
    window = context.partition_time_window
    start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
    return (None if start <= FIRST_PARTITION_START else start), end


@_days_asset(
    31,
    table=schema.notification_history,
    key="notification_history",
    pool="notification_archive",
    deps=[SOURCE_KEYS["notifications"], SOURCE_KEYS["service_data_retention"], SOURCE_KEYS["services"]],
    kinds={"postgres"},
    check_specs=[AssetCheckSpec("conservation", asset="notification_history",
                                description="live + history + deep-archived rows of the range: before = after "
                                            "(less test-key rows deleted)")],
    freshness_policy=FreshnessPolicy.cron(deadline_cron="0 5 * * *", lower_bound_delta=timedelta(hours=3)),
    description="Non-PII copy of notifications past their service's retention (§3.2); partitions are London "
                "days of created_at.",
)
def notification_history(context: AssetExecutionContext, postgres: PostgresResource, s3: S3Resource,
                         buckets: S3Buckets):
    window_start, window_end = _window(context)
    now = now_utc()
    started = time.perf_counter()
    client = s3.get_client()
    lifecycle_set = ensure_pdf_lifecycle_rules(client, buckets, logger=context.log)
    with postgres.connect() as conn:
        before = notification_counts(conn, window_start, window_end)
        result = archive_notifications(conn, london_today(now), window_start, window_end, s3=client,
                                       buckets=buckets, logger=context.log)
        after = notification_counts(conn, window_start, window_end)
    expected = sum(before.values()) - result.test_deleted.deleted - (result.archived.deleted - result.archived.inserted)
    conserved = sum(after.values()) == expected
    return MaterializeResult(
        # dagster/row_count: history rows of the run's days (its partition, or the range it covered).
        metadata=table_result(schema.notification_history, rows=after["history"], **result.metadata(),
                              seconds=round(time.perf_counter() - started, 3),
                              pdf_lifecycle_rules_set=len(lifecycle_set),
                              live_after=after["live"], history_after=after["history"]),
        check_results=[AssetCheckResult(
            check_name="conservation", passed=conserved,
            metadata={"before": sum(before.values()), "after": sum(after.values()), "expected_after": expected,
                      "test_key_deleted": result.test_deleted.deleted})],
    )


@_days_asset(
    31,
    table=schema.inbound_sms_history,
    key="inbound_sms_history",
    pool="inbound_sms_archive",
    deps=[SOURCE_KEYS["inbound_sms"], SOURCE_KEYS["service_data_retention"], SOURCE_KEYS["inbound_numbers"]],
    kinds={"postgres"},
    check_specs=[AssetCheckSpec("conservation", asset="inbound_sms_history",
                                description="live + history rows of the range: before = after")],
    freshness_policy=FreshnessPolicy.cron(deadline_cron="0 3 * * *", lower_bound_delta=timedelta(hours=2)),
    description="Inbound SMS past retention, without the sender's number or the message (§3.3).",
)
def inbound_sms_history(context: AssetExecutionContext, postgres: PostgresResource):
    window_start, window_end = _window(context)
    with postgres.connect() as conn:
        before = inbound_sms_count(conn, window_start, window_end)
        counts = archive_inbound_sms(conn, london_today(now_utc()), window_start, window_end)
        after = inbound_sms_count(conn, window_start, window_end)
    already = counts["deleted"] - counts["inserted"]
    return MaterializeResult(
        metadata=table_result(schema.inbound_sms_history, **counts),  # the window's count is in the check
        check_results=[AssetCheckResult(check_name="conservation", passed=after == before - already,
                                        metadata={"before": before, "after": after})])


class FactConfig(Config):
    notification_types: list[str] = list(schema.NOTIFICATION_TYPES)


@_days_asset(
    31,
    table=schema.ft_notification_status,
    key="ft_notification_status",
    pool="ft_notification_status",
    deps=[SOURCE_KEYS["notifications"], "notification_history"],
    kinds={"postgres"},
    freshness_policy=FreshnessPolicy.cron(deadline_cron="0 2 * * *", lower_bound_delta=timedelta(hours=2)),
    description="Daily counts per (template, job, key type, status) for each service and type (§3.4); "
                "partitions are bst_date.",
)
def ft_notification_status(context: AssetExecutionContext, config: FactConfig, postgres: PostgresResource):
    unknown = sorted(set(config.notification_types) - set(schema.NOTIFICATION_TYPES))
    if unknown:
        raise ValueError(f"unknown notification types in run config: {unknown}")
    days = [date.fromisoformat(k) for k in context.partition_keys]
    with postgres.connect() as conn:
        counts = rebuild_ft_notification_status(conn, days, config.notification_types)
        rows = row_count(conn, schema.ft_notification_status, schema.ft_notification_status.c.bst_date.in_(days))
    return MaterializeResult(metadata=table_result(schema.ft_notification_status, rows=rows, **counts, days=len(days),
                                                   types=", ".join(config.notification_types)))


class DeepArchiveConfig(Config):
    max_hours: int = DEEP_ARCHIVE_MAX_HOURS


@_days_asset(
    10,
    key="notification_history_deep_archive",
    pool="deep_archive",
    deps=["notification_history"],
    kinds={"s3", "parquet"},
    description="notification_history older than 365 days, hour by hour, as Parquet in the archive bucket "
                "(s3://{archive}/notification_history/created_at_date_hour=YYYY-MM-DDTHH/…), with a manifest row "
                "per object (§3.2a). Restore with `pso restore-hour`.",
)
def notification_history_deep_archive(context: AssetExecutionContext, config: DeepArchiveConfig,
                                      postgres: PostgresResource, s3: S3Resource, buckets: S3Buckets):
    window_start, window_end = _window(context)
    bucket = buckets.archive
    with postgres.connect() as conn:
        result = deep_archive_notification_history(conn, s3.get_client(), bucket, now_utc(), window_start,
                                                   window_end, max_hours=config.max_hours, logger=context.log)
    # dagster/uri: the deep archive's prefix; `keys`: the run's Parquet objects (a table, first 50).
    return MaterializeResult(metadata={**s3_objects(bucket, f"{DEEP_ARCHIVE_PREFIX}/", result["s3_keys"], shown=50),
                                       "hours": result["hours"], "rows": result["rows"],
                                       "bucket": bucket, "limit": result["limit"].isoformat()})


class RestoreHourConfig(Config):
    hour: str  # the UTC hour to restore, YYYY-MM-DDTHH


def restore_partition(hour: datetime) -> str:
    """The `notification_history` partition an hour belongs to: its London day (the first partition also
    holds anything older)."""
    return max(london_date(hour), london_date(FIRST_PARTITION_START)).isoformat()


@op(name="restore_deep_archived_hour", pool="notification_archive",
    description="Re-import one deep-archived UTC hour of notification_history from its Parquet objects "
                "(`pso restore-hour`); rows already there are kept once.")
def restore_notification_history_hour(context: OpExecutionContext, config: RestoreHourConfig,
                                      postgres: PostgresResource, s3: S3Resource, buckets: S3Buckets) -> None:
    try:
        hour = datetime.strptime(config.hour, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    except ValueError:
        raise Failure(description=f"expected a UTC hour as YYYY-MM-DDTHH, got {config.hour!r}",
                      allow_retries=False) from None
    partition = restore_partition(hour)
    if context.has_partition_key and context.partition_key != partition:
        raise Failure(description=f"hour {config.hour} is in partition {partition}, not {context.partition_key}",
                      allow_retries=False)
    bucket, prefix = buckets.archive, hour_prefix(hour)
    with postgres.connect() as conn:
        counts = restore_hour(conn, s3.get_client(), bucket, hour)
    if not counts["objects"]:
        raise Failure(description=f"nothing deep-archived for hour {config.hour} (no object under "
                                  f"{s3_uri(bucket, prefix)})", allow_retries=False)
    context.log.info(f"restored hour {config.hour}: {counts['inserted']} of {counts['rows_read']} rows inserted")
    context.log_event(AssetMaterialization(
        asset_key="notification_history", partition=partition,
        description=f"restore of deep-archived hour {config.hour}",
        metadata=table_result(schema.notification_history, hour=config.hour, **counts,
                              **{"dagster/uri": s3_uri(bucket, prefix)})))


@job(name="restore_notification_history_hour", partitions_def=london_days_partitions,
     description="Restore a deep-archived hour into notification_history (`pso restore-hour HOUR`); the partition "
                 "is the hour's London day.")
def restore_notification_history_hour_job():
    restore_notification_history_hour()


assets = [*source_specs, notification_history, inbound_sms_history, ft_notification_status,
          notification_history_deep_archive]

notification_archive_job = define_asset_job("notification_archive_job", selection=[notification_history])
inbound_sms_archive_job = define_asset_job("inbound_sms_archive_job", selection=[inbound_sms_history])
ft_notification_status_job = define_asset_job("ft_notification_status_job", selection=[ft_notification_status])
deep_archive_job = define_asset_job("notification_history_deep_archive_job",
                                    selection=[notification_history_deep_archive])
jobs = [notification_archive_job, inbound_sms_archive_job, ft_notification_status_job, deep_archive_job,
        restore_notification_history_hour_job]
