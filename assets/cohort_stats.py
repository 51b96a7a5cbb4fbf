"""Cohort stats (domain.md §2): dialysis (KRT) and demographics statistics per renal unit and window,
cached in `facility_stats` ahead of time for units above a runtime cutoff, read-through below it.

The cache mechanism is `orchestration.patterns.ttl_cache.TTLCache` (`STATS_CACHE` below is the
instance). The calculators aggregate in Postgres (one statement per unit/window) and pandas only
shapes the few aggregate rows into the payload.

Assets (group `cohort_stats`, pool `facility_stats`, partitions `renal_units`):
- `facility_record_counts` — UKRDC record count per sending facility, rewritten on every run;
- `facility_stats_dialysis`, `facility_stats_demographics` — W1/W2 stats of the partition's unit(s).
Job `facility_stats_aot` holds all three; the 8-hourly schedule, the registry sensor and the
sync-complete handler request its runs with `asset_selection` = the kinds in `stats_settings.aot_kinds`.
"""


import logging
import time
import warnings
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Iterable

import pandas as pd
import sqlalchemy as sa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    Config,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    asset,
    asset_check,
    define_asset_job,
)

from orchestration import schema
from orchestration.clock import london_today, now_utc
from orchestration.partitions import renal_units_partitions
from orchestration.patterns.ttl_cache import CacheRead, RefreshOutcome, TTLCache, transaction
from resources.postgres import PostgresResource

log = logging.getLogger(__name__)

GROUP = "cohort_stats"
POOL = "facility_stats"
JOB_NAME = "facility_stats_aot"
KINDS = schema.STATS_KINDS  # ("dialysis", "demographics")

# §2.4 eligibility: UKRDC extract only, never these pseudo-facilities.
EXCLUDED_SENDING_FACILITIES = ("UKRR", "PV", "PKB", "TRACING", "NHSBT", "MRC")
HD_CODES = ("1", "2", "3", "5")
PD_CODES = ("11", "12")
KRT_CODES = HD_CODES + PD_CODES + ("20", "29", "78")
MODALITIES = ("HD Home", "HD In-centre", "HD Unknown/Incomplete", "PD")
INCENTRE_SESSION_CODE = "302497006"
FREQUENCY_BIN_EDGES = [i * 0.5 for i in range(15)]  # 14 bins of 0.5 from 0 to 7; ≥ 7 in the last

GENDERS = ("Male", "Female", "Indeterminate", "Unknown")
ETHNIC_GROUPS = ("White", "Mixed", "Asian", "Black", "Other", "Not Stated", "Unknown")

CALCULATOR_VERSIONS = {"dialysis": "pso-dialysis-1", "demographics": "pso-demographics-1"}

# An above-cutoff entry may be this far past expiry before the check fails: the refresh that
# replaces it starts at the schedule tick (= TTL) and takes a little while to reach every unit.
REFRESH_GRACE = timedelta(minutes=30)
DEFAULT_TTL = timedelta(hours=8)

STATS_CACHE = TTLCache(
    name="facility_stats",
    table=schema.facility_stats,
    key_columns=("facility_code", "stats_kind", "window_start", "window_end"),
    value_columns=("outcome", "payload", "population", "duration_ms", "calculator_version"),
)


class MissingFacilityError(LookupError):
    """A facility code without a `facility` row (upstream's MissingFacilityError)."""


# ---------------------------------------------------------------------------------------------
# Settings, windows, counts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsSettings:
    aot_min_records: int
    aot_kinds: tuple[str, ...]
    skip_if_fresher_than: timedelta
    ttl: timedelta


def read_stats_settings(conn: sa.Connection) -> StatsSettings:
    """The one settings row, read at the start of every run/tick (so changes apply at the next one)."""
    s = schema.stats_settings
    row = conn.execute(sa.select(s.c.aot_min_records, s.c.aot_kinds, s.c.skip_if_fresher_than, s.c.ttl)
                       .where(s.c.id == 1)).first()
    if row is None:
        return StatsSettings(5000, ("dialysis",), timedelta(hours=1), DEFAULT_TTL)
    return StatsSettings(row.aot_min_records, tuple(k for k in KINDS if k in row.aot_kinds),
                         row.skip_if_fresher_than, row.ttl)


