"""Dagster wiring of the cached statuses (domain.md §1, statuses-v2.md): thin over the plain functions.

- one multi-asset `status_tables` producing the five tables, partitioned by `programmes` (partition
  key = programme type), pool `status_refresh`, subsettable (the day-change sensor refreshes only some
  tables), single-run backfill policy (one run can cover every programme);
- run config chooses the scope: everything, some sessions, some patients (+ the refresh-request ids
  to mark processed in the same transaction as the last batch);
- the run's checks, check specs on the multi-asset evaluated in the same step after the refresh: drift
  (rows recomputed) and coverage (every expected row exists), judging what the run covered — its
  programme partitions, and for a scoped run exactly its patients and sessions;
- the whole-cache checks (every programme; drift on a random sample, coverage, bad input: unknown codes,
  orphans, future dates), one op in the `status_checks` job of their own (05:00 London schedule);
- Dagster metadata from orchestration/metadata.py: table name, column schema, owners and tags;
- `status_refresh` and `status_checks` jobs, and how sensors and schedules ask for a refresh run.
"""

from datetime import date, timedelta
from typing import Any, Optional

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
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
    define_asset_job,
    multi_asset,
    multi_asset_check,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
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
from orchestration.metadata import counts_table, family_spec, records_table, table_definition, table_result
from orchestration.partitions import programmes_partitions
from orchestration.patterns import derived_table as dt
from orchestration.schema import metadata as schema
from orchestration.settings import get_settings
from resources.postgres import PostgresResource

GROUP = "statuses"
SOURCE_TABLES = (
    "programmes", "patients", "parents", "sessions", "session_programmes", "session_dates",
    "patient_sessions", "session_attendances", "consents", "triages", "vaccination_records",
)

source_specs = [
    AssetSpec(name, group_name=GROUP, description=f"Operational table `{name}` (written by the Mavis app).",
              kinds={"postgres"}, metadata=table_definition(schema.tables[name]), **family_spec("statuses"))
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
        metadata=table_definition(schema.tables[table.name]),
        **family_spec("statuses"),
    )
    for table in q.STATUS_TABLES
]

# The run's checks (in the refresh's step) and the whole-cache checks (the `status_checks` job).
DRIFT_CHECK = "no_drift"
COVERAGE_CHECK = "every_expected_row_exists"
CACHE_DRIFT_CHECK = "whole_cache_no_drift"
CACHE_COVERAGE_CHECK = "whole_cache_every_expected_row_exists"
INPUTS_CHECK = "status_inputs_valid"
INPUTS_ASSET = "patient_consent_statuses"
SHOWN_ROWS = 50  # rows a failing check names in its metadata (ids and codes only)
MISSING_LIMIT = 100  # coverage stops counting missing rows of a table there

run_check_specs = [
    spec
    for table in q.STATUS_TABLES
    for spec in (
        AssetCheckSpec(DRIFT_CHECK, asset=table.name, description=(
            "After the refresh, in the same step: rows of the run's programmes recomputed from the source tables "
            "and compared with the cache (a random sample of patients after a full refresh; every patient of a "
            "patient or session run); fails naming the rows (ids, programme, cached and recomputed codes).")),
        AssetCheckSpec(COVERAGE_CHECK, asset=table.name, description=(
            "After the refresh, in the same step: every row §1.6 expects in the run's programmes exists (of every "
            "patient, or of the patients and sessions of a scoped run); fails naming the missing keys.")),
    )
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
    check_specs=run_check_specs,
    partitions_def=programmes_partitions,
    can_subset=True,
    pool="status_refresh",
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=RetryPolicy(max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL),
    description="Refresh the five cached status tables of the run's programme partitions (§1.7), then judge "
                "what the run covered (drift, coverage) in the same step.",
)
def status_tables(context: AssetExecutionContext, config: StatusRefreshConfig, postgres: PostgresResource):
    today = _run_today(config)
    scope = config.to_scope()
    names = [key.path[-1] for key in context.selected_asset_keys]
    programmes = list(context.partition_keys)
    if names:  # none when only the checks are selected (re-judging partitions from the UI)
        yield from _refresh(context, config, postgres, names, programmes, today, scope)
    if context.selected_asset_check_keys:
        with postgres.connect() as conn:
            yield from judgement_results(conn, context.selected_asset_check_keys, today, programmes, scope,
                                         (DRIFT_CHECK, COVERAGE_CHECK))


