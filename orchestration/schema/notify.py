"""§3.1–§3.4 and §4 GOV.UK Notify: services, notifications and their history, inbound SMS,
status facts, letters and the deep archive manifests (docs/domain.md §3–§4).
"""

from __future__ import annotations

import enum
import uuid

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from orchestration.schema.base import (
    PII,
    TIMESTAMPTZ,
    enum_codes,
    metadata,
    now_default,
    sql_in,
    uuid_id_column,
)


class LetterBatchState(enum.IntEnum):
    """`letter_batches.state`."""

    PLANNED = 0
    UPLOADED = 1



KEY_TYPES = ("normal", "team", "test")
NOTIFICATION_TYPES = ("email", "sms", "letter")
NOTIFICATION_STATUSES = (
    "created", "sending", "sent", "delivered", "pending", "failed", "technical-failure",
    "temporary-failure", "permanent-failure", "pending-virus-check", "validation-failed",
    "virus-scan-failed", "returned-letter", "cancelled",
)
COMPLETED_NOTIFICATION_STATUSES = (
    "sent", "delivered", "failed", "technical-failure", "temporary-failure", "permanent-failure",
    "returned-letter", "cancelled", "validation-failed",
)
POSTAGES = ("first", "second", "economy", "europe", "rest-of-world")

# `job_id` of ft_notification_status rows for notifications without a job (§3.4).
NO_JOB_ID = uuid.UUID("00000000-0000-0000-0000-000000000000")



services = Table(
    "services", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=True),
    Column("organisation_id", UUID(as_uuid=True), nullable=True),
)

inbound_numbers = Table(
    "inbound_numbers", metadata,
    uuid_id_column(),
    Column("number", Text, nullable=False, unique=True),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=True, index=True),
    Column("active", Boolean, nullable=False, server_default=sa.true()),
)

service_data_retention = Table(
    "service_data_retention", metadata,
    uuid_id_column(),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=False),
    Column("notification_type", Text, nullable=False),
    Column("days_of_retention", Integer, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("updated_at", TIMESTAMPTZ, nullable=True),
    UniqueConstraint("service_id", "notification_type"),
    CheckConstraint(sql_in("notification_type", NOTIFICATION_TYPES), name="notification_type"),
    CheckConstraint("days_of_retention > 0", name="days_of_retention"),
)


def _notification_columns(service_fk: bool) -> list[Column]:
    """The 23 non-PII columns shared by `notifications` and `notification_history` (§3.2).

    History has no foreign keys: it outlives the hot table and must stay cheap to insert into.
    """
    service_id_args = [ForeignKey("services.id")] if service_fk else []
    return [
        Column("id", UUID(as_uuid=True), primary_key=True),
        Column("job_id", UUID(as_uuid=True), nullable=True),
        Column("job_row_number", Integer, nullable=True),
        Column("service_id", UUID(as_uuid=True), *service_id_args, nullable=False),
        Column("template_id", UUID(as_uuid=True), nullable=False),
        Column("template_version", Integer, nullable=False),
        Column("api_key_id", UUID(as_uuid=True), nullable=True),
        Column("key_type", Text, nullable=False),
        Column("notification_type", Text, nullable=False),
        Column("created_at", TIMESTAMPTZ, nullable=False),
        Column("sent_at", TIMESTAMPTZ, nullable=True),
        Column("sent_by", Text, nullable=True),
        Column("updated_at", TIMESTAMPTZ, nullable=True),
        Column("reference", Text, nullable=True),
        Column("billable_units", Integer, nullable=False, server_default=text("0")),
        Column("client_reference", Text, nullable=True),
        Column("international", Boolean, nullable=True),
        Column("phone_prefix", Text, nullable=True),
        Column("rate_multiplier", Numeric, nullable=True),
        Column("notification_status", Text, nullable=False, server_default=text("'created'")),
        Column("created_by_id", UUID(as_uuid=True), nullable=True),
        Column("postage", Text, nullable=True),
        Column("document_download_count", Integer, nullable=True),
    ]


def _notification_checks() -> list[CheckConstraint]:
    return [
        CheckConstraint(sql_in("key_type", KEY_TYPES), name="key_type"),
        CheckConstraint(sql_in("notification_type", NOTIFICATION_TYPES), name="notification_type"),
        CheckConstraint(sql_in("notification_status", NOTIFICATION_STATUSES), name="notification_status"),
        CheckConstraint("postage IS NULL OR " + sql_in("postage", POSTAGES), name="postage"),
    ]


# Column order of notification_history; the view and the archive INSERT use it.
NOTIFICATION_HISTORY_COLUMNS = tuple(c.name for c in _notification_columns(service_fk=False))

notifications = Table(
    "notifications", metadata,
    *_notification_columns(service_fk=True),
    # Personal data: never copied to notification_history.
    Column("to", Text, nullable=False, info=PII),
    Column("normalised_to", Text, nullable=True, info=PII),
    Column("personalisation", Text, nullable=True, info=PII),
    Column("reply_to_text", Text, nullable=True, info=PII),
    Column("unsubscribe_link", Text, nullable=True, info=PII),
    *_notification_checks(),
    # Archive units and facts scan one (service, type) by time.
    Index(None, "service_id", "notification_type", "created_at"),
    # Letter collation and the letters-still-created alert.
    Index("ix_notifications_type_status_created_at", "notification_type", "notification_status", "created_at"),
)

