"""History archives (domain.md §3.1–3.4): Notify notification archival, inbound SMS archival, the
ft_notification_status fact table, and the deep archive of notification_history to S3.

- `rules`: the archive rules (SQL + configuration) and the (service, type) units with their cutoffs;
- `letter_pdfs`: letters' PDFs deleted before their rows go, and the bucket lifecycle rule;
- `archival`: the notification and inbound SMS archives, unit by unit within a window;
- `facts`: ft_notification_status, rebuilt per (day, type, service);
- `deep_archive`: notification_history older than 365 days to Parquet in S3, hour by hour, and restore;
- `checks`: conservation counts, bad input, no personal data, no pending letter — queries and asset checks;
- `dagster`: source tables, assets and jobs.

Partitions are London days of `created_at` (`bst_date` for the facts). A run covers a range of days:
the nightly schedules request the window that can hold due rows; wider backfills are launched from
the UI (31 days per run). The first partition (2024-01-01) also covers anything older, so no row is
ever out of reach.
"""

from assets.history.archival import (
    NotificationArchiveResult,
    archive_inbound_sms,
    archive_notifications,
)
from assets.history.checks import (
    asset_checks,
    bad_notification_input,
    notification_counts,
    pending_letters_in_history,
    pii_columns_in,
)
from assets.history.dagster import (
    SOURCE_KEYS,
    DeepArchiveConfig,
    FactConfig,
    RestoreHourConfig,
    assets,
    deep_archive_job,
    ft_notification_status_job,
    inbound_sms_archive_job,
    jobs,
    notification_archive_job,
    restore_notification_history_hour_job,
    restore_partition,
)
from assets.history.deep_archive import (
    DEEP_ARCHIVE_EXPORT,
    deep_archive_notification_history,
    hour_prefix,
    restore_hour,
)
from assets.history.facts import (
    FACT_DAYS_BACK,
    fact_days,
    rebuild_ft_notification_status,
)
from assets.history.letter_pdfs import (
    PDF_LIFECYCLE_RULE_ID,
    PdfCounts,
    delete_letter_pdfs,
    ensure_pdf_lifecycle_rules,
    letter_pdf_location,
)
from assets.history.rules import (
    NIGHTLY_LOOKBACK_DAYS,
    PENDING_LETTER_STATUSES,
    notification_archive_units,
)

__all__ = [
    "DEEP_ARCHIVE_EXPORT", "FACT_DAYS_BACK", "NIGHTLY_LOOKBACK_DAYS", "PDF_LIFECYCLE_RULE_ID",
    "PENDING_LETTER_STATUSES", "SOURCE_KEYS", "DeepArchiveConfig", "FactConfig", "RestoreHourConfig", "NotificationArchiveResult",
    "PdfCounts", "archive_inbound_sms", "archive_notifications", "asset_checks", "assets", "bad_notification_input",
    "deep_archive_job", "deep_archive_notification_history", "delete_letter_pdfs", "ensure_pdf_lifecycle_rules",
    "fact_days", "ft_notification_status_job", "hour_prefix", "inbound_sms_archive_job", "jobs",
    "letter_pdf_location", "notification_archive_job", "notification_archive_units", "notification_counts",
    "pending_letters_in_history", "pii_columns_in", "rebuild_ft_notification_status", "restore_hour",
    "restore_notification_history_hour_job", "restore_partition",
]