@dataclass(frozen=True)
class Window:
    name: str  # "w1" | "w2"
    start: date  # inclusive London dates
    end: date

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
    windows = [Window("w1", today - timedelta(days=90), today)]
    if q != today:
        windows.append(Window("w2", q - timedelta(days=90), q))
    return windows


def window_named(today: date, name: str) -> Window:
    """W1 or W2 of `today` (the same dates when q = today)."""
    name = name.lower()
    if name == "w1":
        return Window("w1", today - timedelta(days=90), today)
    if name == "w2":
        q = quarter_start(today)
        return Window("w2", q - timedelta(days=90), q)
    raise ValueError(f"window must be w1 or w2, got {name!r}")


RECORD_COUNTS_SQL = """
    SELECT r.sendingfacility AS facility_code, count(*)::int AS ukrdc_record_count,
           (f.code IS NOT NULL) AS has_facility
    FROM patientrecord r LEFT JOIN facility f ON f.code = r.sendingfacility
    WHERE r.sendingextract = 'UKRDC' AND r.sendingfacility <> ALL(CAST(:excluded AS text[]))
    GROUP BY r.sendingfacility, f.code
"""


@dataclass(frozen=True)
class UnitCount:
    facility_code: str
    ukrdc_record_count: int
    has_facility: bool


def ukrdc_record_counts(conn: sa.Connection) -> list[UnitCount]:
    rows = conn.execute(sa.text(RECORD_COUNTS_SQL + " ORDER BY 1"), {"excluded": list(EXCLUDED_SENDING_FACILITIES)})
    return [UnitCount(*row) for row in rows]


def unit_record_count(conn: sa.Connection, unit: str) -> UnitCount:
    row = conn.execute(sa.text(
        "SELECT (SELECT count(*)::int FROM patientrecord WHERE sendingfacility = :u AND sendingextract = 'UKRDC' "
        "AND NOT (:u = ANY(CAST(:excluded AS text[])))), EXISTS (SELECT 1 FROM facility WHERE code = :u)"),
        {"u": unit, "excluded": list(EXCLUDED_SENDING_FACILITIES)}).first()
    return UnitCount(unit, row[0], row[1])


def eligible_units(conn: sa.Connection, settings: StatsSettings) -> tuple[list[UnitCount], list[UnitCount]]:
    """(eligible, skipped_missing_facility): count strictly greater than the cutoff (§2.4)."""
    above = [c for c in ukrdc_record_counts(conn) if c.ukrdc_record_count > settings.aot_min_records]
    missing = [c for c in above if not c.has_facility]
    for c in missing:
        log.warning("facility code %s has %d UKRDC records but no facility row; skipped", c.facility_code,
                    c.ukrdc_record_count)
    return [c for c in above if c.has_facility], missing


def refresh_record_counts(conn: sa.Connection, now: datetime) -> dict[str, int]:
    """Rewrite `facility_record_counts` (one transaction; unchanged counts only get a new counted_at)."""
    with transaction(conn):
        upserted = conn.execute(sa.text(f"""
            INSERT INTO facility_record_counts (facility_code, ukrdc_record_count, counted_at)
            SELECT facility_code, ukrdc_record_count, :now FROM ({RECORD_COUNTS_SQL}) c
            ON CONFLICT (facility_code) DO UPDATE
              SET ukrdc_record_count = EXCLUDED.ukrdc_record_count, counted_at = EXCLUDED.counted_at
            RETURNING (xmax = 0) AS inserted
        """), {"now": now, "excluded": list(EXCLUDED_SENDING_FACILITIES)}).scalars().all()
        deleted = conn.execute(sa.text(f"""
            DELETE FROM facility_record_counts d
            WHERE NOT EXISTS (SELECT 1 FROM ({RECORD_COUNTS_SQL}) c WHERE c.facility_code = d.facility_code)
        """), {"excluded": list(EXCLUDED_SENDING_FACILITIES)}).rowcount
    inserted = sum(1 for i in upserted if i)
    return {"facilities": len(upserted), "inserted": inserted, "updated": len(upserted) - inserted, "deleted": deleted}