notification_history = Table(
    "notification_history", metadata,
    *_notification_columns(service_fk=False),
    *_notification_checks(),
    Index(None, "created_at", "id"),  # deep archive: keyset pagination by hour
    Index(None, "service_id", "notification_type", "created_at"),  # facts over the view
)

inbound_sms = Table(
    "inbound_sms", metadata,
    uuid_id_column(),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("notify_number", Text, nullable=False),
    Column("user_number", Text, nullable=False, info=PII),
    Column("content", Text, nullable=False, info=PII),
    Column("provider_date", TIMESTAMPTZ, nullable=True),
    Column("provider_reference", Text, nullable=True),
    Column("provider", Text, nullable=False),
    Index(None, "service_id", "created_at"),
)

inbound_sms_history = Table(
    "inbound_sms_history", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    Column("service_id", UUID(as_uuid=True), nullable=False),
    Column("notify_number", Text, nullable=False),
    Column("provider_date", TIMESTAMPTZ, nullable=True),
    Column("provider_reference", Text, nullable=True),
    Column("provider", Text, nullable=False),
    Index(None, "service_id", "created_at"),
)

ft_notification_status = Table(
    "ft_notification_status", metadata,
    Column("bst_date", Date, nullable=False),  # London date
    Column("template_id", UUID(as_uuid=True), nullable=False),
    Column("service_id", UUID(as_uuid=True), nullable=False),
    Column("job_id", UUID(as_uuid=True), nullable=False),  # NO_JOB_ID when there is no job
    Column("notification_type", Text, nullable=False),
    Column("key_type", Text, nullable=False),
    Column("notification_status", Text, nullable=False),
    Column("notification_count", Integer, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("updated_at", TIMESTAMPTZ, nullable=True),
    PrimaryKeyConstraint(
        "bst_date", "template_id", "service_id", "job_id", "notification_type", "key_type",
        "notification_status",
    ),
    # Each unit deletes and rewrites one (day, type, service).
    Index(None, "bst_date", "notification_type", "service_id"),
)

letter_batches = Table(
    "letter_batches", metadata,
    uuid_id_column(),
    Column("print_date", Date, nullable=False),
    Column("postage", Text, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("zip_name", Text, nullable=False, unique=True),
    Column("service_id", UUID(as_uuid=True), nullable=False),
    Column("organisation_id", UUID(as_uuid=True), nullable=True),
    Column("letter_count", Integer, nullable=False),
    Column("total_bytes", BigInteger, nullable=False),
    Column("state", SmallInteger, nullable=False, server_default=text("0")),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("uploaded_at", TIMESTAMPTZ, nullable=True),
    UniqueConstraint("print_date", "postage", "sequence"),
    CheckConstraint(sql_in("postage", POSTAGES), name="postage"),
    CheckConstraint(sql_in("state", enum_codes(LetterBatchState)), name="state"),
    CheckConstraint("sequence >= 1", name="sequence"),
)

# No foreign key to notifications: letters are later archived out of that table.
letter_batch_items = Table(
    "letter_batch_items", metadata,
    Column("batch_id", UUID(as_uuid=True), ForeignKey("letter_batches.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("notification_id", UUID(as_uuid=True), primary_key=True),  # one letter, one batch
    Column("pdf_key", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
)

letter_print_volumes = Table(
    "letter_print_volumes", metadata,
    Column("print_date", Date, nullable=False),
    Column("postage", Text, nullable=False),
    Column("letters", Integer, nullable=False),
    Column("sheets", Integer, nullable=False),
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    PrimaryKeyConstraint("print_date", "postage"),
    CheckConstraint(sql_in("postage", POSTAGES), name="postage"),
)

returned_letters = Table(
    "returned_letters", metadata,
    uuid_id_column(),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=False, index=True),
    Column("notification_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("reported_at", Date, nullable=False),  # a date, as upstream's returned_letters
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
)

service_contact_list = Table(
    "service_contact_list", metadata,
    uuid_id_column(),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=False, index=True),
    Column("original_file_name", Text, nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("template_type", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("archived", Boolean, nullable=False, server_default=sa.false()),
    Column("s3_key", Text, nullable=False),  # the uploaded CSV (recipients' contact details)
    CheckConstraint(sql_in("template_type", NOTIFICATION_TYPES), name="template_type"),
)

# One row per Parquet object of the notification_history deep archive (§3.2a). A re-run of a
# half-finished hour writes a new object, so an hour may have several rows.
deep_archive_manifests = Table(
    "deep_archive_manifests", metadata,
    Column("hour_start", TIMESTAMPTZ, nullable=False),
    Column("s3_key", Text, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("checksum", Text, nullable=False),
    Column("exported_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
    PrimaryKeyConstraint("hour_start", "s3_key"),
)

