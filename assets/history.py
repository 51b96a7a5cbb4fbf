"""History archives (domain.md §3.1–3.4): Notify notification archival, inbound SMS archival,
the ft_notification_status fact table, and the deep archive of notification_history to S3.

Each archive is an instance of the one archive mechanism (`orchestration.patterns.archive`):
a few lines of SQL (which rows are past retention) and configuration (tables, columns, batch
size). Assets here are thin: they read their partition window, call the plain functions below
(which take a SQLAlchemy Connection), and report counts as metadata — never personal data.

Partitions are London days of `created_at` (`bst_date` for the facts). A run covers a range of
days: the nightly schedules request the window that can hold due rows; wider backfills are
launched from the UI (31 days per run). The first partition (2024-01-01) also covers anything
older, so no row is ever out of reach.
"""

import logging
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Iterable

import sqlalchemy as sa
from botocore.exceptions import ClientError
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Backoff,
    BetaWarning,
    BackfillPolicy,
    Config,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
    asset_check,
    define_asset_job,
)
from dagster_aws.s3 import S3Resource

from orchestration import schema
from orchestration.clock import (
    DEFAULT_RETENTION_DAYS,
    UTC,
    london_day_bounds,
    london_today,
    now_utc,
    retention_cutoff,
)
from orchestration.partitions import london_days_partitions
from orchestration.patterns.archive import (
    ArchiveResult,
    ArchiveRule,
    ParquetExport,
    count_where,
    delete_exported,
    export_parquet,
    restore_parquet,
    run_archive,
)
from orchestration.settings import get_settings
from resources.postgres import PostgresResource
from resources.s3 import S3Buckets

log = logging.getLogger(__name__)

GROUP = "history"
NOTIFICATION_BATCH_SIZE = 50_000
LETTER_BATCH_SIZE = 5_000
INBOUND_SMS_BATCH_SIZE = 10_000
DEEP_ARCHIVE_AFTER = timedelta(days=365)
DEEP_ARCHIVE_MAX_HOURS = 240
DEEP_ARCHIVE_PREFIX = "notification_history"
PENDING_LETTER_STATUSES = ("pending-virus-check", "created", "sending")
FACT_DAYS_BACK = {"email": 4, "sms": 4, "letter": 10}
# The nightly runs cover this many days of created_at; upstream's longest retention is 90 days.
NIGHTLY_LOOKBACK_DAYS = 100

# BackfillPolicy is beta in Dagster 1.13; it is what lets one run cover a range of days.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")

FIRST_PARTITION_START = london_days_partitions.start.astimezone(UTC)


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


# ---------------------------------------------------------------------------------------------
# The archive instances: SQL + configuration
# ---------------------------------------------------------------------------------------------

# One unit = one (service, type), within [window_start, until); window_start NULL = unbounded.
_UNIT_SQL = ("service_id = CAST(:service_id AS uuid) AND notification_type = :notification_type "
             "AND (CAST(:window_start AS timestamptz) IS NULL OR created_at >= CAST(:window_start AS timestamptz)) "
             "AND created_at < CAST(:until AS timestamptz)")
_UNIT_LOCK = "hashtextextended('notification_archive:' || CAST(:service_id AS text) || ':' || :notification_type, 0)"

NOTIFICATION_ARCHIVE = ArchiveRule(
    name="notification_history",
    source="notifications",
    history="notification_history",
    columns=schema.NOTIFICATION_HISTORY_COLUMNS,  # the 23 non-PII columns
    eligible_sql=(
        f"{_UNIT_SQL} AND key_type IN ('normal', 'team') "
        f"AND notification_status IN ({_sql_list(schema.NOTIFICATION_STATUSES)}) "  # unknown statuses stay
        f"AND (notification_type <> 'letter' OR notification_status NOT IN ({_sql_list(PENDING_LETTER_STATUSES)}))"
    ),
    lock_sql=_UNIT_LOCK,
)

# Test-key rows are deleted, never copied to history.
NOTIFICATION_TEST_KEY_DELETE = ArchiveRule(
    name="notifications_test_key",
    source="notifications",
    history=None,
    columns=(),
    eligible_sql=f"{_UNIT_SQL} AND key_type = 'test'",
    lock_sql=_UNIT_LOCK,
)

INBOUND_SMS_COLUMNS = tuple(c.name for c in schema.inbound_sms_history.columns)  # no user_number, no content
_INBOUND_WINDOW = ("(CAST(:window_start AS timestamptz) IS NULL OR created_at >= CAST(:window_start AS timestamptz)) "
                   "AND created_at < CAST(:until AS timestamptz)")

