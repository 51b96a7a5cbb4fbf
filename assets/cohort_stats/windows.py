"""The two stats windows (domain.md §2.4): inclusive London dates, naive local bounds like the UKRDC columns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta


@dataclass(frozen=True)
class Window:
    name: str  # "w1" | "w2"
    start: date  # inclusive London dates
    end: date
    # The London day the windows were drawn for (the run's or the reader's today; the end when not
    # given). Demographics describe that day for every window (§2.4); it is not part of a cache key.
    today: date | None = None

    @property
    def as_of(self) -> date:
        return self.today or self.end

    @property
    def start_at(self) -> datetime:  # naive local timestamps, like the UKRDC columns
        return datetime.combine(self.start, datetime.min.time())

    @property
    def end_exclusive(self) -> datetime:  # 00:00 the day after: [start, end 23:59:59.999999]
        return datetime.combine(self.end + timedelta(days=1), datetime.min.time())


def quarter_start(day: date) -> date:
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def stats_windows(today: date) -> list[Window]:
    """W1 = [today − 90 d, today]; W2 = [q − 90 d, q] (q = first day of the quarter); once if q = today."""
    q = quarter_start(today)
    windows = [Window("w1", today - timedelta(days=90), today, today)]
    if q != today:
        windows.append(Window("w2", q - timedelta(days=90), q, today))
    return windows


def window_named(today: date, name: str) -> Window:
    """W1 or W2 of `today` (the same dates when q = today)."""
    name = name.lower()
    if name == "w1":
        return Window("w1", today - timedelta(days=90), today, today)
    if name == "w2":
        q = quarter_start(today)
        return Window("w2", q - timedelta(days=90), q, today)
    raise ValueError(f"window must be w1 or w2, got {name!r}")
