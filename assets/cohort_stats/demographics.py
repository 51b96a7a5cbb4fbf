"""Demographics calculator (domain.md §2.4): gender, ethnic group and age histograms of the patients
living today with a UKRDC record at the unit, one row per patient (`ukrdcid`). The cohort does not
depend on the window: W1 and W2 hold the same figures, all as of today."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from assets.cohort_stats.shaping import aggregate_frame, empty_cohort, ok, section_counts
from assets.cohort_stats.windows import Window

# 2: the cohort and the ages are those of today for every window (W2 was computed as of its end).
CALCULATOR_VERSION = "pso-demographics-2"

GENDERS = ("Male", "Female", "Indeterminate", "Unknown")
ETHNIC_GROUPS = ("White", "Mixed", "Asian", "Black", "Other", "Not Stated", "Unknown")

DEMOGRAPHICS_SQL = sa.text("""
WITH cohort AS (       -- patients living today with a UKRDC record at the unit, one row per ukrdcid
    SELECT DISTINCT ON (r.ukrdcid) r.ukrdcid, trim(p.gender) AS gender,
           upper(left(trim(p.ethnicgroupcode), 1)) AS ethnic_letter, CAST(p.birthtime AS date) AS birth
    FROM patientrecord r LEFT JOIN patient p ON p.pid = r.pid
    WHERE r.sendingfacility = :unit AND r.sendingextract = 'UKRDC'
      AND (p.deathtime IS NULL OR p.deathtime >= :tomorrow)
    ORDER BY r.ukrdcid, r.pid
),
aged AS (
    SELECT *,
           CASE WHEN birth IS NULL OR birth > :on THEN NULL
                ELSE :on_year - extract(year FROM birth)::int
                     - CASE WHEN (:on_month, :on_day) < (extract(month FROM birth)::int,
                                 -- a 29 February birthday counts as 28 February in other years
                                 CASE WHEN extract(month FROM birth) = 2 AND extract(day FROM birth) = 29
                                      AND NOT :on_leap THEN 28 ELSE extract(day FROM birth)::int END)
                            THEN 1 ELSE 0 END END AS age
    FROM cohort
)
SELECT 'gender' AS section,
       CASE gender WHEN '1' THEN 'Male' WHEN '2' THEN 'Female' WHEN '9' THEN 'Indeterminate' ELSE 'Unknown' END AS label,
       count(*)::int AS n
FROM aged GROUP BY 2
UNION ALL
SELECT 'ethnic_group',
       CASE WHEN ethnic_letter IN ('A', 'B', 'C') THEN 'White'
            WHEN ethnic_letter IN ('D', 'E', 'F', 'G') THEN 'Mixed'
            WHEN ethnic_letter IN ('H', 'J', 'K', 'L', 'R') THEN 'Asian'
            WHEN ethnic_letter IN ('M', 'N', 'P') THEN 'Black'
            WHEN ethnic_letter = 'S' THEN 'Other'
            WHEN ethnic_letter = 'Z' THEN 'Not Stated'
            ELSE 'Unknown' END,
       count(*)::int
FROM aged GROUP BY 2
UNION ALL
SELECT 'age', coalesce(age::text, 'Unknown'), count(*)::int FROM aged GROUP BY 2
""")



def is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def demographics_stats(conn: sa.Connection, unit: str, window: Window) -> dict[str, Any]:
    """Value columns of one demographics entry: patients living on `window.as_of` (today), aged on
    that day, whatever the window's dates."""
    on = window.as_of
    frame = aggregate_frame(conn, DEMOGRAPHICS_SQL, {
        "unit": unit, "tomorrow": datetime.combine(on + timedelta(days=1), datetime.min.time()), "on": on,
        "on_year": on.year, "on_month": on.month, "on_day": on.day, "on_leap": is_leap(on.year),
    })
    population = int(frame.loc[frame["section"] == "gender", "n"].sum())
    if population == 0:
        return empty_cohort(CALCULATOR_VERSION)
    ages = frame[frame["section"] == "age"]
    known = ages[ages["label"] != "Unknown"].assign(age=lambda f: f["label"].astype(int)).sort_values("age")
    age_hist = {str(a): int(n) for a, n in zip(known["age"], known["n"])}
    age_hist["Unknown"] = int(ages.loc[ages["label"] == "Unknown", "n"].sum())
    return ok({
        "population": population,
        "on_date": on.isoformat(),
        "gender": section_counts(frame, "gender", GENDERS),
        "ethnic_group": section_counts(frame, "ethnic_group", ETHNIC_GROUPS),
        "age": age_hist,
    }, CALCULATOR_VERSION)