INBOUND_SMS_ARCHIVE_FLEXIBLE = ArchiveRule(
    name="inbound_sms_history",
    source="inbound_sms",
    history="inbound_sms_history",
    columns=INBOUND_SMS_COLUMNS,
    eligible_sql=f"service_id = CAST(:service_id AS uuid) AND {_INBOUND_WINDOW}",
    lock_sql="hashtextextended('inbound_sms_archive:' || CAST(:service_id AS text), 0)",
)
INBOUND_SMS_ARCHIVE_DEFAULT = ArchiveRule(
    name="inbound_sms_history_default",
    source="inbound_sms",
    history="inbound_sms_history",
    columns=INBOUND_SMS_COLUMNS,
    eligible_sql=f"NOT (service_id = ANY(CAST(:flexible_services AS uuid[]))) AND {_INBOUND_WINDOW}",
    lock_sql="hashtextextended('inbound_sms_archive:default', 0)",
)

DEEP_ARCHIVE_EXPORT = ParquetExport(table=schema.notification_history, columns=schema.NOTIFICATION_HISTORY_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Notification archival (§3.2)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveUnit:
    service_id: uuid.UUID
    notification_type: str
    days_of_retention: int
    cutoff: datetime


@dataclass
class UnitPlan:
    units: list[ArchiveUnit]
    bad_retention_ids: list[str]  # retention rows skipped: days <= 0 or unknown type


def notification_archive_units(conn: sa.Connection, today: date, window_start: datetime | None = None,
                               window_end: datetime | None = None) -> UnitPlan:
    """One unit per retention row (its own cutoff), plus one per other (service, type) with rows past cutoff(7)."""
    units, bad = [], []
    rows = conn.execute(sa.text(
        "SELECT id, service_id, notification_type, days_of_retention FROM service_data_retention "
        "ORDER BY service_id, notification_type")).all()
    for row in rows:
        if row.notification_type not in schema.NOTIFICATION_TYPES or row.days_of_retention is None \
                or row.days_of_retention <= 0:
            bad.append(str(row.id))  # never guess a retention: the unit waits until the row is fixed
            continue
        units.append(ArchiveUnit(row.service_id, row.notification_type, row.days_of_retention,
                                 retention_cutoff(row.days_of_retention, today)))
    default_cutoff = retention_cutoff(DEFAULT_RETENTION_DAYS, today)
    until = min(default_cutoff, window_end) if window_end else default_cutoff
    others = conn.execute(sa.text(
        "SELECT DISTINCT n.service_id, n.notification_type FROM notifications n "
        "WHERE n.created_at < :until AND (CAST(:window_start AS timestamptz) IS NULL OR n.created_at >= :window_start) "
        "AND n.notification_type = ANY(:types) "
        "AND NOT EXISTS (SELECT 1 FROM service_data_retention r "
        "                WHERE r.service_id = n.service_id AND r.notification_type = n.notification_type) "
        "ORDER BY 1, 2"), {"until": until, "window_start": window_start, "types": list(schema.NOTIFICATION_TYPES)}).all()
    units += [ArchiveUnit(r.service_id, r.notification_type, DEFAULT_RETENTION_DAYS, default_cutoff) for r in others]
    conn.commit()
    return UnitPlan(units, bad)


POSTAGE_CODES = {"first": "1", "second": "2", "economy": "ECONOMY", "europe": "E", "rest-of-world": "N"}


def letter_pdf_location(reference: str, postage: str | None, created_at: datetime, status: str, key_type: str,
                        buckets: S3Buckets) -> tuple[str, str]:
    """(bucket, key) of a letter's PDF: the letters family owns the rule (§4.4 rule 3, §4.5 buckets)."""
    from assets.letters import pdf_location

    return pdf_location(buckets, notification_status=status, key_type=key_type, reference=reference,
                        postage=postage or "second", created_at=created_at)


@dataclass
class PdfCounts:
    deleted: int = 0
    missing: int = 0
    errors: int = 0

    def add(self, other: "PdfCounts") -> None:
        self.deleted += other.deleted
        self.missing += other.missing
        self.errors += other.errors


def delete_letter_pdfs(conn: sa.Connection, s3, buckets: S3Buckets, ids: list, only_completed: bool,
                       logger: logging.Logger = log) -> PdfCounts:
    """Delete the PDFs of these letters before their rows go. Missing → warning; other errors → logged, go on."""
    status_filter = "AND notification_status = ANY(:completed)" if only_completed else ""
    rows = conn.execute(sa.text(
        "SELECT id, reference, postage, created_at, notification_status, key_type FROM notifications "
        f"WHERE id = ANY(CAST(:ids AS uuid[])) AND notification_type = 'letter' {status_filter}"),
        {"ids": [str(i) for i in ids], "completed": list(schema.COMPLETED_NOTIFICATION_STATUSES)}).all()
    conn.commit()
    counts = PdfCounts()
    if s3 is None or not rows:
        return counts

    def delete_one(row) -> str:
        if not row.reference:
            logger.warning("letter %s has no reference: no PDF to delete", row.id)
            return "missing"
        bucket, key = letter_pdf_location(row.reference, row.postage, row.created_at, row.notification_status,
                                          row.key_type, buckets)
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                logger.warning("letter %s: PDF not found in %s; archiving it anyway", row.id, bucket)
                return "missing"
            logger.error("letter %s: S3 error %s looking for its PDF; continuing", row.id,
                         error.response.get("Error", {}).get("Code"))
            return "errors"
        try:
            s3.delete_object(Bucket=bucket, Key=key)
        except ClientError as error:
            logger.error("letter %s: S3 error %s deleting its PDF; continuing", row.id,
                         error.response.get("Error", {}).get("Code"))
            return "errors"
        return "deleted"

    with ThreadPoolExecutor(max_workers=16) as pool:
        for outcome in pool.map(delete_one, rows):
            setattr(counts, outcome, getattr(counts, outcome) + 1)
    return counts


PDF_LIFECYCLE_RULE_ID = "pso-expire-left-behind-letter-pdfs"
PDF_LIFECYCLE_DAYS = NIGHTLY_LOOKBACK_DAYS  # longer than any retention (upstream's longest is 90 days)


def ensure_pdf_lifecycle_rules(s3, buckets: S3Buckets, days: int = PDF_LIFECYCLE_DAYS,
                               logger: logging.Logger = log) -> list[str]:
    """Expire PDFs the archive left behind (an S3 error while deleting); keeps other rules. Returns buckets changed."""
    changed = []
    for bucket in (buckets.letters_pdf, buckets.invalid_pdf, buckets.test_letters):
        try:
            try:
                rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            ours = {"ID": PDF_LIFECYCLE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""},
                    "Expiration": {"Days": days}}
            if any(r.get("ID") == PDF_LIFECYCLE_RULE_ID and r.get("Expiration", {}).get("Days") == days
                   for r in rules):
                continue
            rules = [r for r in rules if r.get("ID") != PDF_LIFECYCLE_RULE_ID] + [ours]
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
            changed.append(bucket)
        except ClientError as error:
            logger.warning("could not set the PDF lifecycle rule on %s: %s", bucket,
                           error.response.get("Error", {}).get("Code"))
    return changed


