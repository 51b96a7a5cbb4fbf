"""Runtime settings and eligibility (domain.md §2.4): UKRDC record counts per sending facility, the
cutoff, and the `facility_record_counts` table rewritten on every run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestration import schema
from orchestration.patterns.ttl_cache import transaction

log = logging.getLogger(__name__)

KINDS = schema.STATS_KINDS  # ("dialysis", "demographics")
DEFAULT_TTL = timedelta(hours=8)

# §2.4 eligibility: UKRDC extract only, never these pseudo-facilities.
EXCLUDED_SENDING_FACILITIES = ("UKRR", "PV", "PKB", "TRACING", "NHSBT", "MRC")


class MissingFacilityError(LookupError):
    """A facility code without a `facility` row (upstream's MissingFacilityError)."""


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


def eligible_units(conn: sa.Connection, settings: StatsSettings,
                   counts: list[UnitCount] | None = None) -> tuple[list[UnitCount], list[UnitCount]]:
    """(eligible, skipped_missing_facility): count strictly greater than the cutoff (§2.4); `counts` when
    the caller has read them already."""
    counts = ukrdc_record_counts(conn) if counts is None else counts
    above = [c for c in counts if c.ukrdc_record_count > settings.aot_min_records]
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
