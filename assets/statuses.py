"""Cached statuses (Mavis, domain.md §1): the five status tables as programme-partitioned assets.

The tables are instances of the derived-table pattern (orchestration/patterns/derived_table.py),
declared in orchestration/statuses_sql.py. This module holds the plain functions (scope → batches →
refresh, checks, explain; each takes a SQLAlchemy Connection) and the thin Dagster wiring:

- one multi-asset `status_tables` producing the five tables, partitioned by `programmes` (partition
  key = programme type), pool `status_refresh`, subsettable (the day-change sensor refreshes only the
  two date-dependent tables), single-run backfill policy (one run can cover every programme);
- run config chooses the scope: everything, some sessions, some patients (+ the refresh-request ids
  to mark processed in the same transaction as the last batch);
- asset checks: drift (random sample recomputed), coverage (every expected row exists),
  bad input (unknown codes, orphans, future dates);
- `status_refresh` job, and `pso explain PATIENT_ID PROGRAMME_TYPE`.
"""

import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Callable, Iterable, Optional

import sqlalchemy as sa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    Backoff,
    BackfillPolicy,
    Config,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset_check,
    define_asset_job,
    multi_asset,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from pydantic import Field

from orchestration import statuses_sql as q
from orchestration.clock import academic_year, london_today, now_utc
from orchestration.partitions import programmes_partitions
from orchestration.patterns import derived_table as dt
from orchestration.settings import get_settings
from resources.postgres import PostgresResource

GROUP = "statuses"
# pg_advisory_xact_lock key shared by every status refresh batch (any scope, any programme).
STATUS_REFRESH_LOCK_KEY = 0x5053_0001
DRIFT_SAMPLE_SIZE = int(os.environ.get("PSO_STATUS_DRIFT_SAMPLE", "500"))

SOURCE_TABLES = (
    "programmes", "patients", "parents", "sessions", "session_programmes", "session_dates",
    "patient_sessions", "session_attendances", "consents", "triages", "vaccination_records",
)
STATUS_TABLE_NAMES = tuple(t.name for t in q.STATUS_TABLES)


# ---------------------------------------------------------------------------------------------
# Plain functions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusScope:
    """What one refresh covers: everything, and/or some patients, and/or some sessions."""

    all: bool = False
    patient_ids: tuple[int, ...] = ()
    session_ids: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.all:
            return "all"
        parts = []
        if self.patient_ids:
            parts.append(f"{len(self.patient_ids)} patient(s)")
        if self.session_ids:
            parts.append(f"session(s) {', '.join(map(str, self.session_ids[:20]))}")
        return " + ".join(parts) or "empty"


def base_params(programme_id: int, today: date) -> dict[str, Any]:
    return {"programme_id": programme_id, "today": today, "academic_year": academic_year(today),
            "session_ids": None}


def scope_passes(scope: StatusScope, params: dict[str, Any],
                 batch_size: int = dt.DEFAULT_BATCH_SIZE) -> list[tuple[dt.BatchSource, dict]]:
    """(batch source, extra params) for each pass a scope needs; batches are of patients."""
    if scope.all:
        born_from, born_to = q.eligible_birth_years(params["programme_type"], params["academic_year"])
        programme = {"programme_id": params["programme_id"], "born_from": born_from, "born_to": born_to}
        return [(dt.keyset_batches(q.PROGRAMME_PATIENTS_SQL, programme, batch_size), {})]
    passes = []
    if scope.patient_ids:
        passes.append((dt.list_batches(scope.patient_ids, batch_size), {}))
    if scope.session_ids:
        sessions = {"session_ids": sorted(set(scope.session_ids))}
        passes.append((dt.keyset_batches(q.SESSION_PATIENTS_SQL, sessions, batch_size), sessions))
    return passes


