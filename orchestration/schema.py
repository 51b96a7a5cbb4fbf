"""The whole database schema, declared once with SQLAlchemy Core.

`metadata` holds every table in the `public` schema: the operational (source) tables that
the service's own applications write, and the derived tables this project maintains. The
Alembic migrations in `orchestration/migrations/` create exactly these tables, plus what
SQLAlchemy cannot declare: the view `notifications_all_time_view`, the refresh-request
trigger functions and triggers, and the seed rows.

`replica_metadata` holds the Simple replica tables. Each replica lives in a Postgres schema
of its own (its names clash with UKRDC's `patient` and `facility`), created at run time by
`create_replica_schema`.

Table, column and enum names follow docs/domain.md §1–§5. Columns that hold personal data
carry `info={"pii": True}` so that tests and tooling can find them.

Section order: shared enums, Mavis (§1), UKRDC (§2), Notify (§3.1–3.4, §4), Simple (§3.5),
SimpleReport (§5), alerts, replica tables.
"""

from __future__ import annotations

import enum
import re
import uuid
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Interval,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

# Deterministic constraint names, so that migrations can refer to them and autogenerate
# produces stable diffs. Postgres truncates names at 63 characters; SQLAlchemy shortens
# longer generated names deterministically.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

PII = {"pii": True}

TIMESTAMPTZ = DateTime(timezone=True)
# UKRDC clinical timestamps are naive local time, as upstream stores them (§2.2).
NAIVE_TIMESTAMP = DateTime(timezone=False)


def _now() -> sa.TextClause:
    return text("now()")


def _in(column: str, values) -> str:
    """SQL for `column IN (...)`, used in CHECK constraints."""
    if all(isinstance(v, int) for v in values):
        items = ", ".join(str(v) for v in values)
    else:
        items = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({items})"


# ---------------------------------------------------------------------------------------------
# Enum codes (smallint in the database). Import them from here, never repeat the numbers.
# ---------------------------------------------------------------------------------------------


class ConsentResponse(enum.IntEnum):
    """`consents.response` (upstream codes)."""

    GIVEN = 0
    REFUSED = 1
    NOT_PROVIDED = 2


class ConsentRoute(enum.IntEnum):
    """`consents.route` (upstream codes)."""

    WEBSITE = 0
    PHONE = 1
    PAPER = 2
    IN_PERSON = 3
    SELF_CONSENT = 4


class TriageStatusInput(enum.IntEnum):
    """`triages.status`: what a nurse recorded (an input, not the cached triage status)."""

    READY_TO_VACCINATE = 0
    DO_NOT_VACCINATE = 1
    NEEDS_FOLLOW_UP = 2
    DELAY_VACCINATION = 3
    INVITE_TO_CLINIC = 4  # statuses-v2 D1 (migration 0006)


class VaccinationOutcome(enum.IntEnum):
    """`vaccination_records.outcome` (upstream codes)."""

    ADMINISTERED = 0
    REFUSED = 1
    NOT_WELL = 2
    CONTRAINDICATIONS = 3
    ALREADY_HAD = 4
    ABSENT_FROM_SCHOOL = 5
    ABSENT_FROM_SESSION = 6


class ConsentStatus(enum.IntEnum):
    """`patient_consent_statuses.status`."""

    NO_RESPONSE = 0
    GIVEN = 1
    REFUSED = 2
    CONFLICTS = 3
    NOT_REQUIRED = 4  # statuses-v2 C3: already vaccinated (migration 0006)


class TriageStatus(enum.IntEnum):
    """`patient_triage_statuses.status`."""

    NOT_REQUIRED = 0
    REQUIRED = 1
    SAFE_TO_VACCINATE = 2
    DO_NOT_VACCINATE = 3
    DELAY_VACCINATION = 4
    INVITE_TO_CLINIC = 5  # statuses-v2 D1 (migration 0006)


class VaccinationStatus(enum.IntEnum):
    """`patient_vaccination_statuses.status` (the "programme" status)."""

    NONE_YET = 0
    VACCINATED = 1
    COULD_NOT_VACCINATE = 2


