"""§1 Mavis: the source tables, the cached patient statuses, their status codes and the
refresh-request queue (docs/domain.md §1).
"""

from __future__ import annotations

import enum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from orchestration.schema.base import (
    PII,
    TIMESTAMPTZ,
    enum_codes,
    id_column,
    metadata,
    now_default,
    sql_in,
)

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


# String value sets (text columns with CHECK constraints).
PROGRAMME_TYPES = ("flu", "hpv", "menacwy", "td_ipv")

# Ids each connection takes at once from a status table's sequence: a refresh inserts up to 10,000 rows
# per table and batch on each of its connections, which otherwise share one sequence page per row.
STATUS_ID_CACHE = 1000


# =============================================================================================
# §1 Mavis: cached patient statuses
# =============================================================================================

programmes = Table(
    "programmes", metadata,
    id_column(),
    Column("type", Text, nullable=False, unique=True),
    CheckConstraint(sql_in("type", PROGRAMME_TYPES), name="type"),
)

patients = Table(
    "patients", metadata,
    id_column(),
    Column("given_name", Text, nullable=False, info=PII),
    Column("family_name", Text, nullable=False, info=PII),
    Column("date_of_birth", Date, nullable=False, info=PII),
    Column("birth_academic_year", Integer, nullable=False),
)

parents = Table(
    "parents", metadata,
    id_column(),
    Column("full_name", Text, nullable=True, info=PII),
)

sessions = Table(
    "sessions", metadata,
    id_column(),
)

session_programmes = Table(
    "session_programmes", metadata,
    id_column(),
    Column("session_id", BigInteger, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("programme_id", BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), nullable=False),
    # The programme-added sensor keeps a high-water mark on `id`; created_at lets it look back
    # over rows whose transactions committed out of id order.
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    UniqueConstraint("session_id", "programme_id"),
)

session_dates = Table(
    "session_dates", metadata,
    id_column(),
    Column("session_id", BigInteger, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("value", Date, nullable=False),
    UniqueConstraint("session_id", "value"),
    Index(None, "value"),  # the day-change sensor looks up the sessions held on given dates
)

patient_sessions = Table(
    "patient_sessions", metadata,
    id_column(),
    Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("session_id", BigInteger, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    UniqueConstraint("patient_id", "session_id"),
    Index(None, "session_id"),
)

session_attendances = Table(
    "session_attendances", metadata,
    id_column(),
    Column("patient_session_id", BigInteger, ForeignKey("patient_sessions.id", ondelete="CASCADE"),
           nullable=False),
    Column("session_date_id", BigInteger, ForeignKey("session_dates.id", ondelete="CASCADE"), nullable=False),
    Column("attending", Boolean, nullable=False),
    UniqueConstraint("patient_session_id", "session_date_id"),
    Index(None, "session_date_id"),
)

consents = Table(
    "consents", metadata,
    id_column(),
    Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("programme_id", BigInteger, ForeignKey("programmes.id"), nullable=False),
    Column("parent_id", BigInteger, ForeignKey("parents.id"), nullable=True),
    Column("response", SmallInteger, nullable=False),
    Column("route", SmallInteger, nullable=False),
    # [{"question": ..., "response": ...}]: a child's health answers are personal data.
    Column("health_answers", JSONB, nullable=False, server_default=text("'[]'::jsonb"), info=PII),
    Column("invalidated_at", TIMESTAMPTZ),
    Column("withdrawn_at", TIMESTAMPTZ),
    Column("submitted_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    # statuses-v2 C2 (migration 0006): the academic year the consent is for; NULL = derive it.
    Column("academic_year", SmallInteger, nullable=True),
    CheckConstraint(sql_in("response", enum_codes(ConsentResponse)), name="response"),
    CheckConstraint(sql_in("route", enum_codes(ConsentRoute)), name="route"),
    Index(None, "patient_id", "programme_id"),
)

triages = Table(
    "triages", metadata,
    id_column(),
    Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("programme_id", BigInteger, ForeignKey("programmes.id"), nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("invalidated_at", TIMESTAMPTZ),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    # statuses-v2 C2 and D2 (migration 0006): the triage's academic year (NULL = derive it), and the
    # earliest date a delayed child may be vaccinated.
    Column("academic_year", SmallInteger, nullable=True),
    Column("delay_vaccination_until", Date, nullable=True),
    CheckConstraint(sql_in("status", enum_codes(TriageStatusInput)), name="status"),
    Index(None, "patient_id", "programme_id"),
    # The day-change sensor looks up the delays ending on the days it handles.
    Index(None, "delay_vaccination_until", postgresql_where=text("delay_vaccination_until IS NOT NULL")),
)

vaccination_records = Table(
    "vaccination_records", metadata,
    id_column(),
    Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("programme_id", BigInteger, ForeignKey("programmes.id"), nullable=False),
    Column("session_id", BigInteger, ForeignKey("sessions.id"), nullable=True),
    Column("outcome", SmallInteger, nullable=False),
    Column("performed_at", TIMESTAMPTZ, nullable=False),
    Column("dose_sequence", SmallInteger, nullable=True),
    Column("discarded_at", TIMESTAMPTZ),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    CheckConstraint(sql_in("outcome", enum_codes(VaccinationOutcome)), name="outcome"),
    Index(None, "patient_id", "programme_id"),
    Index(None, "session_id"),
)


def _patient_status_table(name: str, codes: type[enum.IntEnum]) -> Table:
    """A cached per-(patient, programme) status table (§1.3)."""
    return Table(
        name, metadata,
        id_column(STATUS_ID_CACHE),
        Column("patient_id", BigInteger, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
        # No foreign key to programmes (§1.3 names patients / patient_sessions only; migration 0003).
        Column("programme_id", BigInteger, nullable=False),
        Column("status", SmallInteger, nullable=False, server_default=text("0"), index=True),
        UniqueConstraint("patient_id", "programme_id"),
        CheckConstraint(sql_in("status", enum_codes(codes)), name="status"),
    )


patient_consent_statuses = _patient_status_table("patient_consent_statuses", ConsentStatus)
patient_triage_statuses = _patient_status_table("patient_triage_statuses", TriageStatus)
patient_vaccination_statuses = _patient_status_table("patient_vaccination_statuses", VaccinationStatus)

patient_session_session_statuses = Table(
    "patient_session_session_statuses", metadata,
    id_column(STATUS_ID_CACHE),
    Column("patient_session_id", BigInteger, ForeignKey("patient_sessions.id", ondelete="CASCADE"),
           nullable=False),
    Column("programme_id", BigInteger, nullable=False),  # no foreign key: see _patient_status_table
    Column("status", SmallInteger, nullable=False, server_default=text("0"), index=True),
    UniqueConstraint("patient_session_id", "programme_id", name="uq_patient_session_session_statuses_key"),
    CheckConstraint(sql_in("status", enum_codes(SessionStatus)), name="status"),
)

patient_session_registration_statuses = Table(
    "patient_session_registration_statuses", metadata,
    id_column(STATUS_ID_CACHE),
    Column("patient_session_id", BigInteger, ForeignKey("patient_sessions.id", ondelete="CASCADE"),
           nullable=False, unique=True),
    Column("status", SmallInteger, nullable=False, server_default=text("0"), index=True),
    CheckConstraint(sql_in("status", enum_codes(RegistrationStatus)), name="status"),
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
    Column("requested_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    Column("processed_at", TIMESTAMPTZ, nullable=True),
    CheckConstraint(sql_in("scope", enum_codes(RefreshScope)), name="scope"),
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
    Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=now_default()),
    CheckConstraint("id = 1", name="single_row"),
)
