"""Cohort stats Dagster wiring (domain.md §2): source specs, assets, the expiry check, the job, and the
run requests the schedule and sensors send.

Assets (group `cohort_stats`, pool `facility_stats`, partitions `renal_units`):
- `facility_record_counts` — UKRDC record count per sending facility, rewritten on every run;
- `facility_stats_dialysis`, `facility_stats_demographics` — W1/W2 stats of the partition's unit(s).
Job `facility_stats_aot` holds all three; the 8-hourly schedule, the registry sensor and the
sync-complete handler request its runs with `asset_selection` = the kinds in `stats_settings.aot_kinds`.
"""

import time
import warnings
from typing import Any, Iterable

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    BetaWarning,
    Config,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    RunRequest,
    asset,
    asset_check,
    define_asset_job,
)

from assets.cohort_stats.cache import REFRESH_GRACE, STATS_CACHE, expired_aot_entries, refresh_units
from assets.cohort_stats.eligibility import (
    DEFAULT_TTL,
    KINDS,
    eligible_units,
    read_stats_settings,
    refresh_record_counts,
)
from assets.cohort_stats.metadata import TABLES, skipped_table
from assets.cohort_stats.windows import stats_windows
from orchestration import schema
from orchestration.clock import london_today, now_utc
from orchestration.metadata import family_spec, records_table, row_count, source_spec, table_result
from orchestration.partitions import renal_units_partitions
from orchestration.patterns.ttl_cache import transaction
from resources.postgres import PostgresResource

GROUP = "cohort_stats"
FAMILY = "cohort_stats"
POOL = "facility_stats"
JOB_NAME = "facility_stats_aot"


SOURCE_SPECS = [source_spec(AssetKey(["ukrdc", name]), FAMILY, description, table=getattr(schema, name),
                            group_name=GROUP) for name, description in (
    ("patientrecord", "UKRDC patient records (sendingfacility, sendingextract) — written by the renal feed"),
    ("patient", "UKRDC patient demographics (birth, death, gender, ethnic group)"),
    ("treatment", "UKRDC treatments (facility, from/to, admit reason, qbl05)"),
    ("dialysissession", "UKRDC dialysis sessions"),
    ("facility", "Renal units"),
    ("stats_settings", "Runtime settings: cutoff, ahead-of-time kinds, skip window, TTL"),
)]
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
    **family_spec(FAMILY, schema.facility_record_counts),
)
def facility_record_counts(context: AssetExecutionContext, postgres: PostgresResource) -> MaterializeResult:
    started = time.perf_counter()
    now = now_utc()
    with postgres.connect() as conn:
        counts = refresh_record_counts(conn, now)
        with transaction(conn):
            settings = read_stats_settings(conn)
            eligible, missing = eligible_units(conn, settings)
        rows = row_count(conn, schema.facility_record_counts)  # one row per sending facility: small
    return MaterializeResult(metadata={
        **table_result(schema.facility_record_counts, rows=rows),
        **counts,
        "cutoff (aot_min_records)": settings.aot_min_records,
        "units above cutoff": len(eligible),
        "above cutoff without facility row (skipped)": records_table(["facility_code"],
                                                                     [[c.facility_code] for c in missing]),
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
        **family_spec(FAMILY, schema.facility_stats),
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
            stats = schema.facility_stats.c  # the partition's entries (primary key prefix: cheap)
            rows = row_count(conn, schema.facility_stats, stats.facility_code.in_(units), stats.stats_kind == kind)
            conn.commit()
        metadata: dict[str, Any] = {
            **table_result(schema.facility_stats, rows=rows),
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
            metadata["skipped units"] = skipped_table(skipped)
        labels = {w.start: w.name.upper() for w in stats_windows(london_today(run_start))}
        for r in done:
            if r.outcomes:
                prefix = r.unit if len(units) > 1 else "stats"
                tables = TABLES[kind]([(labels.get(o.key["window_start"], ""), o.values) for o in r.outcomes])
                metadata.update({prefix + suffix: table for suffix, table in tables.items()})
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
                             f"(more than {int(REFRESH_GRACE.total_seconds() // 60)} min past expires_at, or "
                             "computed by an older calculator version).")
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
