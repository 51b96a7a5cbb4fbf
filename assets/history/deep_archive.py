"""Deep archive of `notification_history` to S3 (domain.md §3.2a), hour by hour as Parquet, and restore."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestration import schema
from orchestration.clock import UTC, deep_archive_limit, now_utc, utc_hour_start
from orchestration.patterns.archive import (
    ParquetExport,
    delete_exported,
    export_parquet,
    restore_parquet,
)

log = logging.getLogger(__name__)

DEEP_ARCHIVE_MAX_HOURS = 240
DEEP_ARCHIVE_PREFIX = "notification_history"
DEEP_ARCHIVE_EXPORT = ParquetExport(table=schema.notification_history, columns=schema.NOTIFICATION_HISTORY_COLUMNS)


def hour_prefix(hour_start: datetime) -> str:
    return f"{DEEP_ARCHIVE_PREFIX}/created_at_date_hour={hour_start.astimezone(UTC):%Y-%m-%dT%H}/"


def _retag(s3, bucket: str, key: str, tags: dict[str, str]) -> None:
    s3.put_object_tagging(Bucket=bucket, Key=key,
                          Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})


def deep_archive_window_limit(now: datetime, window_end: datetime | None = None) -> datetime:
    """Rows created before this instant are due: the deep-archive limit (now − 365 d, down to the hour), or the
    run's window end if that comes first, itself down to the hour so only whole hours move."""
    limit = deep_archive_limit(now)
    return utc_hour_start(min(limit, window_end)) if window_end is not None else limit


def _archive_hour(conn: sa.Connection, export: ParquetExport, s3, bucket: str, hour_start: datetime) -> tuple[str, int]:
    """Export one whole hour, record its manifest, delete it if the counts match, retag the object."""
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
    return key, exported.row_count


def deep_archive_notification_history(conn: sa.Connection, s3, bucket: str, now: datetime,
                                      window_start: datetime | None = None, window_end: datetime | None = None,
                                      max_hours: int = DEEP_ARCHIVE_MAX_HOURS, page_size: int = 50_000,
                                      logger: logging.Logger = log) -> dict[str, Any]:
    """Export the oldest whole UTC hours before the limit (§3.2a step 1) to Parquet, deleting each if counts match.

    The window bounds the run to its partitions; it never moves the limit later, so a window reaching past
    the limit archives up to the limit and no further."""
    limit = deep_archive_window_limit(now, window_end)
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
        hour_start = utc_hour_start(oldest)
        key, count = _archive_hour(conn, export, s3, bucket, hour_start)
        logger.info("deep-archived %d rows of hour %s to s3://%s/%s", count, hour_start, bucket, key)
        hours += 1
        rows += count
        keys.append(key)
    return {"hours": hours, "rows": rows, "s3_keys": keys, "limit": limit}


def restore_hour(conn: sa.Connection, s3, bucket: str, hour_start: datetime) -> dict[str, int]:
    """Re-import an archived hour into notification_history; objects of re-runs are deduplicated by id.

    The hour's manifests are then marked not deleted, so conservation counts its rows once (in history);
    a later deep archive run exports the hour again to a new object."""
    counts = restore_parquet(conn, DEEP_ARCHIVE_EXPORT, s3, bucket, hour_prefix(hour_start))
    with conn.begin():
        conn.execute(sa.text("UPDATE deep_archive_manifests SET deleted_at = NULL WHERE hour_start = :hour"),
                     {"hour": hour_start})
    return counts