def tables_named(names: Iterable[str] | None) -> list[dt.DerivedTable]:
    if names is None:
        return list(q.STATUS_TABLES)
    wanted = set(names)
    unknown = wanted - set(q.STATUS_TABLES_BY_NAME)
    if unknown:
        raise ValueError(f"unknown status tables: {sorted(unknown)}")
    return [t for t in q.STATUS_TABLES if t.name in wanted]


def refresh_statuses(
    conn: sa.Connection,
    programme_id: int,
    scope: StatusScope,
    today: date,
    table_names: Iterable[str] | None = None,
    finalize: Callable[[sa.Connection], None] | None = None,
    batch_size: int = dt.DEFAULT_BATCH_SIZE,
    workers: int = 1,
) -> dt.RefreshResult:
    """Seed, recompute and write back the status tables of one programme over `scope`, with up to
    `workers` batches at once."""
    tables = tables_named(table_names)
    result = dt.RefreshResult(tables={t.name: dt.RefreshCounts() for t in tables})
    programme_type = conn.execute(sa.text("SELECT type FROM programmes WHERE id = :id"),
                                  {"id": programme_id}).scalar_one()
    conn.commit()  # each batch below is its own transaction
    passes = scope_passes(scope, {**base_params(programme_id, today), "programme_type": programme_type}, batch_size)
    if not passes:
        if finalize is not None:
            with conn.begin():
                finalize(conn)
        return result
    for index, (batches, extra) in enumerate(passes):
        last = index == len(passes) - 1
        params = {**base_params(programme_id, today), **extra}
        result.merge(dt.refresh(conn, tables, batches, params, STATUS_REFRESH_LOCK_KEY,
                                finalize=finalize if last else None, workers=workers))
    return result


def programme_ids_by_type(conn: sa.Connection) -> dict[str, int]:
    return dict(conn.execute(sa.text("SELECT type, id FROM programmes")).all())


def pending_request_ids(conn: sa.Connection) -> list[int]:
    """The requests not yet processed, as committed now. A request commits with the change that raised
    it, so a full run that starts after reading these sees every change they ask for; one committed
    later (even by a transaction that began earlier, so with an older `requested_at`) may hold a change
    the run's batches read too soon, and is left for the next run."""
    return conn.execute(sa.text(
        "SELECT id FROM status_refresh_requests WHERE processed_at IS NULL ORDER BY id")).scalars().all()


def mark_requests_processed(conn: sa.Connection, request_ids: Iterable[int]) -> int:
    """Mark the given requests processed (those not already marked); returns how many."""
    return conn.execute(
        sa.text("UPDATE status_refresh_requests SET processed_at = now() "
                "WHERE processed_at IS NULL AND id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": sorted(set(request_ids))},
    ).rowcount


def drift_sample_ids(conn: sa.Connection, sample_size: int) -> list[int]:
    """A random sample of patients that have a cached row (TABLESAMPLE-free: the sample is small)."""
    return conn.execute(
        sa.text("SELECT id FROM patients ORDER BY random() LIMIT :n"), {"n": sample_size}
    ).scalars().all()


def status_drift(conn: sa.Connection, today: date, sample_size: int = DRIFT_SAMPLE_SIZE,
                 table_names: Iterable[str] | None = None) -> dict[str, list[dict]]:
    """Per table: rows of a random patient sample whose cached status differs from a recomputation."""
    sample = sorted(drift_sample_ids(conn, sample_size))
    tables = tables_named(table_names)
    found: dict[str, list[dict]] = {t.name: [] for t in tables}
    for programme_id in programme_ids_by_type(conn).values():
        for name, rows in dt.drift(conn, tables, sample, base_params(programme_id, today)).items():
            found[name].extend(rows)
    return found


def status_coverage(conn: sa.Connection, today: date, table_names: Iterable[str] | None = None,
                    limit: int = 100) -> dict[str, list[dict]]:
    """Per table: expected rows (§1.6) that do not exist, up to `limit` each."""
    tables = tables_named(table_names)
    found: dict[str, list[dict]] = {t.name: [] for t in tables}
    for programme_id in programme_ids_by_type(conn).values():
        batches = dt.keyset_batches(q.ALL_PATIENTS_SQL, {})
        for name, rows in dt.coverage(conn, tables, batches, base_params(programme_id, today), limit).items():
            found[name].extend(rows)
    return {name: rows[:limit] for name, rows in found.items()}