class SessionStatus(enum.IntEnum):
    """`patient_session_session_statuses.status`."""

    NONE_YET = 0
    VACCINATED = 1
    ALREADY_HAD = 2
    HAD_CONTRAINDICATIONS = 3
    REFUSED = 4
    ABSENT_FROM_SESSION = 5
    UNWELL = 6
    ABSENT_FROM_SCHOOL = 7  # dropped upstream later; kept because its input outcome exists
    CONFLICTING_CONSENT = 8  # statuses-v2 C4 (upstream's 7 collides; migration 0006)


class RegistrationStatus(enum.IntEnum):
    """`patient_session_registration_statuses.status`."""

    UNKNOWN = 0
    ATTENDING = 1
    NOT_ATTENDING = 2
    COMPLETED = 3


class RefreshScope(enum.IntEnum):
    """`status_refresh_requests.scope`."""

    PATIENT = 0
    SESSION = 1
    ALL = 2


class StatsOutcome(enum.IntEnum):
    """`facility_stats.outcome`."""

    OK = 0
    EMPTY_COHORT = 1


class LetterBatchState(enum.IntEnum):
    """`letter_batches.state`."""

    PLANNED = 0
    UPLOADED = 1


def _codes(enum_class: type[enum.IntEnum]) -> list[int]:
    return [member.value for member in enum_class]


# String value sets (text columns with CHECK constraints).
PROGRAMME_TYPES = ("flu", "hpv", "menacwy", "td_ipv")
STATS_KINDS = ("dialysis", "demographics")
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
SYNC_SOURCES = ("replica", "immunisation_import", "renal_feed")
PRUNE_KINDS = ("sync_group", "maintenance")
SYNC_STATUSES = ("PENDING", "DONE", "INVALID")
APPOINTMENT_STATUSES = ("scheduled", "cancelled", "visited", "unknown")
TEST_RESULTS = ("POSITIVE", "NEGATIVE", "UNDETERMINED")
CORRECTION_STATUSES = ("ORIGINAL", "CORRECTED", "REMOVED")

# The seeded `supported_disease` rows (§5.2). Fixed ids keep every database identical.
COVID19_DISEASE_ID = uuid.UUID("6d7f5a1e-3c55-4a4b-9f4e-000000000001")
FLU_A_DISEASE_ID = uuid.UUID("6d7f5a1e-3c55-4a4b-9f4e-000000000002")
FLU_B_DISEASE_ID = uuid.UUID("6d7f5a1e-3c55-4a4b-9f4e-000000000003")
SUPPORTED_DISEASES = (
    (COVID19_DISEASE_ID, "COVID-19", "96741-4"),
    (FLU_A_DISEASE_ID, "Flu A", "LP14239-5"),
    (FLU_B_DISEASE_ID, "Flu B", "LP14240-3"),
)

# `job_id` of ft_notification_status rows for notifications without a job (§3.4).
NO_JOB_ID = uuid.UUID("00000000-0000-0000-0000-000000000000")


def _id(cache: int = 1) -> Column:
    """A bigint identity primary key (Mavis-style ids). `cache` > 1 lets each connection take that many
    ids at once: for tables filled in bulk by several connections (migration 0004)."""
    return Column("id", BigInteger, Identity(always=False, cache=cache), primary_key=True)


# Ids each connection takes at once from a status table's sequence: a refresh inserts up to 10,000 rows
# per table and batch on each of its connections, which otherwise share one sequence page per row.
STATUS_ID_CACHE = 1000


