"""§4.5 alert: normal letters still `created` before the previous day's deadline."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa

from assets.letters.selection import format_ids
from orchestration.alerts import raise_alert
from orchestration.clock import LONDON, letter_deadline_on, london_today

log = logging.getLogger(__name__)

ALERT_KIND = "letters_still_created"
def letters_still_created(conn: sa.Connection, now: datetime) -> tuple[datetime, list[uuid.UUID]]:
    deadline = letter_deadline_on(london_today(now) - timedelta(days=1))
    ids = conn.execute(sa.text("""
        SELECT id FROM notifications
        WHERE notification_type = 'letter' AND notification_status = 'created' AND key_type = 'normal'
          AND created_at < :deadline
        ORDER BY created_at, id"""), {"deadline": deadline}).scalars().all()
    conn.commit()
    return deadline, list(ids)


def record_letters_still_created_alert(conn: sa.Connection, now: datetime, run_id: str | None = None,
                                       echo: Callable[[str], None] = log.warning) -> int:
    """Record one `alerts` row (ids only, no personal data) when letters are stuck; returns their count."""
    deadline, ids = letters_still_created(conn, now)
    if not ids:
        return 0
    message = (f"{len(ids)} letters still created after the {deadline.astimezone(LONDON):%Y-%m-%d %H:%M} London "
               f"deadline: {format_ids(ids)}")
    raise_alert(conn, ALERT_KIND, message, {"count": len(ids), "deadline": deadline.isoformat(),
                                            "notification_ids": [str(i) for i in ids]}, run_id=run_id)
    echo(message)
    return len(ids)