# Bad input the schema cannot forbid on its own (CHECK and NOT NULL constraints stop unknown and missing
# codes; these queries still name them if a constraint was dropped or a loader bypassed it — hence the
# IS NULL tests, which NOT IN alone would miss).
BAD_INPUT_QUERIES = {
    "consents with an unknown or missing response or route": """
        SELECT id FROM consents
        WHERE response IS NULL OR response NOT IN (0, 1, 2) OR route IS NULL OR route NOT IN (0, 1, 2, 3, 4)
        ORDER BY id LIMIT 100""",
    "triages with an unknown or missing status": """
        SELECT id FROM triages WHERE status IS NULL OR status NOT IN (0, 1, 2, 3) ORDER BY id LIMIT 100""",
    "vaccination records with an unknown or missing outcome": """
        SELECT id FROM vaccination_records WHERE outcome IS NULL OR outcome NOT IN (0, 1, 2, 3, 4, 5, 6)
        ORDER BY id LIMIT 100""",
    "consents whose health_answers is not a list": """
        SELECT id FROM consents WHERE jsonb_typeof(health_answers) <> 'array' ORDER BY id LIMIT 100""",
    "vaccination records performed in the future": """
        SELECT id FROM vaccination_records
        WHERE discarded_at IS NULL AND performed_at > CAST(:now AS timestamptz) ORDER BY id LIMIT 100""",
    "consents submitted or created in the future": """
        SELECT id FROM consents
        WHERE invalidated_at IS NULL AND (submitted_at > CAST(:now AS timestamptz) OR created_at > CAST(:now AS timestamptz))
        ORDER BY id LIMIT 100""",
    # A future triage would stay the latest one, whatever is recorded after it.
    "triages created in the future": """
        SELECT id FROM triages
        WHERE invalidated_at IS NULL AND created_at > CAST(:now AS timestamptz) ORDER BY id LIMIT 100""",
    "attendances on a date of another session": """
        SELECT a.id FROM session_attendances AS a
        JOIN session_dates AS sd ON sd.id = a.session_date_id
        JOIN patient_sessions AS ps ON ps.id = a.patient_session_id
        WHERE sd.session_id <> ps.session_id ORDER BY a.id LIMIT 100""",
    "vaccination records whose session lacks the programme": """
        SELECT vr.id FROM vaccination_records AS vr
        WHERE vr.session_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM session_programmes sp WHERE sp.session_id = vr.session_id AND sp.programme_id = vr.programme_id)
        ORDER BY vr.id LIMIT 100""",
    "consents whose parent does not exist": """
        SELECT c.id FROM consents AS c
        WHERE c.parent_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM parents p WHERE p.id = c.parent_id)
        ORDER BY c.id LIMIT 100""",
    "patient sessions without a session programme": """
        SELECT ps.id FROM patient_sessions AS ps
        WHERE NOT EXISTS (SELECT 1 FROM session_programmes sp WHERE sp.session_id = ps.session_id)
        ORDER BY ps.id LIMIT 100""",
}


def bad_status_inputs(conn: sa.Connection, now: datetime) -> dict[str, list[int]]:
    """Each kind of bad input row found, by id (ids only: no personal data)."""
    found = {}
    # A small grace period: clocks of the writing app and ours are never exactly equal.
    limit = now + timedelta(minutes=5)
    for label, sql in BAD_INPUT_QUERIES.items():
        ids = conn.execute(sa.text(sql), {"now": limit}).scalars().all()
        if ids:
            found[label] = list(ids)
    return found


