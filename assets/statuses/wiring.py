"""Dagster wiring of the cached statuses (domain.md §1, statuses-v2.md): thin over the plain functions.

- one multi-asset `status_tables` producing the five tables, partitioned by `programmes` (partition
  key = programme type), pool `status_refresh`, subsettable (the day-change sensor refreshes only some
  tables), single-run backfill policy (one run can cover every programme);
- run config chooses the scope: everything, some sessions, some patients (+ the refresh-request ids
  to mark processed in the same transaction as the last batch);
- asset checks: drift (random sample recomputed), coverage (every expected row exists),
  bad input (unknown codes, orphans, future dates);
- `status_refresh` and `status_checks` jobs, and how sensors and schedules ask for a refresh run.
"""

from datetime import date, timedelta
from typing import Any, Optional

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    Backoff,
    Config,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset_check,
    define_asset_job,
    multi_asset,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from pydantic import Field

from assets.statuses import sql as q
from assets.statuses.checks import bad_status_inputs, status_coverage, status_drift
from assets.statuses.refresh import (
    STATUS_TABLE_NAMES,
    StatusScope,
    mark_requests_processed,
    pending_request_ids,
    programme_ids_by_type,
    record_rules_version,
    refresh_statuses,
)
from orchestration.clock import london_today, now_utc
from orchestration.partitions import programmes_partitions
from orchestration.patterns import derived_table as dt
from orchestration.settings import get_settings
from resources.postgres import PostgresResource

GROUP = "statuses"
SOURCE_TABLES = (
    "programmes", "patients", "parents", "sessions", "session_programmes", "session_dates",
    "patient_sessions", "session_attendances", "consents", "triages", "vaccination_records",
)

source_specs = [
    AssetSpec(name, group_name=GROUP, description=f"Operational table `{name}` (written by the Mavis app).",
              kinds={"postgres"})
    for name in SOURCE_TABLES
]

_DEPS = {
    # v2 C3: consent not_required once vaccinated, so the consent statuses read the records too.
    "patient_consent_statuses": ["programmes", "patients", "parents", "consents", "vaccination_records"],
    "patient_triage_statuses": ["programmes", "patients", "parents", "consents", "triages", "vaccination_records"],
    "patient_vaccination_statuses": ["programmes", "patients", "parents", "consents", "triages",
                                     "vaccination_records"],
    "patient_session_session_statuses": ["programmes", "patients", "parents", "sessions", "session_programmes",
                                         "session_dates", "patient_sessions", "session_attendances", "consents",
                                         "triages", "vaccination_records"],
    "patient_session_registration_statuses": ["programmes", "patients", "sessions", "session_programmes",
                                              "session_dates", "patient_sessions", "session_attendances",
                                              "vaccination_records"],
}

# Statuses are promised within a day: the 03:00 London refresh must have run by 06:00 London.
STATUS_FRESHNESS = FreshnessPolicy.cron(deadline_cron="0 6 * * *", lower_bound_delta=timedelta(hours=3),
                                        timezone="Europe/London")

status_specs = [
    AssetSpec(
        table.name,
        group_name=GROUP,
        deps=_DEPS[table.name],
        description=f"Cached {table.description}; kept equal to its SQL in assets/statuses/sql.py.",
        partitions_def=programmes_partitions,
        kinds={"postgres"},
        freshness_policy=STATUS_FRESHNESS,
        skippable=True,
    )
    for table in q.STATUS_TABLES
]


class StatusRefreshConfig(Config):
    """Scope of a status refresh run (default: everything in each programme partition of the run)."""

    scope: str = Field(default="all", description="all | patients | sessions | patients_and_sessions")
    patient_ids: list[int] = Field(default_factory=list)
    session_ids: list[int] = Field(default_factory=list)
    request_ids: list[int] = Field(default_factory=list,
                                   description="status_refresh_requests rows to mark processed when done")
    today: Optional[str] = Field(default=None, description="ISO London date override (tests, replays)")
    workers: Optional[int] = Field(default=None, ge=1, description="batches refreshed at once, each on its own "
                                   "connection (default: PSO_STATUS_REFRESH_WORKERS, 2)")

    def to_scope(self) -> StatusScope:
        if self.scope == "all":
            return StatusScope(all=True)
        if self.scope not in ("patients", "sessions", "patients_and_sessions"):
            raise ValueError(f"unknown scope {self.scope!r}")
        return StatusScope(patient_ids=tuple(self.patient_ids), session_ids=tuple(self.session_ids))


def _run_today(config: StatusRefreshConfig) -> date:
    return date.fromisoformat(config.today) if config.today else london_today(now_utc())