def _uuid_id(name: str = "id") -> Column:
    return Column(name, UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()"))


# =============================================================================================
# §1 Mavis: cached patient statuses
# =============================================================================================

programmes = Table(
    "programmes", metadata,
    _id(),
    Column("type", Text, nullable=False, unique=True),
    CheckConstraint(_in("type", PROGRAMME_TYPES), name="type"),
)

patients = Table(
    "patients", metadata,
    _id(),
    Column("given_name", Text, nullable=False, info=PII),
    Column("family_name", Text, nullable=False, info=PII),
    Column("date_of_birth", Date, nullable=False, info=PII),
    Column("birth_academic_year", Integer, nullable=False),
)

parents = Table(
    "parents", metadata,
    _id(),
    Column("full_name", Text, nullable=True, info=PII),
)

sessions = Table(
    "sessions", metadata,
    _id(),
)

session_programmes = Table(
    "session_programmes", metadata,
    _id(),
    Column("session_id", BigInteger, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("programme_id", BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), nullable=False),
    # The programme-added sensor keeps a high-water mark on `id`; created_at lets it look back
    # over rows whose transactions committed out of id order.
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    UniqueConstraint("session_id", "programme_id"),
)

session_dates = Table(
    "session_dates", metadata,
    _id(),
    Column("session_id", BigInteger, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("value", Date, nullable=False),
    UniqueConstraint("session_id", "value"),
    Index(None, "value"),  # the day-change sensor looks up the sessions held on given dates
)

patient_sessions = Table(
    "patient_sessions", metadata,
    _id(),
    Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("session_id", BigInteger, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    UniqueConstraint("patient_id", "session_id"),
    Index(None, "session_id"),
)

session_attendances = Table(
    "session_attendances", metadata,
    _id(),
    Column("patient_session_id", BigInteger, ForeignKey("patient_sessions.id", ondelete="CASCADE"),
           nullable=False),
    Column("session_date_id", BigInteger, ForeignKey("session_dates.id", ondelete="CASCADE"), nullable=False),
    Column("attending", Boolean, nullable=False),
    UniqueConstraint("patient_session_id", "session_date_id"),
    Index(None, "session_date_id"),
)

consents = Table(
    "consents", metadata,
    _id(),
    Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("programme_id", BigInteger, ForeignKey("programmes.id"), nullable=False),
    Column("parent_id", BigInteger, ForeignKey("parents.id"), nullable=True),
    Column("response", SmallInteger, nullable=False),
    Column("route", SmallInteger, nullable=False),
    # [{"question": ..., "response": ...}]: a child's health answers are personal data.
    Column("health_answers", JSONB, nullable=False, server_default=text("'[]'::jsonb"), info=PII),
    Column("invalidated_at", TIMESTAMPTZ),
    Column("withdrawn_at", TIMESTAMPTZ),
    Column("submitted_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    # statuses-v2 C2 (migration 0006): the academic year the consent is for; NULL = derive it.
    Column("academic_year", SmallInteger, nullable=True),
    CheckConstraint(_in("response", _codes(ConsentResponse)), name="response"),
    CheckConstraint(_in("route", _codes(ConsentRoute)), name="route"),
    Index(None, "patient_id", "programme_id"),
)

triages = Table(
    "triages", metadata,
    _id(),
    Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("programme_id", BigInteger, ForeignKey("programmes.id"), nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("invalidated_at", TIMESTAMPTZ),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    # statuses-v2 C2 and D2 (migration 0006): the triage's academic year (NULL = derive it), and the
    # earliest date a delayed child may be vaccinated.
    Column("academic_year", SmallInteger, nullable=True),
    Column("delay_vaccination_until", Date, nullable=True),
    CheckConstraint(_in("status", _codes(TriageStatusInput)), name="status"),
    Index(None, "patient_id", "programme_id"),
    # The day-change sensor looks up the delays ending on the days it handles.
    Index(None, "delay_vaccination_until", postgresql_where=text("delay_vaccination_until IS NOT NULL")),
)

vaccination_records = Table(
    "vaccination_records", metadata,
    _id(),
    Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("programme_id", BigInteger, ForeignKey("programmes.id"), nullable=False),
    Column("session_id", BigInteger, ForeignKey("sessions.id"), nullable=True),
    Column("outcome", SmallInteger, nullable=False),
    Column("performed_at", TIMESTAMPTZ, nullable=False),
    Column("dose_sequence", SmallInteger, nullable=True),
    Column("discarded_at", TIMESTAMPTZ),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    CheckConstraint(_in("outcome", _codes(VaccinationOutcome)), name="outcome"),
    Index(None, "patient_id", "programme_id"),
    Index(None, "session_id"),
)


def _patient_status_table(name: str, codes: type[enum.IntEnum]) -> Table:
    """A cached per-(patient, programme) status table (§1.3)."""
    return Table(
        name, metadata,
        _id(STATUS_ID_CACHE),
        Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
        # No foreign key to programmes (§1.3 names patients / patient_sessions only; migration 0003).
        Column("programme_id", BigInteger, nullable=False),
        Column("status", SmallInteger, nullable=False, server_default=text("0"), index=True),
        UniqueConstraint("patient_id", "programme_id"),
        CheckConstraint(_in("status", _codes(codes)), name="status"),
    )


patient_consent_statuses = _patient_status_table("patient_consent_statuses", ConsentStatus)
patient_triage_statuses = _patient_status_table("patient_triage_statuses", TriageStatus)
patient_vaccination_statuses = _patient_status_table("patient_vaccination_statuses", VaccinationStatus)

patient_session_session_statuses = Table(
    "patient_session_session_statuses", metadata,
    _id(STATUS_ID_CACHE),
    Column("patient_session_id", BigInteger, ForeignKey("patient_sessions.id", ondelete="CASCADE"),
           nullable=False),
    Column("programme_id", BigInteger, nullable=False),  # no foreign key: see _patient_status_table
    Column("status", SmallInteger, nullable=False, server_default=text("0"), index=True),
    UniqueConstraint("patient_session_id", "programme_id", name="uq_patient_session_session_statuses_key"),
    CheckConstraint(_in("status", _codes(SessionStatus)), name="status"),
)

patient_session_registration_statuses = Table(
    "patient_session_registration_statuses", metadata,
    _id(STATUS_ID_CACHE),
    Column("patient_session_id", BigInteger, ForeignKey("patient_sessions.id", ondelete="CASCADE"),
           nullable=False, unique=True),
    Column("status", SmallInteger, nullable=False, server_default=text("0"), index=True),
    CheckConstraint(_in("status", _codes(RegistrationStatus)), name="status"),
)

# Filled by the database triggers created in the migration (§1.8) and read by the
# refresh-request sensor. No foreign keys: a request for a since-deleted patient is harmless.
status_refresh_requests = Table(
    "status_refresh_requests", metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("scope", SmallInteger, nullable=False),
    Column("patient_id", BigInteger, nullable=True),
    Column("session_id", BigInteger, nullable=True),
    Column("reason", Text, nullable=True),
    Column("requested_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("processed_at", TIMESTAMPTZ, nullable=True),
    CheckConstraint(_in("scope", _codes(RefreshScope)), name="scope"),
    CheckConstraint(
        "(scope = 0 AND patient_id IS NOT NULL) OR (scope = 1 AND session_id IS NOT NULL) OR scope = 2",
        name="scope_target",
    ),
    # The sensor reads the oldest pending requests; processed ones are never scanned.
    Index("ix_status_refresh_requests_pending", "id", postgresql_where=text("processed_at IS NULL")),
)

# One row: the version of the status rules the caches were last fully computed under (statuses-v2,
# migration 0006). When the code's rules version differs, one full refresh is requested.
status_rules = Table(
    "status_rules", metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("version", SmallInteger, nullable=False),
    Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    CheckConstraint("id = 1", name="single_row"),
)


# =============================================================================================
# §2 UKRDC: ahead-of-time cohort statistics (UKRDC naming)
# =============================================================================================

patientrecord = Table(
    "patientrecord", metadata,
    Column("pid", Text, primary_key=True),
    Column("ukrdcid", Text, nullable=False, index=True),
    Column("sendingfacility", Text, nullable=False),
    Column("sendingextract", Text, nullable=False),
    Index(None, "sendingfacility", "sendingextract"),
)

patient = Table(
    "patient", metadata,
    Column("pid", Text, ForeignKey("patientrecord.pid", ondelete="CASCADE"), primary_key=True),
    Column("birthtime", NAIVE_TIMESTAMP, info=PII),
    Column("deathtime", NAIVE_TIMESTAMP, info=PII),
    Column("gender", Text),
    Column("ethnicgroupcode", Text),
)

treatment = Table(
    "treatment", metadata,
    Column("id", Text, primary_key=True),
    Column("pid", Text, ForeignKey("patientrecord.pid", ondelete="CASCADE"), nullable=False, index=True),
    Column("healthcarefacilitycode", Text, index=True),
    Column("fromtime", NAIVE_TIMESTAMP),
    Column("totime", NAIVE_TIMESTAMP),
    Column("admitreasoncode", Text),  # UKRDC stores the numeric code as a string
    Column("qbl05", Text),  # HOME / HOSP / SATL
)

dialysissession = Table(
    "dialysissession", metadata,
    Column("id", Text, primary_key=True),
    Column("pid", Text, ForeignKey("patientrecord.pid", ondelete="CASCADE"), nullable=False, index=True),
    Column("proceduretypecode", Text),
    Column("proceduretime", NAIVE_TIMESTAMP),
    # In-centre frequency reads a patient's sessions in a window: an index-only range scan.
    Index(None, "pid", "proceduretime", postgresql_include=["proceduretypecode"]),
)

facility = Table(
    "facility", metadata,
    Column("code", Text, primary_key=True),
    Column("description", Text),
)

# Exactly one row (id = 1), inserted by the migration; runs read it at start.
stats_settings = Table(
    "stats_settings", metadata,
    Column("id", SmallInteger, primary_key=True, server_default=text("1")),
    Column("aot_min_records", Integer, nullable=False, server_default=text("5000")),
    Column("aot_kinds", ARRAY(Text), nullable=False, server_default=text("'{dialysis}'::text[]")),
    Column("skip_if_fresher_than", Interval, nullable=False, server_default=text("'01:00:00'::interval")),
    # expires_at = computed_at + ttl (§2.3: 8 h); read at every run, so a change applies at the next tick.
    Column("ttl", Interval, nullable=False, server_default=text("'08:00:00'::interval")),
    CheckConstraint("id = 1", name="single_row"),
    CheckConstraint("ttl > '00:00:00'::interval", name="ttl"),
    CheckConstraint("aot_kinds <@ ARRAY['dialysis', 'demographics']::text[]", name="aot_kinds"),
)

facility_stats = Table(
    "facility_stats", metadata,
    Column("facility_code", Text, nullable=False),
    Column("stats_kind", Text, nullable=False),
    Column("window_start", Date, nullable=False),  # inclusive London dates
    Column("window_end", Date, nullable=False),
    Column("outcome", SmallInteger, nullable=False),
    Column("payload", JSONB, nullable=True),
    Column("population", Integer, nullable=False),
    Column("computed_at", TIMESTAMPTZ, nullable=False),
    Column("expires_at", TIMESTAMPTZ, nullable=False, index=True),
    Column("duration_ms", Integer, nullable=True),
    Column("calculator_version", Text, nullable=False),
    PrimaryKeyConstraint("facility_code", "stats_kind", "window_start", "window_end"),
    CheckConstraint(_in("stats_kind", STATS_KINDS), name="stats_kind"),
    CheckConstraint(_in("outcome", _codes(StatsOutcome)), name="outcome"),
)

facility_record_counts = Table(
    "facility_record_counts", metadata,
    Column("facility_code", Text, primary_key=True),
    Column("ukrdc_record_count", Integer, nullable=False),
    Column("counted_at", TIMESTAMPTZ, nullable=False),
)


# =============================================================================================
# §3.1–§3.4 and §4 GOV.UK Notify
# =============================================================================================

services = Table(
    "services", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=True),
    Column("organisation_id", UUID(as_uuid=True), nullable=True),
)

inbound_numbers = Table(
    "inbound_numbers", metadata,
    _uuid_id(),
    Column("number", Text, nullable=False, unique=True),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=True, index=True),
    Column("active", Boolean, nullable=False, server_default=sa.true()),
)

service_data_retention = Table(
    "service_data_retention", metadata,
    _uuid_id(),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=False),
    Column("notification_type", Text, nullable=False),
    Column("days_of_retention", Integer, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("updated_at", TIMESTAMPTZ, nullable=True),
    UniqueConstraint("service_id", "notification_type"),
    CheckConstraint(_in("notification_type", NOTIFICATION_TYPES), name="notification_type"),
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
        CheckConstraint(_in("key_type", KEY_TYPES), name="key_type"),
        CheckConstraint(_in("notification_type", NOTIFICATION_TYPES), name="notification_type"),
        CheckConstraint(_in("notification_status", NOTIFICATION_STATUSES), name="notification_status"),
        CheckConstraint("postage IS NULL OR " + _in("postage", POSTAGES), name="postage"),
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
    _uuid_id(),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
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
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
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
    _uuid_id(),
    Column("print_date", Date, nullable=False),
    Column("postage", Text, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("zip_name", Text, nullable=False, unique=True),
    Column("service_id", UUID(as_uuid=True), nullable=False),
    Column("organisation_id", UUID(as_uuid=True), nullable=True),
    Column("letter_count", Integer, nullable=False),
    Column("total_bytes", BigInteger, nullable=False),
    Column("state", SmallInteger, nullable=False, server_default=text("0")),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("uploaded_at", TIMESTAMPTZ, nullable=True),
    UniqueConstraint("print_date", "postage", "sequence"),
    CheckConstraint(_in("postage", POSTAGES), name="postage"),
    CheckConstraint(_in("state", _codes(LetterBatchState)), name="state"),
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
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    PrimaryKeyConstraint("print_date", "postage"),
    CheckConstraint(_in("postage", POSTAGES), name="postage"),
)

returned_letters = Table(
    "returned_letters", metadata,
    _uuid_id(),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=False, index=True),
    Column("notification_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("reported_at", Date, nullable=False),  # a date, as upstream's returned_letters
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
)

service_contact_list = Table(
    "service_contact_list", metadata,
    _uuid_id(),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id"), nullable=False, index=True),
    Column("original_file_name", Text, nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("template_type", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("archived", Boolean, nullable=False, server_default=sa.false()),
    Column("s3_key", Text, nullable=False),  # the uploaded CSV (recipients' contact details)
    CheckConstraint(_in("template_type", NOTIFICATION_TYPES), name="template_type"),
)

# One row per Parquet object of the notification_history deep archive (§3.2a). A re-run of a
# half-finished hour writes a new object, so an hour may have several rows.
deep_archive_manifests = Table(
    "deep_archive_manifests", metadata,
    Column("hour_start", TIMESTAMPTZ, nullable=False),
    Column("s3_key", Text, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("checksum", Text, nullable=False),
    Column("exported_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
    PrimaryKeyConstraint("hour_start", "s3_key"),
)


# =============================================================================================
# §3.5 Simple-style replica pruning (public bookkeeping; replica tables are further below)
# =============================================================================================

REPLICA_ID_PATTERN = r"[a-z0-9_]{1,40}"

replica_state = Table(
    "replica_state", metadata,
    Column("replica_id", Text, primary_key=True),
    Column("current_facility_uuid", UUID(as_uuid=True), nullable=True),
    Column("sync_group_switched_at", TIMESTAMPTZ, nullable=True),
    Column("last_maintenance_at", TIMESTAMPTZ, nullable=True),
    CheckConstraint(f"replica_id ~ '^{REPLICA_ID_PATTERN}$'", name="replica_id"),
)

# Shared by every domain: the sync-complete sensor reads newly finished rows (§1.8).
sync_runs = Table(
    "sync_runs", metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("source", Text, nullable=False),
    Column("replica_id", Text, nullable=True),
    Column("started_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("finished_at", TIMESTAMPTZ, nullable=True),
    Column("all_succeeded", Boolean, nullable=False, server_default=sa.false()),
    Column("touched", JSONB, nullable=True),  # patient ids or facility codes the sync changed
    CheckConstraint(_in("source", SYNC_SOURCES), name="source"),
    CheckConstraint("source <> 'replica' OR replica_id IS NOT NULL", name="replica_id"),
    Index(None, "finished_at", "id"),
)

prune_runs = Table(
    "prune_runs", metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("replica_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("sync_run_id", BigInteger, nullable=True),  # the sync that triggered a sync-group prune
    Column("started_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("finished_at", TIMESTAMPTZ, nullable=True),
    Column("deleted", JSONB, nullable=True),  # {table: rows deleted}
    Column("skipped_reason", Text, nullable=True),
    CheckConstraint(_in("kind", PRUNE_KINDS), name="kind"),
    Index(None, "replica_id", "started_at"),
)


# =============================================================================================
# §5 SimpleReport: multiplex results backfill
# =============================================================================================


def _audit_columns() -> list[Column]:
    """SimpleReport's audit columns (`created_by`/`updated_by` are api_user ids upstream)."""
    return [
        Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
        Column("created_by", UUID(as_uuid=True), nullable=True),
        Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
        Column("updated_by", UUID(as_uuid=True), nullable=True),
    ]


supported_disease = Table(
    "supported_disease", metadata,
    _uuid_id("internal_id"),
    Column("name", Text, nullable=False, unique=True),
    Column("loinc", Text, nullable=False, unique=True),
)

test_order = Table(
    "test_order", metadata,
    _uuid_id("internal_id"),
    *_audit_columns(),
    Column("result", Text, nullable=True),
    # The order's current event. test_order and test_event refer to each other, so this
    # foreign key is added after both tables exist (use_alter).
    Column("test_event_id", UUID(as_uuid=True),
           ForeignKey("test_event.internal_id", use_alter=True, name="fk_test_order_test_event_id"),
           nullable=True, unique=True),
    CheckConstraint("result IS NULL OR " + _in("result", TEST_RESULTS), name="result"),
    Index(None, "created_at"),
)

test_event = Table(
    "test_event", metadata,
    _uuid_id("internal_id"),
    *_audit_columns(),
    Column("test_order_id", UUID(as_uuid=True), ForeignKey("test_order.internal_id"), nullable=False, index=True),
    Column("result", Text, nullable=True),
    Column("correction_status", Text, nullable=False, server_default=text("'ORIGINAL'")),
    Column("prior_corrected_test_event_id", UUID(as_uuid=True), ForeignKey("test_event.internal_id"), nullable=True),
    CheckConstraint("result IS NULL OR " + _in("result", TEST_RESULTS), name="result"),
    CheckConstraint(_in("correction_status", CORRECTION_STATUSES), name="correction_status"),
    Index(None, "created_at"),
)

result = Table(
    "result", metadata,
    _uuid_id("internal_id"),
    *_audit_columns(),
    Column("is_deleted", Boolean, nullable=False, server_default=sa.false()),
    Column("test_event_id", UUID(as_uuid=True), ForeignKey("test_event.internal_id"), nullable=True, index=True),
    Column("test_order_id", UUID(as_uuid=True), ForeignKey("test_order.internal_id"), nullable=True, index=True),
    Column("disease_id", UUID(as_uuid=True), ForeignKey("supported_disease.internal_id"), nullable=False,
           index=True),
    Column("result", Text, nullable=False),  # SNOMED code
    Column("test_result", Text, nullable=False),
    # NULLs are distinct in Postgres, so this does not stop duplicates when an id is NULL:
    # the backfill's anti-join does that (§5.4 rule 3).
    UniqueConstraint("test_event_id", "test_order_id", "disease_id"),
    CheckConstraint(_in("test_result", TEST_RESULTS), name="test_result"),
)

# SNOMED code stored in result.result for each test_result (§5.3).
SNOMED_BY_TEST_RESULT = {
    "POSITIVE": "260373001",
    "NEGATIVE": "260415000",
    "UNDETERMINED": "455371000124106",
}


# =============================================================================================
# Alerts (run failures, letters still created)
# =============================================================================================

alerts = Table(
    "alerts", metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=_now()),
    Column("run_id", Text, nullable=True),
    Column("message", Text, nullable=False),
    Column("details", JSONB, nullable=True),
    Index(None, "kind", "created_at"),
)


# =============================================================================================
# §3.5 Simple replica tables: one Postgres schema per replica
# =============================================================================================

# schema=None here; create_replica_schema maps it to "replica_<id>" at execution time.
replica_metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sync_status() -> Column:
    return Column("sync_status", Text, nullable=False)


def _sync_status_check() -> CheckConstraint:
    return CheckConstraint(_in("sync_status", SYNC_STATUSES), name="sync_status")


replica_facility = Table(
    "facility", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("sync_group", Text, nullable=True, index=True),
)

replica_patient_address = Table(
    "patient_address", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
)

replica_patient = Table(
    "patient", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("address_uuid", UUID(as_uuid=True), ForeignKey("patient_address.uuid"), nullable=False, index=True),
    Column("registered_facility_id", UUID(as_uuid=True), nullable=True, index=True),
    Column("assigned_facility_id", UUID(as_uuid=True), nullable=True, index=True),
    _sync_status(),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
    Column("retain_until", TIMESTAMPTZ, nullable=True),
    _sync_status_check(),
)

replica_patient_phone_number = Table(
    "patient_phone_number", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("patient_uuid", UUID(as_uuid=True), ForeignKey("patient.uuid", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
)

replica_business_id = Table(
    "business_id", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("patient_uuid", UUID(as_uuid=True), ForeignKey("patient.uuid", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
)

# Like Simple's Room database, these have no foreign key to patient: rows may arrive before
# their patient, and orphans are purged explicitly (DONE only).
replica_appointment = Table(
    "appointment", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("patient_uuid", UUID(as_uuid=True), nullable=False),
    Column("facility_uuid", UUID(as_uuid=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
    _sync_status(),
    CheckConstraint(_in("status", APPOINTMENT_STATUSES), name="status"),
    _sync_status_check(),
    Index(None, "patient_uuid", "created_at", "uuid"),  # "latest appointment per patient"
)


def _patient_child_table(name: str) -> Table:
    """A replica table of soft-deletable per-patient rows (no foreign key to patient)."""
    return Table(
        name, replica_metadata,
        Column("uuid", UUID(as_uuid=True), primary_key=True),
        Column("patient_uuid", UUID(as_uuid=True), nullable=False, index=True),
        Column("deleted_at", TIMESTAMPTZ, nullable=True),
        _sync_status(),
        _sync_status_check(),
    )


replica_blood_pressure_measurement = _patient_child_table("blood_pressure_measurement")
replica_blood_sugar_measurement = _patient_child_table("blood_sugar_measurement")
replica_medical_history = _patient_child_table("medical_history")
replica_call_result = _patient_child_table("call_result")

replica_prescribed_drug = Table(
    "prescribed_drug", replica_metadata,
    Column("uuid", UUID(as_uuid=True), primary_key=True),
    Column("patient_uuid", UUID(as_uuid=True), nullable=False, index=True),
    Column("is_deleted", Boolean, nullable=False, server_default=sa.false()),
    _sync_status(),
    _sync_status_check(),
)

_REPLICA_ID_RE = re.compile(rf"^{REPLICA_ID_PATTERN}$")


def replica_schema_name(replica_id: str) -> str:
    """The Postgres schema of a replica: "replica_" + id.

    The id is validated (lower-case letters, digits, underscore; 1–40 characters) because it
    becomes part of SQL identifiers.
    """
    if not isinstance(replica_id, str) or not _REPLICA_ID_RE.match(replica_id):
        raise ValueError(
            f"replica id must be 1-40 lower-case letters, digits or underscores, got {replica_id!r}"
        )
    return f"replica_{replica_id}"


@contextmanager
def replica_connection(conn: sa.Connection, replica_id: str) -> Iterator[sa.Connection]:
    """Within the block, `conn` runs the replica tables (`replica_metadata`) in the replica's schema.

    SQLAlchemy 2 changes a Connection's execution options in place, so the schema translation
    is undone on exit; otherwise the caller's later statements on public tables would be sent
    to the replica schema too.

        with replica_connection(conn, "north") as replica:
            replica.execute(sa.delete(replica_patient).where(...))
    """
    previous = conn.get_execution_options().get("schema_translate_map")
    conn.execution_options(schema_translate_map={None: replica_schema_name(replica_id)})
    try:
        yield conn
    finally:
        conn.execution_options(schema_translate_map=previous)


def create_replica_schema(conn: sa.Connection, replica_id: str) -> str:
    """Create the replica's schema and tables if they do not exist; return the schema name.

    Idempotent. Runs in the caller's transaction (the caller commits).
    """
    name = replica_schema_name(replica_id)
    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{name}"'))
    with replica_connection(conn, replica_id) as replica:
        replica_metadata.create_all(replica, checkfirst=True)
    return name


def drop_replica_schema(conn: sa.Connection, replica_id: str) -> None:
    """Drop the replica's schema and everything in it, if it exists."""
    name = replica_schema_name(replica_id)
    conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


# Every column that holds personal data, as "table.column" (public tables and replica tables).
PII_COLUMNS = tuple(
    f"{table.name}.{column.name}"
    for md in (metadata, replica_metadata)
    for table in md.sorted_tables
    for column in table.columns
    if column.info.get("pii")
)
