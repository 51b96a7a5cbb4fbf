"""Cohort stats sensors (domain.md §2.5).

- `on_sync_complete(run)`: a finished `renal_feed` sync refreshes the units it touched
  (`sync_runs.touched` = facility codes), registering their `renal_units` partitions if new.
  Runs are forced (skip_if_fresher_than does not apply: the data just changed). For units at or
  below the cutoff the asset refreshes only the entries readers already created.
- `renal_units_registry`: every 5 minutes reads `stats_settings`, registers every unit above the
  cutoff as a `renal_units` partition and requests a fill run for eligible units whose current
  entries are missing (new unit, lowered cutoff, new London day's windows, a kind added to
  aot_kinds) or expired past the grace (shortened TTL, a missed schedule tick). Dagster schedules
  cannot return dynamic-partition requests in 1.13 (only RunRequest/SkipReason), so registration
  lives here and the 8-hourly schedule requests runs for registered eligible units.

The registry has no cursor: each tick reconciles the partitions with the database. Its run keys
name the unit and the state that made the run due, so a reset cannot repeat or lose one.

Observations (each stats run records the source versions it was built from): `ukrdc/patientrecord` carries the
UKRDC record counts per unit as its data version (a digest of the (unit, count) pairs), recorded by
the registry when the counts differ from the latest observation, and by a renal feed's handler; both
derive it the same way, so a feed and the next registry tick agree and an idle tick records nothing.
A feed also observes the other UKRDC tables it writes, with its sync run id as their data version.
"""

from __future__ import annotations

import hashlib
import logging
import re

