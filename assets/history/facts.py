"""`ft_notification_status` (domain.md §3.4): daily counts per (template, job, key type, status), rebuilt
per (day, type, service) from `notifications_all_time_view`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

import sqlalchemy as sa

from orchestration import schema
from orchestration.clock import london_day_bounds

FACT_DAYS_BACK = {"email": 4, "sms": 4, "letter": 10}

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
