"""Dialysis calculator (domain.md §2.4): base cohort, prevalent and incident patients by modality, and
the in-centre session frequency histogram of one unit and window. Postgres aggregates (one statement);
pandas only shapes the few aggregate rows into the payload."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from assets.cohort_stats.shaping import aggregate_frame, empty_cohort, ok, section_counts
from assets.cohort_stats.windows import Window

# 2: prior KRT on any record of the patient (not only UKRDC-extract ones) makes them not incident;
#    in-centre frequency over whole days, a value on a bin edge in the lower bin.
CALCULATOR_VERSION = "pso-dialysis-2"

HD_CODES = ("1", "2", "3", "5")
PD_CODES = ("11", "12")
KRT_CODES = HD_CODES + PD_CODES + ("20", "29", "78")
MODALITIES = ("HD Home", "HD In-centre", "HD Unknown/Incomplete", "PD")
INCENTRE_SESSION_CODE = "302497006"
# 14 bins of 0.5 from 0 to 7, each holding its upper edge (pandas `cut`, right=True); ≥ 7 in the last.
FREQUENCY_BIN_EDGES = [i * 0.5 for i in range(15)]

DIALYSIS_SQL = sa.text("""
WITH b AS (            -- base cohort: HD/PD treatments at the unit overlapping the window
    SELECT r.ukrdcid, t.pid, t.id AS treatment_id, t.fromtime, t.totime, trim(t.admitreasoncode) AS code,
           upper(trim(t.qbl05)) AS qbl05, p.deathtime
    FROM treatment t
    JOIN patientrecord r ON r.pid = t.pid AND r.sendingextract = 'UKRDC'
    LEFT JOIN patient p ON p.pid = t.pid
    WHERE t.healthcarefacilitycode = :unit
      AND trim(t.admitreasoncode) = ANY(CAST(:hdpd AS text[]))
      AND t.fromtime IS NOT NULL AND t.fromtime < :end_excl
      AND (t.totime IS NULL OR t.totime >= :start)
      AND (p.deathtime IS NULL OR p.deathtime > :start)
),
patients AS (
    SELECT ukrdcid,
           bool_or(fromtime >= :start) AS starts_in_window,
           bool_and(deathtime IS NULL OR deathtime >= :end_excl) AS alive_at_end,
           bool_or(totime IS NULL OR totime >= :end_excl) AS ongoing_at_end
    FROM b GROUP BY ukrdcid
),
latest AS (            -- modality from the B treatment with the latest fromtime
    SELECT DISTINCT ON (ukrdcid) ukrdcid, code, qbl05
    FROM b ORDER BY ukrdcid, fromtime DESC, totime DESC NULLS FIRST, treatment_id DESC
),
prior_krt AS (         -- KRT at any facility before the window start, on any record (PV extracts too)
    SELECT DISTINCT r.ukrdcid
    FROM patients p
    JOIN patientrecord r ON r.ukrdcid = p.ukrdcid
    JOIN treatment t ON t.pid = r.pid
    WHERE p.starts_in_window AND trim(t.admitreasoncode) = ANY(CAST(:krt AS text[])) AND t.fromtime < :start
),
classified AS (
    SELECT p.ukrdcid,
           CASE WHEN l.code = ANY(CAST(:pd AS text[])) THEN 'PD'
                WHEN l.qbl05 = 'HOME' THEN 'HD Home'
                WHEN l.qbl05 IN ('HOSP', 'SATL') THEN 'HD In-centre'
                ELSE 'HD Unknown/Incomplete' END AS modality,
           p.alive_at_end AND p.ongoing_at_end AS prevalent,
           p.starts_in_window AND k.ukrdcid IS NULL AS incident
    FROM patients p JOIN latest l USING (ukrdcid) LEFT JOIN prior_krt k USING (ukrdcid)
),
incentre_records AS (  -- UKRDC records of prevalent in-centre patients (usually the unit's own record)
    SELECT DISTINCT c.ukrdcid, r.pid
    FROM classified c JOIN patientrecord r ON r.ukrdcid = c.ukrdcid AND r.sendingextract = 'UKRDC'
    WHERE c.prevalent AND c.modality = 'HD In-centre'
),
sessions AS (
    SELECT i.ukrdcid, count(*) AS n, min(s.proceduretime) AS first_at, max(s.proceduretime) AS last_at
    FROM incentre_records i
    JOIN dialysissession s ON s.pid = i.pid
    WHERE s.proceduretypecode = :session_code AND s.proceduretime >= :start AND s.proceduretime < :end_excl
    GROUP BY i.ukrdcid
),
spans AS (             -- whole days between first and last session (5 days 12 hours is 5)
    SELECT n, floor(extract(epoch FROM last_at - first_at) / 86400)::int AS days
    FROM sessions WHERE n >= 2 AND last_at - first_at >= interval '1 day'
),
frequency AS (         -- 7n/days per week in bins (0.5 k, 0.5 (k + 1)]: k = ceil(14n/days) - 1, in integers
    SELECT least((14 * n + days - 1) / days - 1, 13)::int AS bin FROM spans
)
SELECT 'all' AS section, modality AS label, count(*)::int AS n FROM classified GROUP BY modality
UNION ALL SELECT 'prevalent', modality, count(*)::int FROM classified WHERE prevalent GROUP BY modality
UNION ALL SELECT 'incident', modality, count(*)::int FROM classified WHERE incident GROUP BY modality
UNION ALL SELECT 'frequency', bin::text, count(*)::int FROM frequency GROUP BY bin
""")

DIALYSIS_BAD_INPUT_SQL = sa.text("""
    SELECT t.id FROM treatment t
    WHERE t.healthcarefacilitycode = :unit
      AND (t.fromtime IS NULL OR t.admitreasoncode IS NULL OR t.totime < t.fromtime)
    ORDER BY t.id LIMIT 20
""")



def dialysis_stats(conn: sa.Connection, unit: str, window: Window) -> dict[str, Any]:
    """Value columns of one dialysis entry (§2.4 dialysis calculator)."""
    frame = aggregate_frame(conn, DIALYSIS_SQL, {
        "unit": unit, "start": window.start_at, "end_excl": window.end_exclusive,
        "hdpd": list(HD_CODES + PD_CODES), "pd": list(PD_CODES), "krt": list(KRT_CODES),
        "session_code": INCENTRE_SESSION_CODE,
    })
    population = int(frame.loc[frame["section"] == "all", "n"].sum())
    if population == 0:
        return empty_cohort(CALCULATOR_VERSION)
    bins = section_counts(frame, "frequency", [str(i) for i in range(14)])
    return ok({
        "population": population,
        "from_time": window.start_at.isoformat(),
        "to_time": (window.end_exclusive - timedelta(microseconds=1)).isoformat(),
        "all": section_counts(frame, "all", MODALITIES),
        "incident": section_counts(frame, "incident", MODALITIES),
        "prevalent": section_counts(frame, "prevalent", MODALITIES),
        "incentre_dialysis_frequency": {"bin_edges": FREQUENCY_BIN_EDGES, "counts": list(bins.values())},
    }, CALCULATOR_VERSION)


def bad_treatment_ids(conn: sa.Connection, unit: str) -> list[str]:
    """First ids of the unit's treatments the calculator skips (no start, no code, ending before starting)."""
    return list(conn.execute(DIALYSIS_BAD_INPUT_SQL, {"unit": unit}).scalars().all())
