"""The one module that owns time: London days, the academic year, cut-offs, retention.

Instants are UTC `datetime`s; "day" means a Europe/London calendar date. Every run reads
`now` once, when it starts, via `now_utc()`; tests and demos inject it either by passing
`now` explicitly or by setting PSO_NOW (an ISO-8601 instant) for a whole process tree.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from orchestration.settings import frozen_now

LONDON = ZoneInfo("Europe/London")
UTC = timezone.utc

LETTER_CUTOFF = time(17, 30)  # letters created before 17:30 London go in that day's print batch
STATUS_REFRESH_DEADLINE = time(6, 0)  # the 03:00 London full status refresh must be done by 06:00 London
ACADEMIC_YEAR_START_MONTH = 9  # the academic year starts on 1 September
DEFAULT_RETENTION_DAYS = 7
DEEP_ARCHIVE_AGE = timedelta(days=365)  # notification_history older than this goes to S3


def now_utc() -> datetime:
    """The current instant in UTC, or PSO_NOW when set (for tests and replaying a day)."""
    frozen = frozen_now()
    return frozen.astimezone(UTC) if frozen else datetime.now(UTC)


def as_utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("naive datetime: instants must carry a timezone")
    return instant.astimezone(UTC)


def london_date(instant: datetime) -> date:
    """The Europe/London calendar date of an instant (never the UTC date)."""
    return as_utc(instant).astimezone(LONDON).date()


def london_today(now: datetime | None = None) -> date:
    return london_date(now or now_utc())


def london_midnight_utc(day: date) -> datetime:
    """00:00 London on `day`, in UTC (2024-07-03 → 2024-07-02T23:00Z)."""
    return datetime.combine(day, time(0), tzinfo=LONDON).astimezone(UTC)


def london_day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a London day in UTC; 23 or 25 hours long on clock-change days."""
    return london_midnight_utc(day), london_midnight_utc(day + timedelta(days=1))


def academic_year(day: date) -> int:
    return day.year if day.month >= ACADEMIC_YEAR_START_MONTH else day.year - 1


def academic_year_sql(day: str) -> str:
    """SQL for `academic_year` of the SQL date expression `day` (the same rule, for set-based queries)."""
    return (f"(extract(year FROM {day})::int - "
            f"CASE WHEN extract(month FROM {day}) < {ACADEMIC_YEAR_START_MONTH} THEN 1 ELSE 0 END)")


def london_date_sql(instant: str) -> str:
    """SQL for `london_date` of the SQL timestamptz expression `instant` (never its UTC date)."""
    return f"({instant} AT TIME ZONE 'Europe/London')::date"


def academic_year_start(day: date) -> date:
    """1 September of the academic year that `day` falls in."""
    return date(academic_year(day), ACADEMIC_YEAR_START_MONTH, 1)


def year_group(birth_academic_year: int, today: date) -> int:
    return academic_year(today) - birth_academic_year - 5


def retention_cutoff(days_of_retention: int, today: date) -> datetime:
    """Rows created before this instant are past retention: the last `days` whole days plus today stay."""
    return london_midnight_utc(today - timedelta(days=days_of_retention))


def utc_hour_start(instant: datetime) -> datetime:
    """The start of the UTC hour holding `instant` (10:59:59.999999 → 10:00)."""
    return as_utc(instant).replace(minute=0, second=0, microsecond=0)


def deep_archive_limit(now: datetime) -> datetime:
    """now − 365 days, truncated down to the hour: only whole hours wholly before it are deep-archived
    (at 10:11 a row created at exactly 10:00 of the day 365 days back stays)."""
    return utc_hour_start(as_utc(now) - DEEP_ARCHIVE_AGE)


def letter_deadline(now: datetime) -> datetime:
    """17:30 London today if it is at or after 17:30 London, else 17:30 London yesterday (UTC)."""
    local = as_utc(now).astimezone(LONDON)
    day = local.date() if local.time() >= LETTER_CUTOFF else local.date() - timedelta(days=1)
    return datetime.combine(day, LETTER_CUTOFF, tzinfo=LONDON).astimezone(UTC)


def print_date(now: datetime) -> date:
    return london_date(letter_deadline(now))


def age_on(birth: date, day: date) -> int:
    """Whole years on `day`, as Mavis counts them (AgeConcern#age): a year is complete once `day`'s
    (month, day) reaches the birth's, so a 29 February birthday is reached on 1 March in other years."""
    return day.year - birth.year - (1 if (day.month, day.day) < (birth.month, birth.day) else 0)


def letter_deadline_on(day: date) -> datetime:
    """17:30 London on print day `day`, in UTC: the deadline of that day's letter collation."""
    return datetime.combine(day, LETTER_CUTOFF, tzinfo=LONDON).astimezone(UTC)


def letter_pdf_folder(created_at: datetime) -> date:
    """Folder (a London date) of a letter's PDF: the London date of `created_at`, plus one day if the
    London time was after 17:30 (strictly, as upstream's get_folder_name)."""
    local = as_utc(created_at).astimezone(LONDON)
    return local.date() + timedelta(days=1) if local.time() > LETTER_CUTOFF else local.date()


def status_refresh_deadline(day: date) -> datetime:
    """06:00 London on `day`, in UTC: by then that day's 03:00 full status refresh must have succeeded."""
    return datetime.combine(day, STATUS_REFRESH_DEADLINE, tzinfo=LONDON).astimezone(UTC)
