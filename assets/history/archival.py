"""The nightly archives (domain.md §3.2, §3.3): notifications → notification_history (letters' PDFs
first, test-key rows deleted) and inbound SMS → inbound_sms_history, unit by unit, within a window."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from dagster import MetadataValue

from assets.history.letter_pdfs import PdfCounts, delete_letter_pdfs
from assets.history.rules import (
    INBOUND_SMS_ARCHIVE_DEFAULT,
    INBOUND_SMS_ARCHIVE_FLEXIBLE,
    INBOUND_SMS_BATCH_SIZE,
    LETTER_BATCH_SIZE,
    NOTIFICATION_ARCHIVE,
    NOTIFICATION_BATCH_SIZE,
    NOTIFICATION_TEST_KEY_DELETE,
    notification_archive_units,
)
from orchestration.clock import DEFAULT_RETENTION_DAYS, retention_cutoff
from orchestration.patterns.archive import ArchiveResult, run_archive
from resources.s3 import S3Buckets

log = logging.getLogger(__name__)


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
