"""Letter PDFs of archived notifications (domain.md §3.2 step 2): deleted from S3 before their rows go,
and a bucket lifecycle rule that expires any PDF the archive left behind."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from botocore.exceptions import ClientError

from assets.history.rules import NIGHTLY_LOOKBACK_DAYS
from orchestration import schema
from resources.s3 import S3Buckets, is_missing_object

log = logging.getLogger(__name__)

PDF_LIFECYCLE_RULE_ID = "pso-expire-left-behind-letter-pdfs"
PDF_LIFECYCLE_DAYS = NIGHTLY_LOOKBACK_DAYS  # longer than any retention (upstream's longest is 90 days)


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

    def add(self, other: PdfCounts) -> None:
        self.deleted += other.deleted
        self.missing += other.missing
        self.errors += other.errors


def _error_code(error: ClientError) -> str | None:
    return error.response.get("Error", {}).get("Code")


def _delete_pdf(s3, buckets: S3Buckets, row, logger: logging.Logger) -> str:
    """Delete one letter's PDF; returns the PdfCounts field to count it in."""
    if not row.reference:
        logger.warning("letter %s has no reference: no PDF to delete", row.id)
        return "missing"
    bucket, key = letter_pdf_location(row.reference, row.postage, row.created_at, row.notification_status,
                                      row.key_type, buckets)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if is_missing_object(error):
            logger.warning("letter %s: PDF not found in %s; archiving it anyway", row.id, bucket)
            return "missing"
        logger.error("letter %s: S3 error %s looking for its PDF; continuing", row.id, _error_code(error))
        return "errors"
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except ClientError as error:
        logger.error("letter %s: S3 error %s deleting its PDF; continuing", row.id, _error_code(error))
        return "errors"
    return "deleted"


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
    with ThreadPoolExecutor(max_workers=16) as pool:
        for outcome in pool.map(lambda row: _delete_pdf(s3, buckets, row, logger), rows):
            setattr(counts, outcome, getattr(counts, outcome) + 1)
    return counts


def ensure_pdf_lifecycle_rules(s3, buckets: S3Buckets, days: int = PDF_LIFECYCLE_DAYS,
                               logger: logging.Logger = log) -> list[str]:
    """Expire PDFs the archive left behind (an S3 error while deleting); keeps other rules. Returns buckets changed."""
    changed = []
    ours = {"ID": PDF_LIFECYCLE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": days}}
    for bucket in (buckets.letters_pdf, buckets.invalid_pdf, buckets.test_letters):
        try:
            try:
                rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
            except ClientError as error:
                if _error_code(error) != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            if any(r.get("ID") == PDF_LIFECYCLE_RULE_ID and r.get("Expiration", {}).get("Days") == days
                   for r in rules):
                continue
            rules = [r for r in rules if r.get("ID") != PDF_LIFECYCLE_RULE_ID] + [ours]
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
            changed.append(bucket)
        except ClientError as error:
            logger.warning("could not set the PDF lifecycle rule on %s: %s", bucket, _error_code(error))
    return changed