@multi_asset(
    name="status_tables",
    specs=status_specs,
    partitions_def=programmes_partitions,
    can_subset=True,
    pool="status_refresh",
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=RetryPolicy(max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL),
    description="Refresh the five cached status tables of the run's programme partitions (§1.7).",
)
def status_tables(context: AssetExecutionContext, config: StatusRefreshConfig, postgres: PostgresResource):
    today = _run_today(config)
    scope = config.to_scope()
    workers = config.workers or get_settings().status_refresh_workers
    names = [key.path[-1] for key in context.selected_asset_keys]
    programmes = list(context.partition_keys)
    totals = dt.RefreshResult(tables={n: dt.RefreshCounts() for n in names})
    per_programme: dict[str, dict[str, dict]] = {}
    marked = [0]
    with postgres.connect() as conn:
        ids = programme_ids_by_type(conn)
        conn.commit()
        unknown = [p for p in programmes if p not in ids]
        if unknown:
            raise ValueError(f"programme partitions without a programmes row: {unknown}")
        # Only a full run of EVERY table over EVERY programme repairs whatever an earlier request asked
        # for: it settles every request committed before it starts (see pending_request_ids).
        covers_all = (scope.all and set(names) == set(q.STATUS_TABLES_BY_NAME) and set(programmes) >= set(
            context.instance.get_dynamic_partitions(programmes_partitions.name)))
        request_ids = [*config.request_ids, *(pending_request_ids(conn) if covers_all else [])]
        conn.commit()
        for index, programme in enumerate(programmes):
            finalize = None
            if index == len(programmes) - 1 and (request_ids or covers_all):
                # Requests count as processed only with the run's last batch (at-least-once); a full run
                # records the rules version every status was computed under in the same transaction.
                def finalize(c):
                    marked[0] = mark_requests_processed(c, request_ids)
                    if covers_all:
                        record_rules_version(c)

            result = refresh_statuses(conn, ids[programme], scope, today, names, finalize=finalize,
                                      workers=workers)
            totals.merge(result)
            per_programme[programme] = {n: c.as_dict() for n, c in result.tables.items()}
            context.log.info(f"programme {programme}: scope {scope.describe()}, "
                             + "; ".join(f"{n} {c.as_dict()}" for n, c in result.tables.items()))
    for name in names:
        counts = totals.tables[name]
        yield MaterializeResult(
            asset_key=AssetKey(name),
            metadata={
                "scope": scope.describe(),
                "today": today.isoformat(),
                "rows_seeded": counts.seeded,
                "rows_changed": counts.changed,
                "rows_unchanged": counts.unchanged,
                "batches": counts.batches,
                "duration_seconds": round(counts.seconds, 3),
                "per_programme": MetadataValue.json({p: v[name] for p, v in per_programme.items()}),
                "requests_marked_processed": marked[0],
            },
        )


def _check_today() -> date:
    return london_today(now_utc())


def _drift_check(table_name: str):
    @asset_check(asset=AssetKey(table_name), name="no_drift", required_resource_keys={"postgres"},
                 description="Recompute a random sample of patients from the source tables and compare with "
                             "the cache; fails naming the mismatched keys.", blocking=False)
    def check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        sample_size = get_settings().status_drift_sample
        with context.resources.postgres.connect() as conn:
            mismatched = status_drift(conn, _check_today(), sample_size, [table_name])[table_name]
        return AssetCheckResult(
            passed=not mismatched,
            severity=AssetCheckSeverity.ERROR,
            metadata={"sample_patients": sample_size, "mismatched": len(mismatched),
                      "mismatched_keys": MetadataValue.json(mismatched[:100])},
        )

    return check


def _coverage_check(table_name: str):
    @asset_check(asset=AssetKey(table_name), name="every_expected_row_exists", required_resource_keys={"postgres"},
                 description="Every row §1.6 expects exists (missing rows would match no filter).")
    def check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        with context.resources.postgres.connect() as conn:
            missing = status_coverage(conn, _check_today(), [table_name])[table_name]
        return AssetCheckResult(passed=not missing, severity=AssetCheckSeverity.ERROR,
                                metadata={"missing": len(missing), "missing_keys": MetadataValue.json(missing)})

    return check


@asset_check(asset=AssetKey("patient_consent_statuses"), name="status_inputs_valid",
             required_resource_keys={"postgres"},
             description="Source rows the rules cannot read: unknown codes, orphans, future dates (ids only).")
def status_inputs_valid(context: AssetCheckExecutionContext) -> AssetCheckResult:
    with context.resources.postgres.connect() as conn:
        bad = bad_status_inputs(conn, now_utc())
    return AssetCheckResult(passed=not bad, severity=AssetCheckSeverity.ERROR,
                            metadata={label: MetadataValue.json(ids) for label, ids in bad.items()} or {"bad_rows": 0})


status_checks = [f(name) for name in STATUS_TABLE_NAMES for f in (_drift_check, _coverage_check)]
status_checks.append(status_inputs_valid)

STATUS_ASSET_KEYS = [AssetKey(n) for n in STATUS_TABLE_NAMES]
DATE_DEPENDENT_KEYS = [AssetKey(n) for n in q.DATE_DEPENDENT_TABLES]

status_refresh_job = define_asset_job(
    "status_refresh",
    selection=AssetSelection.assets(*STATUS_ASSET_KEYS),
    description="Refresh the cached statuses of programme partitions (scope in run config).",
)
status_checks_job = define_asset_job(
    "status_checks",
    selection=AssetSelection.checks_for_assets(*STATUS_ASSET_KEYS),
    description="Drift, coverage and bad-input checks of the cached statuses.",
)

# How the sensors and the nightly schedule ask for a refresh run (both import these from here).
TRIGGER_TAG = "pso/trigger"
NIGHTLY_DATE_TAG = "pso/nightly_date"  # the London date a nightly full refresh is for


def refresh_run_config(scope: str, patient_ids=(), session_ids=(), request_ids=(), today: date | None = None) -> dict:
    config: dict[str, Any] = {"scope": scope, "patient_ids": sorted(set(patient_ids)),
                              "session_ids": sorted(set(session_ids)), "request_ids": sorted(set(request_ids))}
    if today is not None:
        config["today"] = today.isoformat()
    return {"ops": {"status_tables": {"config": config}}}


def all_programmes_tags(partition_keys: list[str]) -> dict[str, str]:
    """Tags for ONE run over every programme partition (dynamic partitions keep insertion order)."""
    return {ASSET_PARTITION_RANGE_START_TAG: partition_keys[0], ASSET_PARTITION_RANGE_END_TAG: partition_keys[-1]}


assets: list = [*source_specs, status_tables]
asset_checks: list = status_checks
jobs: list = [status_refresh_job, status_checks_job]