@dataclass
class NotificationArchiveResult:
    units: int = 0
    archived: ArchiveResult = field(default_factory=ArchiveResult)
    test_deleted: ArchiveResult = field(default_factory=ArchiveResult)
    pdfs: PdfCounts = field(default_factory=PdfCounts)
    skipped_retention_ids: list[str] = field(default_factory=list)
    per_type: dict[str, int] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "archived": self.archived.deleted,
            "inserted_into_history": self.archived.inserted,
            "already_in_history": self.archived.deleted - self.archived.inserted,
            "archive_batches": self.archived.batches,
            "test_key_deleted": self.test_deleted.deleted,
            "pdfs_deleted": self.pdfs.deleted,
            "pdfs_missing": self.pdfs.missing,
            "pdf_errors": self.pdfs.errors,
            "skipped_retention_rows": len(self.skipped_retention_ids),
            "archived_by_type": MetadataValue.json(self.per_type),
        }


def archive_notifications(conn: sa.Connection, today: date, window_start: datetime | None = None,
                          window_end: datetime | None = None, s3=None, buckets: S3Buckets | None = None,
                          batch_size: int = NOTIFICATION_BATCH_SIZE, letter_batch_size: int = LETTER_BATCH_SIZE,
                          logger: logging.Logger = log) -> NotificationArchiveResult:
    """Archive every unit's rows past retention (within the window), then delete its test-key rows."""
    plan = notification_archive_units(conn, today, window_start, window_end)
    result = NotificationArchiveResult(units=len(plan.units), skipped_retention_ids=plan.bad_retention_ids)
    if plan.bad_retention_ids:
        logger.error("service_data_retention rows with days <= 0 or an unknown type were skipped: %s",
                     ", ".join(plan.bad_retention_ids))
    for unit in plan.units:
        until = min(unit.cutoff, window_end) if window_end else unit.cutoff
        if window_start is not None and until <= window_start:
            continue
        params = {"service_id": str(unit.service_id), "notification_type": unit.notification_type,
                  "window_start": window_start, "until": until}
        is_letter = unit.notification_type == "letter"
        size = letter_batch_size if is_letter else batch_size

        def pdfs_first(ids, only_completed: bool) -> None:
            result.pdfs.add(delete_letter_pdfs(conn, s3, buckets, ids, only_completed, logger))

        moved = run_archive(conn, NOTIFICATION_ARCHIVE, params, size,
                            before_batch=(lambda ids: pdfs_first(ids, True)) if is_letter and s3 else None)
        tests = run_archive(conn, NOTIFICATION_TEST_KEY_DELETE, params, size,
                            before_batch=(lambda ids: pdfs_first(ids, False)) if is_letter and s3 else None)
        result.archived.add(moved)
        result.test_deleted.add(tests)
        result.per_type[unit.notification_type] = result.per_type.get(unit.notification_type, 0) + moved.deleted
    return result


