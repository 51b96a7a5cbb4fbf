"""Rule 2 (domain.md §4.4): which letters the collation takes, in one set-based query."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa


@dataclass(frozen=True)
class Letter:
    id: uuid.UUID
    service_id: uuid.UUID
    organisation_id: uuid.UUID | None
    reference: str
    postage: str
    billable_units: int
    created_at: datetime


SELECT_LETTERS = sa.text("""
    SELECT n.id, n.service_id, s.organisation_id, n.reference, n.postage, n.billable_units, n.created_at
    FROM notifications n
    JOIN services s ON s.id = n.service_id
    WHERE n.notification_type = 'letter'
      AND n.notification_status = 'created'
      AND n.key_type = 'normal'
      AND n.billable_units > 0
      AND n.created_at < :deadline          -- no lower bound: earlier days' stragglers are swept too
      AND n.postage IS NOT NULL AND n.reference IS NOT NULL  -- cannot be named or located otherwise
      AND NOT EXISTS (SELECT 1 FROM letter_batch_items i WHERE i.notification_id = n.id)
    ORDER BY n.postage, n.service_id, n.created_at, n.id
""")


def select_letters(conn: sa.Connection, deadline: datetime) -> list[Letter]:
    rows = conn.execute(SELECT_LETTERS, {"deadline": deadline}).all()
    conn.commit()
    return [Letter(*row) for row in rows]