def _refresh(context: AssetExecutionContext, config: StatusRefreshConfig, postgres: PostgresResource,
             names: list[str], programmes: list[str], today: date, scope: StatusScope):
    """Refresh `names` in every programme of the run; one MaterializeResult per table."""
    workers = config.workers or get_settings().status_refresh_workers
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
        # No dagster/row_count: a partition's rows are not indexed by programme (a count would scan the
        # table); the rows the run wrote are given instead.
        yield MaterializeResult(asset_key=AssetKey(name), metadata=table_result(
            schema.tables[name],
            scope=scope.describe(),
            today=today.isoformat(),
            rows_seeded=counts.seeded,
            rows_changed=counts.changed,
            rows_unchanged=counts.unchanged,
            rows_written=counts.seeded + counts.changed,
            batches=counts.batches,
            duration_seconds=round(counts.seconds, 3),
            per_programme=counts_table({p: v[name] for p, v in per_programme.items()}, key_name="programme"),
            requests_marked_processed=marked[0],
        ))


def _rows_result(table: str, check: str, rows: list[dict], judged: dict, counted: str,
                 values: tuple[str, ...] = ()) -> AssetCheckResult:
    """A check's result: passed when no row was found; else the count and the first rows (ids, codes)."""
    metadata = {**judged, counted: len(rows)}
    if rows:
        header = [*q.STATUS_TABLES_BY_NAME[table].key_columns, "programme", *values]
        metadata[f"{counted}_rows"] = records_table(header, [[r[c] for c in header] for r in rows[:SHOWN_ROWS]])
    return AssetCheckResult(asset_key=AssetKey(table), check_name=check, passed=not rows,
                            severity=AssetCheckSeverity.ERROR, metadata=metadata)


def judgement_results(conn, check_keys, today: date, programmes: list[str] | None, scope: StatusScope | None,
                      names: tuple[str, str]) -> list[AssetCheckResult]:
    """The drift and coverage results (check names `names`) of the selected `check_keys`, judging
    `programmes` (None: every programme) over `scope` (None or all: the whole programme)."""
    drift_name, coverage_name = names
    wanted = {(key.asset_key.path[-1], key.name) for key in check_keys}
    drift_tables = [n for n in STATUS_TABLE_NAMES if (n, drift_name) in wanted]
    coverage_tables = [n for n in STATUS_TABLE_NAMES if (n, coverage_name) in wanted]
    judged = {"programmes": ", ".join(programmes) if programmes is not None else "every programme",
              "scope": scope.describe() if scope is not None else "all", "today": today.isoformat()}
    results = []
    if drift_tables:
        sample = get_settings().status_drift_sample
        drift = status_drift(conn, today, sample, drift_tables, programmes, scope)
        figures = {**judged, "sample_patients": sample} if scope is None or scope.all else judged
        results += [_rows_result(n, drift_name, drift[n], figures, "mismatched", ("cached", "computed"))
                    for n in drift_tables]
    if coverage_tables:
        missing = status_coverage(conn, today, coverage_tables, MISSING_LIMIT, programmes=programmes, scope=scope)
        figures = {**judged, "missing_counted_up_to": MISSING_LIMIT}
        results += [_rows_result(n, coverage_name, missing[n], figures, "missing") for n in coverage_tables]
    return results


def _beside_refresh(context: AssetCheckExecutionContext) -> tuple[date, StatusScope | None]:
    """(London date, scope) judged: those of the refresh the checks run beside (a run selecting some
    tables also selects their whole-cache checks unless it names its checks), else today and None."""
    config = (context.run.run_config or {}).get("ops", {}).get("status_tables", {}).get("config")
    if config is None:
        return london_today(now_utc()), None
    refresh = StatusRefreshConfig(**config)
    return _run_today(refresh), refresh.to_scope()


