"""The stats cache (domain.md §2.3–2.5): `facility_stats` as a TTL cache, the read-through for
callers, and the ahead-of-time refresh of units above the cutoff (plain functions, testable without
Dagster). The cache mechanism is `orchestration.patterns.ttl_cache.TTLCache` (`STATS_CACHE`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

import sqlalchemy as sa

from assets.cohort_stats.demographics import CALCULATOR_VERSION as DEMOGRAPHICS_VERSION
from assets.cohort_stats.demographics import demographics_stats
from assets.cohort_stats.dialysis import CALCULATOR_VERSION as DIALYSIS_VERSION
from assets.cohort_stats.dialysis import bad_treatment_ids, dialysis_stats
from assets.cohort_stats.eligibility import (
    KINDS,
    MissingFacilityError,
    StatsSettings,
    eligible_units,
    read_stats_settings,
    unit_record_count,
)
from assets.cohort_stats.windows import Window, stats_windows, window_named
from orchestration import schema
from orchestration.clock import london_today, now_utc
from orchestration.patterns.ttl_cache import CacheRead, RefreshOutcome, TTLCache, transaction

log = logging.getLogger(__name__)

CALCULATORS = {"dialysis": dialysis_stats, "demographics": demographics_stats}
CALCULATOR_VERSIONS = {"dialysis": DIALYSIS_VERSION, "demographics": DEMOGRAPHICS_VERSION}

# An above-cutoff entry may be this far past expiry before the check fails: the refresh that
# replaces it starts at the schedule tick (= TTL) and takes a little while to reach every unit.
REFRESH_GRACE = timedelta(minutes=30)

STATS_CACHE = TTLCache(
    name="facility_stats",
    table=schema.facility_stats,
    key_columns=("facility_code", "stats_kind", "window_start", "window_end"),
    value_columns=("outcome", "payload", "population", "duration_ms", "calculator_version"),
    # A value computed by another calculator version is outdated whatever its age: bumping a version in
    # CALCULATOR_VERSIONS recomputes every entry of that kind (read-through and refresh alike).
    version_column="calculator_version",
)


def cache_key(unit: str, kind: str, window: Window) -> dict[str, Any]:
    return {"facility_code": unit, "stats_kind": kind, "window_start": window.start, "window_end": window.end}


def compute_for(unit: str, kind: str, window: Window):
    """The cache's compute callable for one key (the calculator is looked up when it runs)."""
    return lambda conn: CALCULATORS[kind](conn, unit, window)


def get_facility_stats(conn: sa.Connection, unit: str, kind: str = "dialysis", window: str = "w1",
                       now: datetime | None = None) -> CacheRead:
    """Read-through: the cached value when fresh, else compute, store and return it.

    For a unit the ahead-of-time refresh owns (count above the cutoff, kind in aot_kinds) an
    expired or outdated (older calculator version) value is served as it is until its replacement
    commits: no reader waits.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    now = now or now_utc()
    win = window_named(london_today(now), window)
    key = cache_key(unit, kind, win)
    version = CALCULATOR_VERSIONS[kind]
    with transaction(conn):  # fast path: one indexed read
        entry = STATS_CACHE.lookup(conn, key)
    if entry is not None and entry.is_current(now, version):
        return CacheRead(entry, "fresh")
    with transaction(conn):
        settings = read_stats_settings(conn)
        count = unit_record_count(conn, unit)
    if not count.has_facility:
        raise MissingFacilityError(f"no facility row for code {unit!r}")
    owned_by_refresh = count.ukrdc_record_count > settings.aot_min_records and kind in settings.aot_kinds
    return STATS_CACHE.read_through(conn, key, compute_for(unit, kind, win),
                                    ttl=settings.ttl, serve_stale=owned_by_refresh, now=now, version=version)


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
    skip_if_fresher_than by the current calculator version (unless force). Otherwise never
    precomputed; only entries a reader already created (read-through) and that are still unexpired
    are refreshed, so a feed's changes reach them.
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
            bad = bad_treatment_ids(conn, unit)
        if bad:  # ids only: no personal data in logs
            log.warning("unit %s: treatments without a start, a code, or ending before they start are skipped "
                        "(first ids): %s", unit, ", ".join(bad))
    skip_after = None if force else run_start - settings.skip_if_fresher_than
    outcomes = [STATS_CACHE.refresh(conn, cache_key(unit, kind, w), compute_for(unit, kind, w), ttl=settings.ttl,
                                    skip_if_computed_after=skip_after, now=run_start,
                                    version=CALCULATOR_VERSIONS[kind]) for w in windows]
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
    """(expired, missing) current-window entries of above-cutoff units for the ahead-of-time kinds.

    Expired includes entries computed by an older calculator version, whatever their age (so the
    registry sensor requests their refresh at its next tick after an upgrade).
    """
    expired: list[dict] = []
    missing: list[dict] = []
    with transaction(conn):
        settings = read_stats_settings(conn)
        units, _ = eligible_units(conn, settings)
        windows = stats_windows(london_today(now))
        for kind in (k for k in settings.aot_kinds if kinds is None or k in kinds):
            keys = [cache_key(u.facility_code, kind, w) for u in units for w in windows]
            e, m = STATS_CACHE.expired(conn, keys, now, grace, version=CALCULATOR_VERSIONS[kind])
            expired += e
            missing += m
    return expired, missing, settings
