"""What the history archives check (domain.md §3.2–3.3): conservation counts, input the archive refuses,
no personal data in the history tables, no pending letter archived — plain queries and their asset checks."""

from datetime import datetime

import sqlalchemy as sa
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from assets.history.rules import PENDING_LETTER_STATUSES
from orchestration import schema
from orchestration.patterns.archive import count_where
from resources.postgres import PostgresResource

WINDOW_SQL = ("(CAST(:window_start AS timestamptz) IS NULL OR created_at >= CAST(:window_start AS timestamptz)) "
              "AND created_at < CAST(:window_end AS timestamptz)")
PII_COLUMN_NAMES = {c.split(".", 1)[1] for c in schema.PII_COLUMNS if c.split(".", 1)[0] in ("notifications", "inbound_sms")}


def notification_counts(conn: sa.Connection, window_start: datetime | None, window_end: datetime) -> dict[str, int]:
    """Rows of the window in the live table, in history, and in the deep archive (manifests of deleted hours)."""
    params = {"window_start": window_start, "window_end": window_end}
    counts = {
        "live": count_where(conn, "notifications", WINDOW_SQL, params),
        "history": count_where(conn, "notification_history", WINDOW_SQL, params),
        "deep_archived": conn.execute(sa.text(
            "SELECT CAST(COALESCE(sum(row_count), 0) AS bigint) FROM deep_archive_manifests WHERE deleted_at IS NOT NULL "
            "AND (CAST(:window_start AS timestamptz) IS NULL OR hour_start >= CAST(:window_start AS timestamptz)) "
            "AND hour_start < CAST(:window_end AS timestamptz)"), params).scalar_one(),
    }
    conn.commit()
    return counts


def inbound_sms_count(conn: sa.Connection, window_start: datetime | None, window_end: datetime) -> int:
    """Rows of the window in inbound_sms plus inbound_sms_history."""
    params = {"window_start": window_start, "window_end": window_end}
    total = count_where(conn, "inbound_sms", WINDOW_SQL, params) + \
        count_where(conn, "inbound_sms_history", WINDOW_SQL, params)
    conn.commit()
    return total


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


asset_checks = [notification_history_has_no_pii, inbound_sms_history_has_no_pii, no_pending_letter_archived,
                notification_bad_input]