import sqlalchemy as sa
from dagster import (
    AssetObservation,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.cohort_stats import (
    KINDS,
    REFRESH_GRACE,
    SOURCE_KEYS,
    UnitCount,
    eligible_units,
    expired_aot_entries,
    facility_stats_job,
    read_stats_settings,
    stats_run_request,
    ukrdc_record_counts,
)
from orchestration.automation import sensor_status
from orchestration.clock import london_today, now_utc
from orchestration.metadata import DATA_VERSION_TAG, source_observation
from orchestration.partitions import renal_units_partitions
from resources.postgres import PostgresResource
from sensors.sync import SyncReaction, SyncRun, SyncTick

log = logging.getLogger(__name__)

MAX_RUNS_PER_TICK = 50
PARTITION_ADD_CHUNK = 500
# Partition keys must stay free of commas, brackets and JSON (dagster #15105, #32183).
_VALID_UNIT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


RECORDS = SOURCE_KEYS["patientrecord"]  # observed with the record counts as its data version
# The other UKRDC tables a renal feed writes (facility and stats_settings are not the feed's).
FEED_SOURCES = [SOURCE_KEYS[name] for name in ("patient", "treatment", "dialysissession")]


def record_counts_version(counts: list[UnitCount]) -> str:
    """A data version of the UKRDC record counts: equal counts per unit, equal version."""
    pairs = ";".join(f"{c.facility_code}={c.ukrdc_record_count}" for c in sorted(counts, key=lambda c: c.facility_code))
    return hashlib.sha1(pairs.encode()).hexdigest()[:16]


def record_counts_observation(counts: list[UnitCount], **figures) -> AssetObservation:
    return source_observation(RECORDS, record_counts_version(counts), units=len(counts),
                              ukrdc_records=sum(c.ukrdc_record_count for c in counts), **figures)


def last_observed_version(instance, key) -> str | None:
    """The data version of the latest observation of a source asset (None: never observed)."""
    record = instance.get_latest_data_version_record(key, is_source=True)
    observation = record.event_log_entry.asset_observation if record else None
    return observation.tags.get(DATA_VERSION_TAG) if observation else None


def feed_observations(conn: sa.Connection, run: SyncRun, units: int) -> list[AssetObservation]:
    """The UKRDC sources a renal feed wrote: the record counts as they are now, the other tables
    with the sync run id."""
    return [record_counts_observation(ukrdc_record_counts(conn), sync_run_id=run.id),
            *(source_observation(key, run.id, sync_run_id=run.id, units=units) for key in FEED_SOURCES)]


def _facility_codes(conn, codes: list[str]) -> set[str]:
    rows = conn.execute(sa.text("SELECT code FROM facility WHERE code = ANY(CAST(:codes AS text[]))"), {"codes": codes})
    return {r[0] for r in rows}


def on_sync_complete(run: SyncRun, tick: SyncTick) -> SyncReaction:
    """Refresh the units a finished renal_feed sync touched (both kinds; the asset decides per unit)."""
    touched = sorted({str(c) for c in (run.touched or []) if isinstance(c, (str, int))})
    invalid = [c for c in touched if not _VALID_UNIT.match(c)]
    if invalid:
        log.warning("renal_feed sync %s: %d touched codes are not valid unit codes; skipped", run.id, len(invalid))
    candidates = [c for c in touched if _VALID_UNIT.match(c)]
    if not candidates:
        return SyncReaction()
    # The feed wrote records of every valid touched unit, with or without a facility row.
    observations = feed_observations(tick.conn, run, len(candidates))
    known = _facility_codes(tick.conn, candidates)
    missing = [c for c in candidates if c not in known]
    if missing:
        log.warning("renal_feed sync %s: facility codes without a facility row skipped: %s", run.id, ", ".join(missing))
    units = [c for c in candidates if c in known]
    if not units:
        return SyncReaction(observations=observations)
    return SyncReaction(
        observations=observations,
        run_requests=[stats_run_request(u, KINDS, f"renal_feed:{run.id}:{u}", force=True, reason=f"renal_feed:{run.id}")
                      for u in units],
        # Adding a key that exists is a no-op, so there is no need to ask the instance first.
        dynamic_partitions_requests=[renal_units_partitions.build_add_request(units)],
    )


@sensor(
    name="renal_units_registry",
    job=facility_stats_job,
    minimum_interval_seconds=300,
    default_status=sensor_status(),
    description="Registers renal units above stats_settings.aot_min_records as renal_units partitions and "
    "requests a run for eligible units whose current stats are missing or overdue (settings read every tick).",
)
def renal_units_registry(context: SensorEvaluationContext, postgres: PostgresResource):
    now = now_utc()
    today = london_today(now)
    with postgres.connect() as conn:
        with conn.begin():
            settings = read_stats_settings(conn)
            unit_counts = ukrdc_record_counts(conn)  # read once: eligibility and the source's data version
            eligible, missing_facility = eligible_units(conn, settings, unit_counts)
        expired, missing, _ = expired_aot_entries(conn, now, grace=REFRESH_GRACE)
        counts = record_counts_observation(unit_counts)
    # Only a change of the counts is recorded: an idle tick adds nothing to the event log.
    observations = [] if counts.tags[DATA_VERSION_TAG] == last_observed_version(context.instance, RECORDS) else [counts]
    if missing_facility:
        context.log.warning("above the cutoff but no facility row (skipped): "
                            + ", ".join(c.facility_code for c in missing_facility))
    registered = set(context.instance.get_dynamic_partitions(renal_units_partitions.name))
    units = [c.facility_code for c in eligible if _VALID_UNIT.match(c.facility_code)]
    new = [u for u in units if u not in registered]
    kinds = settings.aot_kinds
    kinds_tag = "+".join(kinds)
    due: dict[str, str] = {}
    for key in missing:
        due.setdefault(key["facility_code"], f"missing:{key['window_end'].isoformat()}")
    for key in expired:
        due.setdefault(key["facility_code"], f"expired:{now:%Y%m%dT%H}")
    run_requests = [
        stats_run_request(u, kinds, f"fill:{u}:{kinds_tag}:{state}", force=False, reason="registry")
        for u, state in sorted(due.items()) if u in units
    ][:MAX_RUNS_PER_TICK]
    partition_requests = [renal_units_partitions.build_add_request(new[i:i + PARTITION_ADD_CHUNK])
                          for i in range(0, len(new), PARTITION_ADD_CHUNK)]
    if not run_requests and not partition_requests and not observations:
        return SkipReason(f"{len(units)} units above cutoff {settings.aot_min_records}: all registered and current "
                          f"({today})")
    context.log.info(f"cutoff {settings.aot_min_records}, kinds {kinds_tag}: registering {len(new)} unit(s), "
                     f"{len(run_requests)} fill run(s), record counts {'changed' if observations else 'unchanged'}")
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=partition_requests,
                        asset_events=observations)


sensors = [renal_units_registry]