# ---------------------------------------------------------------------------------------------
# Inbound SMS (§3.3)
# ---------------------------------------------------------------------------------------------


def archive_inbound_sms(conn: sa.Connection, today: date, window_start: datetime | None = None,
                        window_end: datetime | None = None, batch_size: int = INBOUND_SMS_BATCH_SIZE) -> dict[str, Any]:
    """cutoff(days) for services with an SMS retention row and an inbound number; cutoff(7) for all others."""
    flexible = conn.execute(sa.text(
        "SELECT DISTINCT r.service_id, r.days_of_retention FROM service_data_retention r "
        "JOIN inbound_numbers i ON i.service_id = r.service_id "
        "WHERE r.notification_type = 'sms' ORDER BY r.service_id")).all()
    conn.commit()
    total = ArchiveResult()
    skipped = []
    for row in flexible:
        if row.days_of_retention <= 0:
            skipped.append(str(row.service_id))
            continue
        cutoff = retention_cutoff(row.days_of_retention, today)
        until = min(cutoff, window_end) if window_end else cutoff
        total.add(run_archive(conn, INBOUND_SMS_ARCHIVE_FLEXIBLE,
                              {"service_id": str(row.service_id), "window_start": window_start, "until": until},
                              batch_size))
    cutoff = retention_cutoff(DEFAULT_RETENTION_DAYS, today)
    until = min(cutoff, window_end) if window_end else cutoff
    # Services with a bad SMS retention row keep everything until the row is fixed.
    excluded = [str(r.service_id) for r in flexible]
    total.add(run_archive(conn, INBOUND_SMS_ARCHIVE_DEFAULT,
                          {"flexible_services": excluded, "window_start": window_start, "until": until}, batch_size))
    return {**total.as_dict(), "flexible_services": len(flexible), "skipped_services": len(skipped)}


# ---------------------------------------------------------------------------------------------
# ft_notification_status (§3.4)
# ---------------------------------------------------------------------------------------------

_FACT_SERVICES = sa.text(
    "SELECT service_id FROM notifications_all_time_view WHERE notification_type = :type "
    "AND created_at >= :start AND created_at < :end "
    "UNION SELECT service_id FROM ft_notification_status WHERE bst_date = :day AND notification_type = :type "
    "ORDER BY 1")
_FACT_DELETE = sa.text(
    "DELETE FROM ft_notification_status WHERE bst_date = :day AND notification_type = :type AND service_id = :service_id")
# Constant columns are literals, not GROUP BY keys (upstream measured this > 50% faster).
_FACT_INSERT = sa.text(
    "INSERT INTO ft_notification_status (bst_date, template_id, service_id, job_id, notification_type, key_type, "
    "notification_status, notification_count, created_at) "
    "SELECT CAST(:day AS date), template_id, CAST(:service_id AS uuid), "
    "COALESCE(job_id, CAST(:no_job AS uuid)), CAST(:type AS text), key_type, notification_status, count(*), now() "
    "FROM notifications_all_time_view "
    "WHERE service_id = :service_id AND notification_type = :type AND created_at >= :start AND created_at < :end "
    "AND key_type IN ('normal', 'team') "
    "GROUP BY template_id, COALESCE(job_id, CAST(:no_job AS uuid)), key_type, notification_status "
    "ON CONFLICT DO NOTHING")


