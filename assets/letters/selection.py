"""Rule 2 (domain.md §4.4): which letters the collation takes, in one set-based query; and, as the other
side of it, the letters waiting for a print run that no collation can take as they stand, with why."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from assets.letters.keys import KEY_SAFE_REFERENCE, MAX_REFERENCE_LENGTH


@dataclass(frozen=True)
class Letter:
    id: uuid.UUID
    service_id: uuid.UUID
    organisation_id: uuid.UUID | None
    reference: str
    postage: str
    billable_units: int
    created_at: datetime


ID_LIST_LIMIT = 100  # ids shown in metadata/log lines; the counts are always complete


def format_ids(ids: list[uuid.UUID]) -> str:
    shown = ", ".join(str(i) for i in ids[:ID_LIST_LIMIT])
    return shown + (f" … (+{len(ids) - ID_LIST_LIMIT} more)" if len(ids) > ID_LIST_LIMIT else "")


# The letters rule 2 looks at: waiting normal letters created before the deadline (no lower bound:
# earlier days' stragglers are swept too), not already in a batch.
WAITING = """
    n.notification_type = 'letter'
      AND n.notification_status = 'created'
      AND n.key_type = 'normal'
      AND n.created_at < :deadline
      AND NOT EXISTS (SELECT 1 FROM letter_batch_items i WHERE i.notification_id = n.id)
"""
# Why a waiting letter cannot be collated as it stands (NULL when it can): it has no reference or postage
# to name and locate its PDF, no sheets (stuck before validation), or a reference that cannot form a key.
REASONS = """
    array_remove(ARRAY[
        CASE WHEN n.reference IS NULL THEN 'no_reference'
             WHEN n.reference !~ :key_safe OR length(n.reference) > :max_reference THEN 'reference_not_a_key' END,
        CASE WHEN n.postage IS NULL THEN 'no_postage' END,
        CASE WHEN n.billable_units <= 0 THEN 'no_sheets' END
    ], NULL)
"""
BLOCKED = """(n.reference IS NULL OR n.reference !~ :key_safe OR length(n.reference) > :max_reference
              OR n.postage IS NULL OR n.billable_units <= 0)"""
PARAMETERS = {"key_safe": KEY_SAFE_REFERENCE, "max_reference": MAX_REFERENCE_LENGTH}

SELECT_LETTERS = sa.text(f"""
    SELECT n.id, n.service_id, s.organisation_id, n.reference, n.postage, n.billable_units, n.created_at
    FROM notifications n
    JOIN services s ON s.id = n.service_id
    WHERE {WAITING} AND NOT {BLOCKED}
    ORDER BY n.postage, n.service_id, n.created_at, n.id
""")

SELECT_UNBATCHABLE = sa.text(f"""
    SELECT n.id, {REASONS} AS reasons
    FROM notifications n
    WHERE {WAITING} AND {BLOCKED}
    ORDER BY n.created_at, n.id
""")


def select_letters(conn: sa.Connection, deadline: datetime) -> list[Letter]:
    rows = conn.execute(SELECT_LETTERS, {"deadline": deadline, **PARAMETERS}).all()
    conn.commit()
    return [Letter(*row) for row in rows]


def unbatchable_letters(conn: sa.Connection, deadline: datetime) -> list[tuple[uuid.UUID, list[str]]]:
    """(notification id, reasons) of every waiting letter before `deadline` that no collation can take as
    it stands — the letters rule 2 passes over apart from those already batched. Reasons: `no_reference`,
    `reference_not_a_key`, `no_postage`, `no_sheets` (billable units ≤ 0)."""
    rows = conn.execute(SELECT_UNBATCHABLE, {"deadline": deadline, **PARAMETERS}).all()
    conn.commit()
    return [(notification_id, list(reasons)) for notification_id, reasons in rows]
