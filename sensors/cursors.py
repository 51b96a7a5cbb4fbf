"""The sensors' cursor over their own tables: a high-water mark with a look-back.

Postgres commits rows out of order (a transaction that started first can commit last), so
"id > last id" or "timestamp > last timestamp" would skip rows. The cursor keeps the highest
timestamp seen plus the ids already handled inside a look-back window before it; a tick reads
rows from `since` on and leaves out the ids it has seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

LOOK_BACK = timedelta(minutes=10)
MAX_SEEN_IDS = 5000  # bounded: older ids fall before `since` anyway


@dataclass
class HighWaterCursor:
    watermark: datetime | None = None
    seen_ids: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> "HighWaterCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        mark = data.get("watermark")
        return cls(datetime.fromisoformat(mark) if mark else None, list(data.get("seen_ids", [])))

    def dump(self) -> str:
        return json.dumps({"watermark": self.watermark.isoformat() if self.watermark else None,
                           "seen_ids": sorted(self.seen_ids)})

    @property
    def since(self) -> datetime | None:
        """Read rows at or after this instant (None: from the beginning)."""
        return self.watermark - LOOK_BACK if self.watermark else None

    def advance(self, handled: list[tuple[int, datetime]]) -> "HighWaterCursor":
        """The cursor after handling these (id, timestamp) rows."""
        if not handled:
            return self
        watermark = max([at for _, at in handled] + ([self.watermark] if self.watermark else []))
        recent = {row_id for row_id, at in handled if at >= watermark - LOOK_BACK}
        return HighWaterCursor(watermark, sorted(set(self.seen_ids[-MAX_SEEN_IDS:]) | recent))
