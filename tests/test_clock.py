from datetime import date, datetime, timezone

import pytest

from orchestration.clock import (
    academic_year,
    age_on,
    letter_deadline,
    london_date,
    london_midnight_utc,
    now_utc,
    print_date,
    retention_cutoff,
    year_group,
)

UTC = timezone.utc


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2024, 7, 3), datetime(2024, 7, 2, 23, 0, tzinfo=UTC)),  # BST
        (date(2024, 1, 3), datetime(2024, 1, 3, 0, 0, tzinfo=UTC)),  # GMT
        (date(2024, 3, 31), datetime(2024, 3, 31, 0, 0, tzinfo=UTC)),  # clocks go forward at 01:00 that day
        (date(2024, 10, 27), datetime(2024, 10, 26, 23, 0, tzinfo=UTC)),  # clocks go back that day
    ],
)
def test_london_midnight_utc(day, expected):
    assert london_midnight_utc(day) == expected


def test_london_date_is_not_the_utc_date():
    assert london_date(datetime(2024, 7, 2, 23, 30, tzinfo=UTC)) == date(2024, 7, 3)
    assert london_date(datetime(2024, 1, 2, 23, 30, tzinfo=UTC)) == date(2024, 1, 2)


@pytest.mark.parametrize(
    ("day", "year"), [(date(2025, 8, 31), 2024), (date(2025, 9, 1), 2025), (date(2026, 1, 15), 2025)]
)
def test_academic_year_starts_on_1_september(day, year):
    assert academic_year(day) == year


def test_year_group():
    # born in academic year 2012 → year 8 in academic year 2025
    assert year_group(2012, date(2025, 10, 1)) == 8
    assert year_group(2012, date(2025, 8, 31)) == 7


@pytest.mark.parametrize(
    ("now", "deadline"),
    [
        (datetime(2025, 6, 10, 16, 29, tzinfo=UTC), datetime(2025, 6, 9, 16, 30, tzinfo=UTC)),  # 17:29 BST
        (datetime(2025, 6, 10, 16, 30, tzinfo=UTC), datetime(2025, 6, 10, 16, 30, tzinfo=UTC)),  # 17:30 BST
        (datetime(2025, 6, 10, 16, 31, tzinfo=UTC), datetime(2025, 6, 10, 16, 30, tzinfo=UTC)),
        (datetime(2025, 1, 10, 17, 29, tzinfo=UTC), datetime(2025, 1, 9, 17, 30, tzinfo=UTC)),  # 17:29 GMT
        (datetime(2025, 1, 10, 17, 30, tzinfo=UTC), datetime(2025, 1, 10, 17, 30, tzinfo=UTC)),
        # the first Monday after the clocks went forward: Sunday 30 March 17:30 was already BST
        (datetime(2025, 3, 31, 9, 0, tzinfo=UTC), datetime(2025, 3, 30, 16, 30, tzinfo=UTC)),
    ],
)
def test_letter_deadline(now, deadline):
    assert letter_deadline(now) == deadline
    assert print_date(now) == london_date(deadline)


def test_retention_cutoff_keeps_whole_local_days_plus_today():
    assert retention_cutoff(7, date(2024, 7, 10)) == datetime(2024, 7, 2, 23, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("birth", "day", "age"),
    [
        (date(2012, 2, 29), date(2023, 2, 28), 10),  # as Mavis: a leap-day birthday is reached on 1 March
        (date(2012, 2, 29), date(2023, 3, 1), 11),
        (date(2012, 2, 29), date(2024, 2, 28), 11),  # leap year: birthday is the 29th
        (date(2012, 2, 29), date(2024, 2, 29), 12),
        (date(2010, 9, 1), date(2020, 8, 31), 9),
    ],
)
def test_age_on(birth, day, age):
    assert age_on(birth, day) == age


def test_now_can_be_injected(monkeypatch):
    monkeypatch.setenv("PSO_NOW", "2025-09-01T06:00:00+01:00")
    assert now_utc() == datetime(2025, 9, 1, 5, 0, tzinfo=UTC)
    monkeypatch.setenv("PSO_NOW", "2025-09-01T06:00:00")
    with pytest.raises(ValueError, match="PSO_NOW"):
        now_utc()


@pytest.mark.parametrize(
    ("day", "start"),
    [(date(2025, 8, 31), date(2024, 9, 1)), (date(2025, 9, 1), date(2025, 9, 1)), (date(2026, 2, 1), date(2025, 9, 1))],
)
def test_academic_year_start(day, start):
    from orchestration.clock import academic_year_start

    assert academic_year_start(day) == start


@pytest.mark.parametrize(
    ("day", "deadline"),
    [(date(2026, 1, 15), datetime(2026, 1, 15, 6, 0, tzinfo=UTC)),  # GMT
     (date(2026, 7, 15), datetime(2026, 7, 15, 5, 0, tzinfo=UTC)),  # BST
     (date(2026, 3, 29), datetime(2026, 3, 29, 5, 0, tzinfo=UTC))],  # clocks went forward at 01:00 UTC
)
def test_status_refresh_deadline_is_06_london(day, deadline):
    from orchestration.clock import status_refresh_deadline

    assert status_refresh_deadline(day) == deadline