# ---------------------------------------------------------------------------------------------
# Calculators: aggregate in Postgres, shape with pandas
# ---------------------------------------------------------------------------------------------

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
prior_krt AS (         -- KRT at any facility before the window start
    SELECT DISTINCT r.ukrdcid
    FROM patients p
    JOIN patientrecord r ON r.ukrdcid = p.ukrdcid AND r.sendingextract = 'UKRDC'
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
frequency AS (
    SELECT least(floor(7.0 * n / (extract(epoch FROM last_at - first_at) / 86400.0) / 0.5), 13)::int AS bin
    FROM sessions WHERE n >= 2 AND last_at - first_at >= interval '1 day'
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

DEMOGRAPHICS_SQL = sa.text("""
WITH cohort AS (       -- living patients with a UKRDC record at the unit, one row per ukrdcid
    SELECT DISTINCT ON (r.ukrdcid) r.ukrdcid, trim(p.gender) AS gender,
           upper(left(trim(p.ethnicgroupcode), 1)) AS ethnic_letter, CAST(p.birthtime AS date) AS birth
    FROM patientrecord r LEFT JOIN patient p ON p.pid = r.pid
    WHERE r.sendingfacility = :unit AND r.sendingextract = 'UKRDC'
      AND (p.deathtime IS NULL OR p.deathtime >= :end_excl)
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


def _counts(frame: pd.DataFrame, section: str, labels: Iterable[str]) -> dict[str, int]:
    part = frame[frame["section"] == section].set_index("label")["n"]
    return {label: int(part.get(label, 0)) for label in labels}


def dialysis_stats(conn: sa.Connection, unit: str, window: Window) -> dict[str, Any]:
    """Value columns of one dialysis entry (§2.4 dialysis calculator)."""
    frame = pd.DataFrame(conn.execute(DIALYSIS_SQL, {
        "unit": unit, "start": window.start_at, "end_excl": window.end_exclusive,
        "hdpd": list(HD_CODES + PD_CODES), "pd": list(PD_CODES), "krt": list(KRT_CODES),
        "session_code": INCENTRE_SESSION_CODE,
    }).all(), columns=["section", "label", "n"])
    population = int(frame.loc[frame["section"] == "all", "n"].sum())
    if population == 0:
        return {"outcome": int(schema.StatsOutcome.EMPTY_COHORT), "payload": None, "population": 0,
                "calculator_version": CALCULATOR_VERSIONS["dialysis"]}
    bins = _counts(frame, "frequency", [str(i) for i in range(14)])
    payload = {
        "population": population,
        "from_time": window.start_at.isoformat(),
        "to_time": (window.end_exclusive - timedelta(microseconds=1)).isoformat(),
        "all": _counts(frame, "all", MODALITIES),
        "incident": _counts(frame, "incident", MODALITIES),
        "prevalent": _counts(frame, "prevalent", MODALITIES),
        "incentre_dialysis_frequency": {"bin_edges": FREQUENCY_BIN_EDGES, "counts": list(bins.values())},
    }
    return {"outcome": int(schema.StatsOutcome.OK), "payload": payload, "population": population,
            "calculator_version": CALCULATOR_VERSIONS["dialysis"]}


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def demographics_stats(conn: sa.Connection, unit: str, window: Window) -> dict[str, Any]:
    """Value columns of one demographics entry: living at the window end, ages on the end date
    (W1's end is today, as §2.4 states)."""
    on = window.end
    frame = pd.DataFrame(conn.execute(DEMOGRAPHICS_SQL, {
        "unit": unit, "end_excl": window.end_exclusive, "on": on, "on_year": on.year, "on_month": on.month,
        "on_day": on.day, "on_leap": _is_leap(on.year),
    }).all(), columns=["section", "label", "n"])
    population = int(frame.loc[frame["section"] == "gender", "n"].sum())
    if population == 0:
        return {"outcome": int(schema.StatsOutcome.EMPTY_COHORT), "payload": None, "population": 0,
                "calculator_version": CALCULATOR_VERSIONS["demographics"]}
    ages = frame[frame["section"] == "age"]
    known = ages[ages["label"] != "Unknown"].assign(age=lambda f: f["label"].astype(int)).sort_values("age")
    age_hist = {str(a): int(n) for a, n in zip(known["age"], known["n"])}
    age_hist["Unknown"] = int(ages.loc[ages["label"] == "Unknown", "n"].sum())
    payload = {
        "population": population,
        "on_date": on.isoformat(),
        "gender": _counts(frame, "gender", GENDERS),
        "ethnic_group": _counts(frame, "ethnic_group", ETHNIC_GROUPS),
        "age": age_hist,
    }
    return {"outcome": int(schema.StatsOutcome.OK), "payload": payload, "population": population,
            "calculator_version": CALCULATOR_VERSIONS["demographics"]}


CALCULATORS = {"dialysis": dialysis_stats, "demographics": demographics_stats}


def cache_key(unit: str, kind: str, window: Window) -> dict[str, Any]:
    return {"facility_code": unit, "stats_kind": kind, "window_start": window.start, "window_end": window.end}


def _compute(unit: str, kind: str, window: Window):
    calculator = CALCULATORS[kind]
    return lambda conn: calculator(conn, unit, window)


# ---------------------------------------------------------------------------------------------
# Read-through and ahead-of-time refresh (plain functions: testable without Dagster)
# ---------------------------------------------------------------------------------------------


def get_facility_stats(conn: sa.Connection, unit: str, kind: str = "dialysis", window: str = "w1",
                       now: datetime | None = None) -> CacheRead:
    """Read-through: the cached value when fresh, else compute, store and return it.

    For a unit the ahead-of-time refresh owns (count above the cutoff, kind in aot_kinds) an
    expired value is served as it is until its replacement commits: no reader waits.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    now = now or now_utc()
    win = window_named(london_today(now), window)
    key = cache_key(unit, kind, win)
    with transaction(conn):  # fast path: one indexed read
        entry = STATS_CACHE.lookup(conn, key)
    if entry is not None and entry.is_fresh(now):
        return CacheRead(entry, "fresh")
    with transaction(conn):
        settings = read_stats_settings(conn)
        count = unit_record_count(conn, unit)
    if not count.has_facility:
        raise MissingFacilityError(f"no facility row for code {unit!r}")
    owned_by_refresh = count.ukrdc_record_count > settings.aot_min_records and kind in settings.aot_kinds
    return STATS_CACHE.read_through(conn, key, _compute(unit, kind, win),
                                    ttl=settings.ttl, serve_stale=owned_by_refresh, now=now)


@dataclass
class UnitRefresh:
    unit: str
    kind: str
    eligible: bool
    record_count: int
    outcomes: list[RefreshOutcome]
    skipped_reason: str | None = None


def refresh_unit(conn: sa.Connection, unit: str, kind: str, settings: StatsSettings, run_start: datetime,
                 force: bool = False) -> UnitRefresh:
    """Refresh one unit's entries of one kind for the current windows (each key its own transaction).

    Above the cutoff (kind in aot_kinds): every window, skipping keys computed within
    skip_if_fresher_than (unless force). Otherwise never precomputed; only entries a reader already created (read-through) and that
    are still unexpired are refreshed, so a feed's changes reach them.
    """
    with transaction(conn):
        count = unit_record_count(conn, unit)
    if not count.has_facility:
        log.warning("facility code %s has no facility row; skipped", unit)
        return UnitRefresh(unit, kind, False, count.ukrdc_record_count, [], "no facility row")
    eligible = count.ukrdc_record_count > settings.aot_min_records
    windows = stats_windows(london_today(run_start))
    if not (eligible and kind in settings.aot_kinds):
        with transaction(conn):
            windows = [w for w in windows
                       if (e := STATS_CACHE.lookup(conn, cache_key(unit, kind, w))) is not None and e.is_fresh(run_start)]
        if not windows:
            reason = (f"{kind} not in aot_kinds" if eligible
                      else f"{count.ukrdc_record_count} records ≤ cutoff {settings.aot_min_records}")
            return UnitRefresh(unit, kind, eligible, count.ukrdc_record_count, [], reason + "; no cached entry to refresh")
    if kind == "dialysis":
        with transaction(conn):
            bad = conn.execute(DIALYSIS_BAD_INPUT_SQL, {"unit": unit}).scalars().all()
        if bad:  # ids only: no personal data in logs
            log.warning("unit %s: treatments without a start, a code, or ending before they start are skipped "
                        "(first ids): %s", unit, ", ".join(bad))
    skip_after = None if force else run_start - settings.skip_if_fresher_than
    outcomes = [STATS_CACHE.refresh(conn, cache_key(unit, kind, w), _compute(unit, kind, w), ttl=settings.ttl,
                                    skip_if_computed_after=skip_after, now=run_start) for w in windows]
    return UnitRefresh(unit, kind, eligible, count.ukrdc_record_count, outcomes)


def refresh_units(conn: sa.Connection, units: list[str], kind: str, run_start: datetime, force: bool = False,
                  settings: StatsSettings | None = None) -> tuple[list[UnitRefresh], dict[str, str]]:
    """Refresh several units; one unit's failure never stops the others (returned as unit → error)."""
    if settings is None:
        with transaction(conn):
            settings = read_stats_settings(conn)
    done, failed = [], {}
    for unit in units:
        try:
            done.append(refresh_unit(conn, unit, kind, settings, run_start, force))
        except Exception as error:  # noqa: BLE001 — isolate the unit, report it at the end
            if conn.in_transaction():
                conn.rollback()
            failed[unit] = type(error).__name__
            log.error("unit %s: %s stats failed (%s); its old values stay readable", unit, kind, type(error).__name__)
    return done, failed


def expired_aot_entries(conn: sa.Connection, now: datetime, grace: timedelta = REFRESH_GRACE,
                        kinds: Iterable[str] | None = None) -> tuple[list[dict], list[dict], StatsSettings]:
    """(expired, missing) current-window entries of above-cutoff units for the ahead-of-time kinds."""
    with transaction(conn):
        settings = read_stats_settings(conn)
        units, _ = eligible_units(conn, settings)
        wanted = [k for k in settings.aot_kinds if kinds is None or k in kinds]
        keys = [cache_key(u.facility_code, k, w) for u in units for k in wanted for w in stats_windows(london_today(now))]
        expired, missing = STATS_CACHE.expired(conn, keys, now, grace)
    return expired, missing, settings


# ---------------------------------------------------------------------------------------------
# Metadata a person reads
# ---------------------------------------------------------------------------------------------


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dialysis_markdown(unit: str, window_label: str, values: dict[str, Any]) -> str:
    payload = values.get("payload")
    if not payload:
        return f"**{unit} {window_label}**: empty cohort"
    rows = [[m, payload["all"][m], payload["incident"][m], payload["prevalent"][m]] for m in MODALITIES]
    rows.append(["**Total**", sum(payload["all"].values()), sum(payload["incident"].values()),
                 sum(payload["prevalent"].values())])
    freq = payload["incentre_dialysis_frequency"]
    edges = freq["bin_edges"]
    frows = [[f"{edges[i]:g}–{edges[i + 1]:g}" + (" (and above)" if i == 13 else ""), n]
             for i, n in enumerate(freq["counts"])]
    return (f"**{unit} {window_label}** ({payload['from_time'][:10]} → {payload['to_time'][:10]}, "
            f"population {payload['population']})\n\n"
            + _md_table(["modality", "all", "incident", "prevalent"], rows)
            + "\n\nIn-centre HD sessions per week (prevalent patients)\n\n"
            + _md_table(["sessions/week", "patients"], frows))


def demographics_markdown(unit: str, window_label: str, values: dict[str, Any]) -> str:
    payload = values.get("payload")
    if not payload:
        return f"**{unit} {window_label}**: empty cohort"
    ages = {k: v for k, v in payload["age"].items() if k != "Unknown"}
    bands: dict[str, int] = {}
    for age, n in ages.items():
        band = f"{int(age) // 10 * 10}–{int(age) // 10 * 10 + 9}"
        bands[band] = bands.get(band, 0) + n
    bands["Unknown"] = payload["age"].get("Unknown", 0)
    return (f"**{unit} {window_label}** (on {payload['on_date']}, population {payload['population']})\n\n"
            + _md_table(["gender", "patients"], [[k, v] for k, v in payload["gender"].items()]) + "\n\n"
            + _md_table(["ethnic group", "patients"], [[k, v] for k, v in payload["ethnic_group"].items()]) + "\n\n"
            + _md_table(["age band", "patients"], [[k, v] for k, v in bands.items()]))


MARKDOWN = {"dialysis": dialysis_markdown, "demographics": demographics_markdown}


# ---------------------------------------------------------------------------------------------
# Dagster assets
# ---------------------------------------------------------------------------------------------


def _source(name: str, description: str) -> AssetSpec:
    return AssetSpec(AssetKey(["ukrdc", name]), group_name=GROUP, description=description,
                     metadata={"table": name}, kinds={"postgres"})


SOURCE_SPECS = [
    _source("patientrecord", "UKRDC patient records (sendingfacility, sendingextract) — written by the renal feed"),
    _source("patient", "UKRDC patient demographics (birth, death, gender, ethnic group)"),
    _source("treatment", "UKRDC treatments (facility, from/to, admit reason, qbl05)"),
    _source("dialysissession", "UKRDC dialysis sessions"),
    _source("facility", "Renal units"),
    _source("stats_settings", "Runtime settings: cutoff, ahead-of-time kinds, skip window, TTL"),
]
SOURCE_KEYS = {spec.key.path[-1]: spec.key for spec in SOURCE_SPECS}

# Stats promise to be no older than their TTL (+ the refresh's grace) for refreshed units.
STATS_FRESHNESS = FreshnessPolicy.time_window(fail_window=DEFAULT_TTL + REFRESH_GRACE, warn_window=DEFAULT_TTL)


class FacilityStatsConfig(Config):
    force: bool = False  # recompute even keys computed within skip_if_fresher_than (a feed changed the data)
    reason: str = "manual"  # schedule | registry | renal_feed:<id> | manual


@asset(
    name="facility_record_counts",
    group_name=GROUP,
    pool=POOL,
    deps=[SOURCE_KEYS["patientrecord"], SOURCE_KEYS["facility"]],
    description="UKRDC record count per sending facility (§2.4 eligibility), rewritten on every run.",
    kinds={"postgres"},
)
def facility_record_counts(context: AssetExecutionContext, postgres: PostgresResource) -> MaterializeResult:
    started = time.perf_counter()
    now = now_utc()
    with postgres.connect() as conn:
        counts = refresh_record_counts(conn, now)
        with transaction(conn):
            settings = read_stats_settings(conn)
            eligible, missing = eligible_units(conn, settings)
    return MaterializeResult(metadata={
        **counts,
        "cutoff (aot_min_records)": settings.aot_min_records,
        "units above cutoff": len(eligible),
        "above cutoff without facility row (skipped)": MetadataValue.md(
            ", ".join(c.facility_code for c in missing) or "none"),
        "duration_ms": int((time.perf_counter() - started) * 1000),
    })


def _stats_asset(kind: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)  # backfill_policy is beta in 1.13; we rely on single_run
        return _build_stats_asset(kind)


def _build_stats_asset(kind: str):
    @asset(
        name=f"facility_stats_{kind}",
        group_name=GROUP,
        pool=POOL,
        partitions_def=renal_units_partitions,
        backfill_policy=BackfillPolicy.single_run(),  # a UI backfill of many units is one run
        deps=[facility_record_counts] + [SOURCE_KEYS[n] for n in
                                         ("patientrecord", "patient", "treatment", "dialysissession", "stats_settings")],
        freshness_policy=STATS_FRESHNESS,
        description=f"{kind} stats per renal unit for windows W1/W2 in facility_stats (TTL cache; §2.4).",
        kinds={"postgres"},
    )
    def _asset(context: AssetExecutionContext, config: FacilityStatsConfig, postgres: PostgresResource) -> MaterializeResult:
        run_start = now_utc()
        units = list(context.partition_keys)
        with postgres.connect() as conn:
            with transaction(conn):
                settings = read_stats_settings(conn)
            done, failed = refresh_units(conn, units, kind, run_start, force=config.force, settings=settings)
            with transaction(conn):
                deleted = STATS_CACHE.delete_expired(conn, run_start)
        metadata: dict[str, Any] = {
            "reason": config.reason, "units": len(units), "cutoff (aot_min_records)": settings.aot_min_records,
            "ttl_hours": settings.ttl.total_seconds() / 3600,
            "stored": sum(o.status == "stored" for r in done for o in r.outcomes),
            "skipped_fresh": sum(o.status == "skipped_fresh" for r in done for o in r.outcomes),
            "superseded": sum(o.status == "superseded" for r in done for o in r.outcomes),
            "deleted_expired": deleted,
            "duration_ms_max": max([o.duration_ms for r in done for o in r.outcomes], default=0),
        }
        skipped = {r.unit: r.skipped_reason for r in done if r.skipped_reason}
        if skipped:
            metadata["skipped units"] = MetadataValue.md(_md_table(["unit", "reason"], [[u, s] for u, s in skipped.items()]))
        for r in done:
            labels = {w.start: w.name.upper() for w in stats_windows(london_today(run_start))}
            parts = [MARKDOWN[kind](r.unit, labels.get(o.key["window_start"], ""), o.values) for o in r.outcomes]
            if parts:
                metadata[f"{r.unit}" if len(units) > 1 else "stats"] = MetadataValue.md("\n\n".join(parts))
        if failed:
            context.log.error(f"{kind} stats failed for units: {', '.join(sorted(failed))}")
            raise Failure(description=f"{kind} stats failed for {len(failed)} unit(s): {', '.join(sorted(failed))}; "
                                      "their old values stay readable", metadata={"failed units": ", ".join(sorted(failed))})
        return MaterializeResult(metadata=metadata)

    return _asset


facility_stats_dialysis = _stats_asset("dialysis")
facility_stats_demographics = _stats_asset("demographics")
STATS_ASSETS = {"dialysis": facility_stats_dialysis, "demographics": facility_stats_demographics}


def _expiry_check(kind: str):
    @asset_check(asset=STATS_ASSETS[kind], name="no_expired_aot_entries", blocking=False,
                 description=f"No above-cutoff unit has an expired {kind} entry for the current windows "
                             f"(more than {int(REFRESH_GRACE.total_seconds() // 60)} min past expires_at).")
    def _check(postgres: PostgresResource) -> AssetCheckResult:
        with postgres.connect() as conn:
            expired, missing, settings = expired_aot_entries(conn, now_utc(), kinds=[kind])
        units = sorted({k["facility_code"] for k in expired})
        return AssetCheckResult(
            passed=not expired,
            severity=AssetCheckSeverity.ERROR,
            description=(f"expired {kind} entries for units: {', '.join(units)}" if expired else None),
            metadata={"expired entries": len(expired), "missing entries": len(missing),
                      "units with expired entries": ", ".join(units) or "none",
                      "units missing entries": ", ".join(sorted({k["facility_code"] for k in missing})) or "none",
                      "aot kinds": ", ".join(settings.aot_kinds)},
        )

    return _check


asset_checks = [_expiry_check("dialysis"), _expiry_check("demographics")]

facility_stats_job = define_asset_job(
    JOB_NAME,
    selection=[facility_record_counts, facility_stats_dialysis, facility_stats_demographics],
    description="Ahead-of-time cohort stats: record counts, then the stats kinds the run selects, for its unit(s).",
)


def run_asset_selection(kinds: Iterable[str]) -> list[AssetKey]:
    """Assets a run refreshes: the counts plus the given stats kinds."""
    return [facility_record_counts.key] + [STATS_ASSETS[k].key for k in KINDS if k in kinds]



# How the sensors and the 8-hourly schedule ask for a stats run (both import these from here).
def stats_run_config(kinds, force: bool, reason: str) -> dict:
    return {"ops": {f"facility_stats_{k}": {"config": {"force": force, "reason": reason}} for k in KINDS if k in kinds}}


def stats_run_request(unit: str, kinds, run_key: str, force: bool, reason: str) -> RunRequest:
    return RunRequest(run_key=run_key, job_name=JOB_NAME, partition_key=unit,
                      asset_selection=run_asset_selection(kinds), run_config=stats_run_config(kinds, force, reason),
                      tags={"pso/family": "cohort_stats", "pso/reason": reason.split(":")[0]})


assets = [*SOURCE_SPECS, facility_record_counts, facility_stats_dialysis, facility_stats_demographics]
jobs = [facility_stats_job]