def explain_statuses(conn: sa.Connection, patient_id: int, programme_type: str, today: date) -> dict[str, Any]:
    """For one patient and programme: every status (cached and recomputed) and the inputs that decided it."""
    ids = programme_ids_by_type(conn)
    if programme_type not in ids:
        raise ValueError(f"unknown programme {programme_type!r}; known: {sorted(ids)}")
    if conn.execute(sa.text("SELECT id FROM patients WHERE id = :id"), {"id": patient_id}).first() is None:
        raise ValueError(f"no patient with id {patient_id}")
    params = base_params(ids[programme_type], today)
    statuses = dt.explain(conn, q.STATUS_TABLES, patient_id, params)
    with dt.read_transaction(conn):
        batch = {**params, **dt.fill_batch_ids(conn, [patient_id])}
        inputs = {label: [dict(r) for r in conn.execute(sa.text(sql), batch).mappings().all()]
                  for label, sql in q.EXPLAIN_INPUTS.items()}
    return {"patient_id": patient_id, "programme": programme_type, "today": today.isoformat(),
            "statuses": statuses, "inputs": inputs}


STATUS_NAMES = {
    "patient_consent_statuses": {0: "no_response", 1: "given", 2: "refused", 3: "conflicts"},
    "patient_triage_statuses": {0: "not_required", 1: "required", 2: "safe_to_vaccinate", 3: "do_not_vaccinate",
                                4: "delay_vaccination"},
    "patient_vaccination_statuses": {0: "none_yet", 1: "vaccinated", 2: "could_not_vaccinate"},
    "patient_session_session_statuses": {0: "none_yet", 1: "vaccinated", 2: "already_had", 3: "had_contraindications",
                                         4: "refused", 5: "absent_from_session", 6: "unwell", 7: "absent_from_school"},
    "patient_session_registration_statuses": {0: "unknown", 1: "attending", 2: "not_attending", 3: "completed"},
}


def format_explanation(explanation: dict[str, Any]) -> str:
    lines = [f"patient {explanation['patient_id']} · programme {explanation['programme']} · "
             f"today {explanation['today']} (Europe/London)", ""]
    for table, rows in explanation["statuses"].items():
        names = STATUS_NAMES[table]
        if not rows:
            lines.append(f"{table}: no row (readers show code 0)")
        for row in rows:
            keys = ", ".join(f"{k}={row[k]}" for k in row if k not in ("cached", "computed"))
            flag = "" if row["cached"] == row["computed"] else "   ← STALE: a refresh will change it"
            lines.append(f"{table} [{keys}]: {names.get(row['cached'], row['cached'])} "
                         f"(recomputed: {names.get(row['computed'], row['computed'])}){flag}")
    lines.append("")
    for label, rows in explanation["inputs"].items():
        lines.append(f"{label}:")
        if not rows:
            lines.append("  (none)")
        for row in rows:
            lines.append("  " + ", ".join(f"{k}={_show(v)}" for k, v in row.items()))
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


# ---------------------------------------------------------------------------------------------
# Dagster wiring
# ---------------------------------------------------------------------------------------------

source_specs = [
    AssetSpec(name, group_name=GROUP, description=f"Operational table `{name}` (written by the Mavis app).",
              kinds={"postgres"})
    for name in SOURCE_TABLES
]

_DEPS = {
    "patient_consent_statuses": ["programmes", "patients", "parents", "consents"],
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
        description=f"Cached {table.description}; kept equal to its SQL in orchestration/statuses_sql.py.",
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
            if index == len(programmes) - 1 and request_ids:
                # Requests count as processed only with the run's last batch (at-least-once).
                def finalize(c):
                    marked[0] = mark_requests_processed(c, request_ids)

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
        with context.resources.postgres.connect() as conn:
            mismatched = status_drift(conn, _check_today(), DRIFT_SAMPLE_SIZE, [table_name])[table_name]
        return AssetCheckResult(
            passed=not mismatched,
            severity=AssetCheckSeverity.ERROR,
            metadata={"sample_patients": DRIFT_SAMPLE_SIZE, "mismatched": len(mismatched),
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
