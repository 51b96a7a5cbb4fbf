"""The archive rules of the Notify history family (domain.md §3.1–3.3): which rows are past retention.

Each archive is an instance of the one archive mechanism (`orchestration.patterns.archive`): a few
lines of SQL and configuration (tables, columns, batch sizes). `notification_archive_units` lists the
(service, type) units of a night's notification archive, each with its own cutoff.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa

from orchestration import schema
from orchestration.clock import DEFAULT_RETENTION_DAYS, retention_cutoff
from orchestration.patterns.archive import ArchiveRule

NOTIFICATION_BATCH_SIZE = 50_000
LETTER_BATCH_SIZE = 5_000
INBOUND_SMS_BATCH_SIZE = 10_000
PENDING_LETTER_STATUSES = ("pending-virus-check", "created", "sending")
# The nightly runs cover this many days of created_at; upstream's longest retention is 90 days.
NIGHTLY_LOOKBACK_DAYS = 100


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


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