def rebuild_ft_notification_status(conn: sa.Connection, days: Iterable[date], types: Iterable[str]) -> dict[str, int]:
    """Delete + insert each (day, type, service) in one transaction; services that lost all rows are cleared."""
    if conn.in_transaction():
        conn.commit()
    counts = {"units": 0, "deleted": 0, "inserted": 0}
    for day in days:
        start, end = london_day_bounds(day)
        for notification_type in types:
            services = conn.execute(_FACT_SERVICES, {"type": notification_type, "start": start, "end": end,
                                                     "day": day}).scalars().all()
            conn.commit()
            for service_id in services:
                params = {"day": day, "type": notification_type, "service_id": service_id, "start": start,
                          "end": end, "no_job": str(schema.NO_JOB_ID)}
                with conn.begin():
                    counts["deleted"] += conn.execute(_FACT_DELETE, params).rowcount
                    counts["inserted"] += conn.execute(_FACT_INSERT, params).rowcount
                counts["units"] += 1
    return counts


def fact_days(today: date, notification_type: str) -> list[date]:
    """The days rebuilt nightly: counting back from yesterday, 4 for email/SMS, 10 for letters."""
    yesterday = today - timedelta(days=1)
    return [yesterday - timedelta(days=i) for i in range(FACT_DAYS_BACK[notification_type])]


# ---------------------------------------------------------------------------------------------
# Deep archive of notification_history (§3.2a) and restore
# ---------------------------------------------------------------------------------------------


def hour_prefix(hour_start: datetime) -> str:
    return f"{DEEP_ARCHIVE_PREFIX}/created_at_date_hour={hour_start.astimezone(UTC):%Y-%m-%dT%H}/"


def _retag(s3, bucket: str, key: str, tags: dict[str, str]) -> None:
    s3.put_object_tagging(Bucket=bucket, Key=key,
                          Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})


def deep_archive_notification_history(conn: sa.Connection, s3, bucket: str, now: datetime,
                                      window_start: datetime | None = None, window_end: datetime | None = None,
                                      max_hours: int = DEEP_ARCHIVE_MAX_HOURS, page_size: int = 50_000,
                                      logger: logging.Logger = log) -> dict[str, Any]:
    """Export the oldest whole UTC hours older than now − 365 d to Parquet, then delete them if counts match."""
    limit = now - DEEP_ARCHIVE_AFTER
    if window_end is not None:
        limit = min(limit, window_end)
    export = ParquetExport(DEEP_ARCHIVE_EXPORT.table, DEEP_ARCHIVE_EXPORT.columns, page_size=page_size)
    hours, rows, keys = 0, 0, []
    while hours < max_hours:
        oldest = conn.execute(sa.text(
            "SELECT min(created_at) FROM notification_history WHERE created_at < :limit "
            "AND (CAST(:window_start AS timestamptz) IS NULL OR created_at >= :window_start)"),
            {"limit": limit, "window_start": window_start}).scalar_one()
        conn.commit()
        if oldest is None:
            break
        hour_start = oldest.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        params = {"range_start": hour_start, "range_end": hour_start + timedelta(hours=1)}
        key = f"{hour_prefix(hour_start)}{uuid.uuid4()}.parquet"
        exported = export_parquet(conn, export, params, s3, bucket, key, tags={"contents_deleted": "false"})
        with conn.begin():
            conn.execute(sa.insert(schema.deep_archive_manifests).values(
                hour_start=hour_start, s3_key=key, row_count=exported.row_count, checksum=exported.checksum))

        def mark_deleted(tx: sa.Connection, _deleted: int) -> None:
            tx.execute(sa.text("UPDATE deep_archive_manifests SET deleted_at = now() "
                               "WHERE hour_start = :hour AND s3_key = :key"), {"hour": hour_start, "key": key})

        delete_exported(conn, export, params, exported.row_count, after_delete=mark_deleted)
        _retag(s3, bucket, key, {"contents_deleted": "true",
                                 "contents_deleted_at": now_utc().strftime("%Y-%m-%dT%H:%M:%SZ")})
        logger.info("deep-archived %d rows of hour %s to s3://%s/%s", exported.row_count, hour_start, bucket, key)
        hours += 1
        rows += exported.row_count
        keys.append(key)
    return {"hours": hours, "rows": rows, "s3_keys": keys}