cache_check_specs = [
    *(spec for name in STATUS_TABLE_NAMES for spec in (
        AssetCheckSpec(CACHE_DRIFT_CHECK, asset=name, description=(
            "Whole cache, every programme: a random sample of patients (PSO_STATUS_DRIFT_SAMPLE) recomputed from "
            "the source tables and compared with the cache; fails naming the rows.")),
        AssetCheckSpec(CACHE_COVERAGE_CHECK, asset=name, description=(
            "Whole cache, every programme: every row §1.6 expects exists (missing rows would match no filter)."))
    )),
    AssetCheckSpec(INPUTS_CHECK, asset=INPUTS_ASSET, description=(
        "Source rows the rules cannot read: unknown codes, orphans, future dates (ids only).")),
]
CACHE_CHECK_KEYS = [spec.key for spec in cache_check_specs]


def run_programmes(context: AssetCheckExecutionContext) -> list[str] | None:
    """The programme partitions of the run the check is in (a UI materialization of some partitions
    also runs these checks: they then judge those, over the refresh's scope), or None (the
    `status_checks` job: every programme)."""
    tags = context.run.tags
    if PARTITION_NAME_TAG in tags:
        return [tags[PARTITION_NAME_TAG]]
    if ASSET_PARTITION_RANGE_START_TAG in tags:
        keys = list(context.instance.get_dynamic_partitions(programmes_partitions.name))
        first, last = keys.index(tags[ASSET_PARTITION_RANGE_START_TAG]), keys.index(tags[ASSET_PARTITION_RANGE_END_TAG])
        return keys[first:last + 1]
    return None


@multi_asset_check(specs=cache_check_specs, name="status_cache_checks", can_subset=True,
                   required_resource_keys={"postgres"},
                   description="Whole-cache judgements of the cached statuses: drift, coverage, bad input.")
def status_cache_checks(context: AssetCheckExecutionContext):
    today, scope = _beside_refresh(context)
    with context.resources.postgres.connect() as conn:
        yield from judgement_results(conn, context.selected_asset_check_keys, today, run_programmes(context), scope,
                                     (CACHE_DRIFT_CHECK, CACHE_COVERAGE_CHECK))
        if AssetCheckKey(AssetKey(INPUTS_ASSET), INPUTS_CHECK) in context.selected_asset_check_keys:
            bad = bad_status_inputs(conn, now_utc())
            yield AssetCheckResult(
                asset_key=AssetKey(INPUTS_ASSET), check_name=INPUTS_CHECK, passed=not bad,
                severity=AssetCheckSeverity.ERROR,
                metadata={label: MetadataValue.json(ids) for label, ids in bad.items()} or {"bad_rows": 0})


status_checks = [status_cache_checks]


def run_check_keys(asset_keys) -> list[AssetCheckKey]:
    """The run's checks of some status tables: what a run request selecting those tables should name
    as its `asset_check_keys` (left unnamed, Dagster adds the tables' whole-cache checks too)."""
    wanted = {AssetKey(key) if isinstance(key, str) else key for key in asset_keys}
    return [spec.key for spec in run_check_specs if spec.asset_key in wanted]


STATUS_ASSET_KEYS = [AssetKey(n) for n in STATUS_TABLE_NAMES]
DATE_DEPENDENT_KEYS = [AssetKey(n) for n in q.DATE_DEPENDENT_TABLES]

status_refresh_job = define_asset_job(
    "status_refresh",
    # The tables and the run's checks (evaluated in the refresh's step); not the whole-cache checks.
    selection=AssetSelection.assets(*STATUS_ASSET_KEYS) - AssetSelection.checks(*CACHE_CHECK_KEYS),
    description="Refresh the cached statuses of programme partitions (scope in run config); its checks judge "
                "what the run covered.",
)
status_checks_job = define_asset_job(
    "status_checks",
    selection=AssetSelection.checks(*CACHE_CHECK_KEYS),
    description="Whole-cache drift, coverage and bad-input checks of the cached statuses (every programme).",
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