def restore_hour(conn: sa.Connection, s3, bucket: str, hour_start: datetime) -> dict[str, int]:
    """Re-import an archived hour into notification_history; objects of re-runs are deduplicated by id.

    The hour's manifests are then marked not deleted, so conservation counts its rows once (in history);
    a later deep archive run exports the hour again to a new object."""
    counts = restore_parquet(conn, DEEP_ARCHIVE_EXPORT, s3, bucket, hour_prefix(hour_start))
    with conn.begin():
        conn.execute(sa.text("UPDATE deep_archive_manifests SET deleted_at = NULL WHERE hour_start = :hour"),
                     {"hour": hour_start})
    return counts


# ---------------------------------------------------------------------------------------------
# Conservation and bad input
# ---------------------------------------------------------------------------------------------

_WINDOW_SQL = ("(CAST(:window_start AS timestamptz) IS NULL OR created_at >= CAST(:window_start AS timestamptz)) "
               "AND created_at < CAST(:window_end AS timestamptz)")


def notification_counts(conn: sa.Connection, window_start: datetime | None, window_end: datetime) -> dict[str, int]:
    """Rows of the window in the live table, in history, and in the deep archive (manifests of deleted hours)."""
    params = {"window_start": window_start, "window_end": window_end}
    counts = {
        "live": count_where(conn, "notifications", _WINDOW_SQL, params),
        "history": count_where(conn, "notification_history", _WINDOW_SQL, params),
        "deep_archived": conn.execute(sa.text(
            "SELECT CAST(COALESCE(sum(row_count), 0) AS bigint) FROM deep_archive_manifests WHERE deleted_at IS NOT NULL "
            "AND (CAST(:window_start AS timestamptz) IS NULL OR hour_start >= CAST(:window_start AS timestamptz)) "
            "AND hour_start < CAST(:window_end AS timestamptz)"), params).scalar_one(),
    }
    conn.commit()
    return counts


def bad_notification_input(conn: sa.Connection, limit: int = 20) -> dict[str, list[str]]:
    """Ids of rows the archive refuses to touch (a database without this schema's constraints may hold them)."""
    q = {
        "notifications_null_created_at": "SELECT id FROM notifications WHERE created_at IS NULL",
        "notifications_unknown_type": "SELECT id FROM notifications WHERE notification_type <> ALL(:types) "
                                      "OR notification_type IS NULL",
        "notifications_unknown_status": "SELECT id FROM notifications WHERE notification_status <> ALL(:statuses) "
                                        "OR notification_status IS NULL",
        "notifications_unknown_key_type": "SELECT id FROM notifications WHERE key_type <> ALL(:key_types) "
                                          "OR key_type IS NULL",
        "retention_days_not_positive": "SELECT id FROM service_data_retention WHERE days_of_retention IS NULL "
                                       "OR days_of_retention <= 0",
        "retention_unknown_type": "SELECT id FROM service_data_retention WHERE notification_type <> ALL(:types)",
    }
    params = {"types": list(schema.NOTIFICATION_TYPES), "statuses": list(schema.NOTIFICATION_STATUSES),
              "key_types": list(schema.KEY_TYPES), "limit": limit}
    found = {}
    for name, sql in q.items():
        ids = conn.execute(sa.text(f"{sql} ORDER BY id LIMIT :limit"), params).scalars().all()
        if ids:
            found[name] = [str(i) for i in ids]
    conn.commit()
    return found


PII_COLUMN_NAMES = {c.split(".", 1)[1] for c in schema.PII_COLUMNS if c.split(".", 1)[0] in ("notifications", "inbound_sms")}


def pii_columns_in(conn: sa.Connection, table: str) -> list[str]:
    cols = conn.execute(sa.text("SELECT column_name FROM information_schema.columns "
                                "WHERE table_schema = current_schema() AND table_name = :t"), {"t": table}).scalars().all()
    conn.commit()
    return sorted(set(cols) & PII_COLUMN_NAMES)


def pending_letters_in_history(conn: sa.Connection, limit: int = 20) -> list[str]:
    ids = conn.execute(sa.text(
        "SELECT id FROM notification_history WHERE notification_type = 'letter' "
        "AND notification_status = ANY(:pending) ORDER BY id LIMIT :limit"),
        {"pending": list(PENDING_LETTER_STATUSES), "limit": limit}).scalars().all()
    conn.commit()
    return [str(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# Dagster: sources, assets, checks, jobs
# ---------------------------------------------------------------------------------------------

SOURCE_TABLES = {
    "services": "Notify services (with their organisation).",
    "service_data_retention": "Days of retention per (service, notification type); 7 when absent.",
    "inbound_numbers": "Inbound SMS numbers and the services they belong to.",
    "notifications": "The hot notifications table written by the Notify app; holds personal data.",
    "inbound_sms": "Inbound text messages; holds the sender's number and the message.",
}
SOURCE_KEYS = {name: AssetKey(["notify", name]) for name in SOURCE_TABLES}
source_specs = [AssetSpec(key=SOURCE_KEYS[name], description=text, group_name=GROUP, kinds={"postgres"})
                for name, text in SOURCE_TABLES.items()]

RETRY = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL)


def _window(context: AssetExecutionContext) -> tuple[datetime | None, datetime]:
    """UTC bounds of the run's partition range; the first partition is unbounded below."""
    window = context.partition_time_window
    start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
    return (None if start <= FIRST_PARTITION_START else start), end


def _partition_days(context: AssetExecutionContext) -> list[date]:
    return [date.fromisoformat(k) for k in context.partition_keys]


@asset(
    key="notification_history",
    group_name=GROUP,
    partitions_def=london_days_partitions,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=31),
    pool="notification_archive",
    retry_policy=RETRY,
    deps=[SOURCE_KEYS["notifications"], SOURCE_KEYS["service_data_retention"], SOURCE_KEYS["services"]],
    kinds={"postgres"},
    check_specs=[AssetCheckSpec("conservation", asset="notification_history",
                                description="live + history + deep-archived rows of the range: before = after "
                                            "(less test-key rows deleted)")],
    freshness_policy=FreshnessPolicy.cron(deadline_cron="0 5 * * *", lower_bound_delta=timedelta(hours=3)),
    description="Non-PII copy of notifications past their service's retention (§3.2); partitions are London "
                "days of created_at.",
)
def notification_history(context: AssetExecutionContext, postgres: PostgresResource, s3: S3Resource):
    window_start, window_end = _window(context)
    now = now_utc()
    settings = get_settings()
    started = time.perf_counter()
    client = s3.get_client()
    lifecycle_set = ensure_pdf_lifecycle_rules(client, settings.buckets, logger=context.log)
    with postgres.connect() as conn:
        before = notification_counts(conn, window_start, window_end)
        result = archive_notifications(conn, london_today(now), window_start, window_end, s3=client,
                                       buckets=settings.buckets, logger=context.log)
        after = notification_counts(conn, window_start, window_end)
    expected = sum(before.values()) - result.test_deleted.deleted - (result.archived.deleted - result.archived.inserted)
    conserved = sum(after.values()) == expected
    return MaterializeResult(
        metadata={**result.metadata(), "seconds": round(time.perf_counter() - started, 3),
                  "pdf_lifecycle_rules_set": len(lifecycle_set),
                  "live_after": after["live"], "history_after": after["history"]},
        check_results=[AssetCheckResult(
            check_name="conservation", passed=conserved,
            metadata={"before": sum(before.values()), "after": sum(after.values()), "expected_after": expected,
                      "test_key_deleted": result.test_deleted.deleted})],
    )


@asset(
    key="inbound_sms_history",
    group_name=GROUP,
    partitions_def=london_days_partitions,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=31),
    pool="inbound_sms_archive",
    retry_policy=RETRY,
    deps=[SOURCE_KEYS["inbound_sms"], SOURCE_KEYS["service_data_retention"], SOURCE_KEYS["inbound_numbers"]],
    kinds={"postgres"},
    check_specs=[AssetCheckSpec("conservation", asset="inbound_sms_history",
                                description="live + history rows of the range: before = after")],
    freshness_policy=FreshnessPolicy.cron(deadline_cron="0 3 * * *", lower_bound_delta=timedelta(hours=2)),
    description="Inbound SMS past retention, without the sender's number or the message (§3.3).",
)
def inbound_sms_history(context: AssetExecutionContext, postgres: PostgresResource):
    window_start, window_end = _window(context)
    params = {"window_start": window_start, "window_end": window_end}
    with postgres.connect() as conn:
        before = count_where(conn, "inbound_sms", _WINDOW_SQL, params) + \
            count_where(conn, "inbound_sms_history", _WINDOW_SQL, params)
        conn.commit()
        counts = archive_inbound_sms(conn, london_today(now_utc()), window_start, window_end)
        after = count_where(conn, "inbound_sms", _WINDOW_SQL, params) + \
            count_where(conn, "inbound_sms_history", _WINDOW_SQL, params)
        conn.commit()
    already = counts["deleted"] - counts["inserted"]
    return MaterializeResult(
        metadata=counts,
        check_results=[AssetCheckResult(check_name="conservation", passed=after == before - already,
                                        metadata={"before": before, "after": after})])


class FactConfig(Config):
    notification_types: list[str] = list(schema.NOTIFICATION_TYPES)


@asset(
    key="ft_notification_status",
    group_name=GROUP,
    partitions_def=london_days_partitions,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=31),
    pool="ft_notification_status",
    retry_policy=RETRY,
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
    with postgres.connect() as conn:
        counts = rebuild_ft_notification_status(conn, _partition_days(context), config.notification_types)
    return MaterializeResult(metadata={**counts, "days": len(context.partition_keys),
                                       "types": ", ".join(config.notification_types)})


class DeepArchiveConfig(Config):
    max_hours: int = DEEP_ARCHIVE_MAX_HOURS


@asset(
    key="notification_history_deep_archive",
    group_name=GROUP,
    partitions_def=london_days_partitions,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=10),
    pool="deep_archive",
    retry_policy=RETRY,
    deps=["notification_history"],
    kinds={"s3", "parquet"},
    description="notification_history older than 365 days, hour by hour, as Parquet in the archive bucket "
                "(s3://{archive}/notification_history/created_at_date_hour=YYYY-MM-DDTHH/…), with a manifest row "
                "per object (§3.2a). Restore with `pso restore-hour`.",
)
def notification_history_deep_archive(context: AssetExecutionContext, config: DeepArchiveConfig,
                                      postgres: PostgresResource, s3: S3Resource):
    window_start, window_end = _window(context)
    bucket = get_settings().buckets.archive
    with postgres.connect() as conn:
        result = deep_archive_notification_history(conn, s3.get_client(), bucket, now_utc(), window_start,
                                                   window_end, max_hours=config.max_hours, logger=context.log)
    return MaterializeResult(metadata={"hours": result["hours"], "rows": result["rows"],
                                       "s3_keys": MetadataValue.md("\n".join(f"- `{k}`" for k in result["s3_keys"][:50])
                                                                   or "none"),
                                       "bucket": bucket})


def _check_result(found: dict[str, list[str]] | list[str], what: str) -> AssetCheckResult:
    if isinstance(found, list):
        found = {what: found} if found else {}
    return AssetCheckResult(passed=not found, severity=AssetCheckSeverity.ERROR,
                            metadata={name: MetadataValue.text(", ".join(ids)) for name, ids in found.items()}
                            or {"rows": 0},
                            description=None if not found else f"{what}: ids listed in metadata")


@asset_check(asset="notification_history", description="notification_history has none of the PII columns")
def notification_history_has_no_pii(postgres: PostgresResource) -> AssetCheckResult:
    with postgres.connect() as conn:
        cols = pii_columns_in(conn, "notification_history")
        return _check_result({"pii_columns": cols} if cols else {}, "PII columns present")


@asset_check(asset="inbound_sms_history", description="inbound_sms_history has no user_number or content")
def inbound_sms_history_has_no_pii(postgres: PostgresResource) -> AssetCheckResult:
    with postgres.connect() as conn:
        cols = pii_columns_in(conn, "inbound_sms_history")
        return _check_result({"pii_columns": cols} if cols else {}, "PII columns present")


@asset_check(asset="notification_history", description="no letter pending virus check, created or sending was archived")
def no_pending_letter_archived(postgres: PostgresResource) -> AssetCheckResult:
    with postgres.connect() as conn:
        return _check_result(pending_letters_in_history(conn), "pending letters in history")


@asset_check(asset="notification_history",
             description="notifications with NULL created_at or unknown type/status/key type, and retention rows "
                         "with days <= 0 or an unknown type: the archive leaves them alone; this names them")
def notification_bad_input(postgres: PostgresResource) -> AssetCheckResult:
    with postgres.connect() as conn:
        return _check_result(bad_notification_input(conn), "bad input")


assets = [*source_specs, notification_history, inbound_sms_history, ft_notification_status,
          notification_history_deep_archive]
asset_checks = [notification_history_has_no_pii, inbound_sms_history_has_no_pii, no_pending_letter_archived,
                notification_bad_input]

notification_archive_job = define_asset_job("notification_archive_job", selection=[notification_history])
inbound_sms_archive_job = define_asset_job("inbound_sms_archive_job", selection=[inbound_sms_history])
ft_notification_status_job = define_asset_job("ft_notification_status_job", selection=[ft_notification_status])
deep_archive_job = define_asset_job("notification_history_deep_archive_job",
                                    selection=[notification_history_deep_archive])
jobs = [notification_archive_job, inbound_sms_archive_job, ft_notification_status_job, deep_archive_job]
