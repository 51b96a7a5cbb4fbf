"""Cached statuses refresh (issue 3, deliverable 8).

Measures, in one scratch database loaded by the statuses generator at `scale` (20 → 60,000 patients,
~51,000 in the flu programme):
- full refresh of every programme from an empty cache (seeded and computed): the flu partition, then the
  others; the median of 3 runs of each, and of their sum;
- a no-change full refresh (must write 0 rows), and a nightly one after 1% of the flu patients changed;
- refresh of 1 patient and of 1,000 patients (every programme);
- baseline (a): the upstream's shape — per patient, per-patient queries, statuses computed in Python,
  one UPDATE per row — on a sample, per row; its results are also compared with the SQL's;
- baseline (b), the floor: a bare `INSERT INTO … SELECT` of the rows the full refresh wrote, into copies
  of the status tables with their keys, indexes and foreign keys; (b0) the same without foreign keys
  (each the median of 3 rounds, timed as the refreshes are).

Scale 20 gives the 50,000-patient programme; scale 46 gives ≥ 1,000,000 patient×programme rows.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import sqlalchemy as sa

from assets.statuses import StatusScope, programme_ids_by_type, refresh_statuses
from bench.runner import BenchDatabase, BenchReport, timed
from orchestration.clock import academic_year, london_today, now_utc
from orchestration.settings import get_settings
from assets.statuses import PROGRAMME_YEAR_GROUPS
from orchestration.synthetic import seed_all

EMPTY_CACHE_RUNS = 3
STATUS_TABLES = ("patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses",
                 "patient_session_session_statuses", "patient_session_registration_statuses")


def _total_rows(conn) -> int:
    return sum(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in STATUS_TABLES)


def _refresh_all(engine, scope: StatusScope, today: date, programmes: dict[str, int] | None = None,
                 workers: int | None = None):
    """Refresh `programmes` (default: all) with `workers` batches at once (default: the product's setting)."""
    workers = workers or get_settings().status_refresh_workers
    written = rows = 0
    with engine.connect() as conn:
        ids = programmes or programme_ids_by_type(conn)
        conn.commit()
        for pid in ids.values():
            result = refresh_statuses(conn, pid, scope, today, workers=workers)
            written += result.written
            rows += sum(c.changed + c.unchanged for c in result.tables.values())
    return written, rows


# --- baseline (a): per-patient Python, the upstream's shape ------------------------------------


def _age(dob: date, day: date) -> int:
    from orchestration.clock import age_on

    return age_on(dob, day)


def _needs_triage(consent) -> bool:
    """triage_needed (v2 D5): a "yes" (any case) to a question whose would_require_triage is not JSON false."""
    return consent.response == 0 and any(
        str(a.get("response", "")).lower() == "yes" and a.get("would_require_triage", True) is not False
        for a in consent.health_answers)


def _vaccinated(records: list, programme_type: str, age) -> bool:
    """Vaccinated over R(y) (v2 §1.4; D4 for td_ipv)."""
    administered = [r for r in records if r.outcome == 0]
    if any(r.outcome == 4 for r in records):
        return True
    if programme_type == "menacwy":
        return any(age(r) >= 10 for r in administered)
    if programme_type == "td_ipv":
        return any((r.dose_sequence == 5 or r.session_id is not None) and age(r) >= 10 for r in administered)
    return bool(administered)


def python_statuses(conn, patient_id: int, programme_id: int, programme_type: str, today: date) -> dict:
    """One patient, one programme: per-patient queries, rules v2 in Python (statuses-v2.md Part 1), judged
    in Y = academic_year(today)."""
    from orchestration.clock import london_date

    year = academic_year(today)
    patient = conn.execute(sa.text("SELECT given_name, family_name, date_of_birth FROM patients WHERE id = :p"),
                           {"p": patient_id}).one()
    consents = conn.execute(sa.text(
        "SELECT c.id, c.response, c.route, c.health_answers, c.submitted_at, c.created_at, c.academic_year, "
        "pa.full_name FROM consents c LEFT JOIN parents pa ON pa.id = c.parent_id WHERE c.patient_id = :p "
        "AND c.programme_id = :pr AND c.invalidated_at IS NULL AND c.response <> 2"),
        {"p": patient_id, "pr": programme_id}).all()
    groups: dict[str, tuple] = {}
    for c in consents:
        if (c.academic_year if c.academic_year is not None else academic_year(london_date(c.submitted_at))) != year:
            continue  # L(Y) step 2a: a consent counts only in its own academic year
        name = f"{patient.given_name} {patient.family_name}" if c.route == 4 else (
            c.full_name or "Parent or guardian (name unknown)")
        if name not in groups or (c.submitted_at, c.created_at, c.id) > groups[name][0]:
            groups[name] = ((c.submitted_at, c.created_at, c.id), c)
    latest = [g[1] for g in groups.values()]
    selfs = [c for c in latest if c.route == 4]
    parental = [c for c in latest if c.route != 4]
    focus = selfs or parental
    if (selfs and all(c.response == 0 for c in selfs)) or (not selfs and parental and all(c.response == 0 for c in parental)):
        consent = 1
    elif latest and all(c.response == 1 for c in latest):
        consent = 2
    elif any(c.response == 0 for c in focus) and any(c.response == 1 for c in focus):
        consent = 3
    else:
        consent = 0
    triages = [t for t in conn.execute(sa.text(
        "SELECT id, status, created_at, academic_year, delay_vaccination_until FROM triages "
        "WHERE patient_id = :p AND programme_id = :pr AND invalidated_at IS NULL"), {"p": patient_id, "pr": programme_id})
        if (t.academic_year if t.academic_year is not None else academic_year(london_date(t.created_at))) == year]
    latest_triage = max(triages, key=lambda t: (t.created_at, t.id), default=None)
    triage = latest_triage.status if latest_triage else None
    records = conn.execute(sa.text(
        "SELECT id, session_id, outcome, performed_at, dose_sequence FROM vaccination_records "
        "WHERE patient_id = :p AND programme_id = :pr AND discarded_at IS NULL"),
        {"p": patient_id, "pr": programme_id}).all()
    # R(Y): flu counts in its own year only, the others up to Y.
    counted = [r for r in records if (academic_year(london_date(r.performed_at)) == year if programme_type == "flu"
                                      else academic_year(london_date(r.performed_at)) <= year)]
    vaccinated = _vaccinated(counted, programme_type,
                             lambda r: _age(patient.date_of_birth, london_date(r.performed_at)))
    history = programme_type in ("menacwy", "td_ipv") and any(r.outcome == 0 for r in counted) and not vaccinated
    if vaccinated:
        triage_status = 0
    elif triage == 3 and (latest_triage.delay_vaccination_until is None
                          or latest_triage.delay_vaccination_until > today):
        triage_status = 4
    elif triage is not None:
        triage_status = {0: 2, 1: 3, 2: 1, 3: 1, 4: 5}[triage]  # 3 here: an expired delay
    elif consent == 1 and (any(_needs_triage(c) for c in latest) or history):
        triage_status = 1
    else:
        triage_status = 0
    vaccination = 1 if vaccinated else (2 if any(c.response == 1 for c in latest) or triage == 1 else 0)
    return {"patient_consent_statuses": 4 if vaccinated else consent, "patient_triage_statuses": triage_status,
            "patient_vaccination_statuses": vaccination}


def python_refresh(conn, patient_ids: list[int], programmes: dict[str, int], today: date) -> int:
    """Per patient and programme: compute in Python, then one UPDATE per row (as a per-row ORM save)."""
    rows = 0
    year = academic_year(today)
    for patient_id in patient_ids:
        bay = conn.execute(sa.text("SELECT birth_academic_year FROM patients WHERE id = :p"),
                           {"p": patient_id}).scalar_one()
        for type_, pid in programmes.items():
            lo, hi = PROGRAMME_YEAR_GROUPS[type_]
            if not lo <= year - bay - 5 <= hi:
                continue
            for table, status in python_statuses(conn, patient_id, pid, type_, today).items():
                conn.execute(sa.text(f"UPDATE {table} SET status = :s WHERE patient_id = :p AND programme_id = :pr"),
                             {"s": status, "p": patient_id, "pr": pid})
                rows += 1
        conn.commit()
    return rows


def _patient_population(engine, today: date, report: BenchReport) -> dict[str, int]:
    """Set-up figures: the patients, those in the flu programme, the refresh's workers; the programmes' ids."""
    with engine.connect() as conn:
        programmes = programme_ids_by_type(conn)
        patients = conn.execute(sa.text("SELECT count(*) FROM patients")).scalar_one()
        year = academic_year(today)
        flu_patients = conn.execute(sa.text(
            "SELECT count(*) FROM patients WHERE :y - birth_academic_year - 5 BETWEEN 0 AND 11"), {"y": year}).scalar_one()
    report.add("patients", patients, "patients")
    report.add("patients in the flu programme", flu_patients, "patients")

    workers = get_settings().status_refresh_workers
    report.add("batches refreshed at once (PSO_STATUS_REFRESH_WORKERS)", workers, "workers")
    return programmes


def _measure_flu_one_batch_at_a_time(engine, today: date, flu: dict[str, int], report: BenchReport) -> None:
    """The flu refreshes one batch at a time, empty cache then no change (the cache is emptied again afterwards)."""
    with timed() as t:
        _refresh_all(engine, StatusScope(all=True), today, flu, workers=1)
    report.add("one batch at a time: full refresh, flu partition (empty cache)", t(), "s")
    with timed() as t:
        _refresh_all(engine, StatusScope(all=True), today, flu, workers=1)
    report.add("one batch at a time: no-change refresh, flu partition", t(), "s")


def _measure_empty_cache(engine, today: date, programmes: dict[str, int], report: BenchReport) -> int:
    """The full refresh of every programme from an emptied cache (flu first, then the others), parallel
    batches; returns the rows the flu refresh wrote."""
    # EMPTY_CACHE_RUNS times from an emptied cache: the medians are the figures (one run on a shared 2-core
    # machine varies by ±15%); the fastest and slowest are reported too.
    flu_runs, rest_runs, full_runs = [], [], []
    flu = {"flu": programmes["flu"]}
    rest = {k: v for k, v in programmes.items() if k != "flu"}
    for _ in range(EMPTY_CACHE_RUNS):
        _empty(engine, STATUS_TABLES)
        with timed() as t:
            flu_written, _ = _refresh_all(engine, StatusScope(all=True), today, flu)
        flu_runs.append(t())
        with timed() as t:
            rest_written, _ = _refresh_all(engine, StatusScope(all=True), today, rest)
        rest_runs.append(t())
        full_runs.append(flu_runs[-1] + rest_runs[-1])
    report.add("full refresh, flu partition (empty cache)", statistics.median(flu_runs), "s",
               f"median of {len(flu_runs)} runs, {flu_written:,} rows written")
    report.add(f"  fastest of the {len(flu_runs)} runs", min(flu_runs), "s")
    report.add(f"  slowest of the {len(flu_runs)} runs", max(flu_runs), "s")
    report.ratio("flu empty cache: parallel batches vs one at a time",
                 "one batch at a time: full refresh, flu partition (empty cache)",
                 "full refresh, flu partition (empty cache)", "")
    with engine.connect() as conn:
        total = _total_rows(conn)
    report.add("status rows (all programmes)", total, "rows")
    report.add("full refresh, other programmes (empty cache)", statistics.median(rest_runs), "s",
               f"median of {len(rest_runs)} runs, {rest_written:,} rows written")
    full_seconds = statistics.median(full_runs)
    report.add("full refresh, every programme (empty cache)", full_seconds, "s",
               f"median of {len(full_runs)} runs (flu, then the others)")
    report.add(f"  fastest of the {len(full_runs)} runs", min(full_runs), "s")
    report.add(f"  slowest of the {len(full_runs)} runs", max(full_runs), "s")
    report.add("full refresh rate", total / full_seconds, "rows/s")
    return flu_written


def _measure_no_change_refreshes(engine, today: date, programmes: dict[str, int], report: BenchReport) -> None:
    """A no-change refresh of every programme (must write 0 rows), then of the flu partition."""
    with timed() as t:
        written, recomputed = _refresh_all(engine, StatusScope(all=True), today)
    report.add("no-change full refresh", t(), "s")
    report.add("no-change full refresh: rows written", written, "rows")
    report.add("no-change full refresh rate (recomputed)", recomputed / t(), "rows/s")
    with timed() as t:
        _refresh_all(engine, StatusScope(all=True), today, {"flu": programmes["flu"]})
    report.add("no-change refresh, flu partition", t(), "s")
    report.ratio("flu no change: parallel batches vs one at a time", "one batch at a time: no-change refresh, flu partition",
                 "no-change refresh, flu partition", "")


def _measure_nightly_flu_refresh(engine, today: date, programmes: dict[str, int], report: BenchReport) -> None:
    """A nightly refresh after a day's work: 1% of the flu patients got a new consent."""
    with engine.begin() as conn:
        touched = conn.execute(sa.text("""
            INSERT INTO consents (patient_id, programme_id, response, route, submitted_at, created_at)
            SELECT id, :flu, 0, 0, now(), now() FROM patients
            WHERE :y - birth_academic_year - 5 BETWEEN 0 AND 11 AND id % 100 = 7"""),
            {"flu": programmes["flu"], "y": academic_year(today)}).rowcount
    with timed() as t:
        nightly_written, _ = _refresh_all(engine, StatusScope(all=True), today, {"flu": programmes["flu"]})
    report.add("nightly refresh, flu partition, 1% of patients changed", t(), "s",
               f"{touched:,} new consents, {nightly_written:,} rows written")


def _measure_patient_refreshes(engine, today: date, report: BenchReport) -> list[int]:
    """Refresh of 1 patient and of 1,000 patients (every programme); returns every patient id, in order."""
    with engine.connect() as conn:
        sample = conn.execute(sa.text("SELECT id FROM patients ORDER BY id")).scalars().all()
    one = [sample[len(sample) // 2]]
    thousand = sample[::max(1, len(sample) // 1000)][:1000]
    with timed() as t:
        _refresh_all(engine, StatusScope(patient_ids=tuple(one)), today)
    report.add("refresh of 1 patient (every programme)", t() * 1000, "ms")
    with timed() as t:
        _refresh_all(engine, StatusScope(patient_ids=tuple(thousand)), today)
    report.add("refresh of 1,000 patients (every programme)", t(), "s")
    return sample


def _patient_level_statuses(conn, patient_ids: list[int]) -> dict[tuple[str, int, int], int]:
    """The statuses of the three patient-level tables for `patient_ids`."""
    return {(t_, r.patient_id, r.programme_id): r.status for t_ in STATUS_TABLES[:3]
            for r in conn.execute(sa.text(f"SELECT patient_id, programme_id, status FROM {t_} "
                                          "WHERE patient_id = ANY(:ids)"), {"ids": patient_ids})}


def _measure_python_baseline(engine, today: date, programmes: dict[str, int], sample: list[int],
                             report: BenchReport) -> None:
    """Baseline (a), on a sample; its answers must equal the SQL's."""
    py_sample = sample[::max(1, len(sample) // 300)][:300]
    with engine.connect() as conn:
        before = _patient_level_statuses(conn, py_sample)
        conn.commit()
        with timed() as t:
            py_rows = python_refresh(conn, py_sample, programmes, today)
        py_seconds = t()
        after = _patient_level_statuses(conn, py_sample)
    disagreements = sum(1 for k in before if before[k] != after.get(k))
    report.add("baseline (a) per-patient Python refresh, sample rows", py_rows, "rows")
    report.add("baseline (a) per-patient Python refresh rate", py_rows / py_seconds, "rows/s")
    report.add("baseline (a) rows where Python and SQL disagree", disagreements, "rows")


def _compare_sql_with_python(flu_written: int, report: BenchReport) -> None:
    """Per-row comparison on the same three patient-level tables: a no-change SQL refresh recomputes them too."""
    report.ratio("SQL (no-change full) vs Python per row", "no-change full refresh rate (recomputed)",
                 "baseline (a) per-patient Python refresh rate", "≥ 50×")
    report.ratio("SQL (empty-cache full) vs Python per row", "full refresh rate",
                 "baseline (a) per-patient Python refresh rate", "≥ 50×")
    report.add("one batch at a time: flu empty-cache rate",
               flu_written / report.value("one batch at a time: full refresh, flu partition (empty cache)"), "rows/s")
    report.ratio("SQL (empty-cache flu, one batch at a time) vs Python per row",
                 "one batch at a time: flu empty-cache rate", "baseline (a) per-patient Python refresh rate", "")


# Baseline (b), the floor: a bare INSERT … SELECT of the same rows into tables of the same shape as
# the status tables — unique keys, indexes and the status tables' own foreign keys (read from the
# catalog; checked per inserted row, as they are for the refresh), one statement per table on one
# connection. (b0) is the same without the foreign keys, to show their share; (b-flu) is (b) for just
# the rows the flu refresh wrote from an empty cache, the floor of that figure, and (b-flu ×2) the same
# rows split over two connections at once, as the refresh's two workers split them.
FLOOR_KEYS = {"patient_session_registration_statuses": "patient_session_id",
              "patient_session_session_statuses": "patient_session_id, programme_id"}
FLOOR_FLU_ROWS = {"patient_session_registration_statuses":
                  # a flu partition's registration rows: patient_sessions with flu among their programmes
                  "WHERE patient_session_id IN (SELECT patient_session_id FROM patient_session_session_statuses "
                  "WHERE programme_id = :flu)"}
# prefix: (with foreign keys, flu rows only, connections at once)
FLOORS = {"floor_fk": (True, False, 1), "floor_nofk": (False, False, 1), "floor_flu": (True, True, 1),
          "floor_flu2": (True, True, 2)}


def _empty(engine, tables) -> None:
    """Empty `tables`, then CHECKPOINT (superuser in the scratch database), so every timed run starts alike."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)}"))
        conn.execute(sa.text("CHECKPOINT"))


def _without_autovacuum(engine, tables) -> None:
    """No autovacuum on `tables` for the run: each timed refresh or floor writes hundreds of thousands of
    rows, and autovacuum's pass over one run's rows would land in the next run's time (±10% at random);
    the refreshes and the floors are measured alike, each from emptied tables."""
    with engine.begin() as conn:
        for table in tables:
            conn.execute(sa.text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))


def _create_floor_tables(engine) -> None:
    """Copies of the status tables for every floor, with the status tables' foreign keys where it has them."""
    with engine.begin() as conn:
        for prefix, (with_fks, _, _) in FLOORS.items():
            for table in STATUS_TABLES:
                conn.execute(sa.text(f"CREATE TABLE {prefix}_{table} (LIKE {table} INCLUDING ALL)"))
                foreign_keys = conn.execute(sa.text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                    "AND contype = 'f' ORDER BY conname"), {"t": table}).scalars().all() if with_fks else []
                for definition in foreign_keys:
                    conn.execute(sa.text(f"ALTER TABLE {prefix}_{table} ADD {definition}"))
    _without_autovacuum(engine, [f"{prefix}_{table}" for prefix in FLOORS for table in STATUS_TABLES])


def _insert_floor(engine, flu_id: int, prefix: str, flu_only: bool, connections: int, part: int) -> int:
    """One connection's bare INSERT … SELECTs into the `prefix` copies: the rows whose first key column
    is `part` modulo `connections`."""
    rows = 0
    with engine.begin() as conn:
        for table in STATUS_TABLES:
            cols = FLOOR_KEYS.get(table, "patient_id, programme_id")
            where = FLOOR_FLU_ROWS.get(table, "WHERE programme_id = :flu") if flu_only else "WHERE true"
            rows += conn.execute(sa.text(
                f"INSERT INTO {prefix}_{table} ({cols}, status) SELECT {cols}, status FROM {table} {where} "
                f"AND {cols.split(',')[0]} % :connections = :part"),
                {"flu": flu_id, "connections": connections, "part": part}).rowcount
    return rows


def _time_floors(engine, flu_id: int) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds (the median of EMPTY_CACHE_RUNS rounds, each from emptied copies after a CHECKPOINT, as the
    refreshes are timed) and rows of every floor's inserts, its connections at once."""
    runs: dict[str, list[float]] = {prefix: [] for prefix in FLOORS}
    inserted = {}
    for _ in range(EMPTY_CACHE_RUNS):
        for prefix, (_, flu_only, connections) in FLOORS.items():
            _empty(engine, [f"{prefix}_{table}" for table in STATUS_TABLES])
            with timed() as t, ThreadPoolExecutor(connections) as pool:
                inserted[prefix] = sum(pool.map(
                    lambda part: _insert_floor(engine, flu_id, prefix, flu_only, connections, part),
                    range(connections)))
            runs[prefix].append(t())
    return {prefix: statistics.median(seconds) for prefix, seconds in runs.items()}, inserted


def _measure_floors(engine, programmes: dict[str, int], flu_written: int, report: BenchReport) -> None:
    """Baselines (b), (b0), (b-flu) and (b-flu ×2)."""
    _create_floor_tables(engine)
    seconds, inserted = _time_floors(engine, programmes["flu"])
    assert inserted["floor_flu"] == inserted["floor_flu2"] == flu_written, "the flu floors must be the refresh's rows"
    report.add("baseline (b) floor: bare INSERT … SELECT, same rows, same keys and foreign keys",
               seconds["floor_fk"], "s", f"{inserted['floor_fk']:,} rows")
    report.add("baseline (b0) the same without the foreign keys", seconds["floor_nofk"], "s",
               f"{inserted['floor_nofk']:,} rows")
    report.add("baseline (b-flu) floor of the flu empty-cache refresh: (b) for its rows only", seconds["floor_flu"],
               "s", f"{inserted['floor_flu']:,} rows, as the refresh wrote")
    report.add("baseline (b-flu ×2) the same, split over two connections at once", seconds["floor_flu2"], "s",
               f"{inserted['floor_flu2']:,} rows")


def _compare_with_floors(report: BenchReport) -> None:
    """The refreshes against their floors."""
    report.ratio("full refresh (empty cache) vs floor (b)", "full refresh, every programme (empty cache)",
                 "baseline (b) floor: bare INSERT … SELECT, same rows, same keys and foreign keys", "≤ 1.2×")
    report.ratio("full refresh (empty cache) vs (b0), no foreign keys", "full refresh, every programme (empty cache)",
                 "baseline (b0) the same without the foreign keys", "")
    report.ratio("flu empty cache vs its floor (b-flu)", "full refresh, flu partition (empty cache)",
                 "baseline (b-flu) floor of the flu empty-cache refresh: (b) for its rows only",
                 "< 2 s asks for 2 s / (b-flu)")
    report.ratio("flu empty cache vs (b-flu ×2)", "full refresh, flu partition (empty cache)",
                 "baseline (b-flu ×2) the same, split over two connections at once", "")


def run(db: BenchDatabase, scale: float) -> BenchReport:
    report = BenchReport("statuses_refresh", scale)
    now = now_utc()
    today = london_today(now)
    seed_all(db.url, scale=scale, now=now, families=["orchestration.synthetic.statuses"], echo=lambda *_: None)
    engine = db.engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # A live database's tables are vacuumed: without this, autovacuum's first pass over the freshly
        # loaded tables competes with the first measurements for the machine's two cores.
        conn.execute(sa.text("VACUUM (ANALYZE)"))
    _without_autovacuum(engine, STATUS_TABLES)
    programmes = _patient_population(engine, today, report)
    flu = {"flu": programmes["flu"]}
    _measure_flu_one_batch_at_a_time(engine, today, flu, report)
    flu_written = _measure_empty_cache(engine, today, programmes, report)
    with engine.begin() as conn:  # what autovacuum would have done by now, untimed
        conn.execute(sa.text(f"ANALYZE {', '.join(STATUS_TABLES)}"))
    _measure_no_change_refreshes(engine, today, programmes, report)
    _measure_nightly_flu_refresh(engine, today, programmes, report)
    sample = _measure_patient_refreshes(engine, today, report)
    _measure_python_baseline(engine, today, programmes, sample, report)
    _compare_sql_with_python(flu_written, report)
    _measure_floors(engine, programmes, flu_written, report)
    _compare_with_floors(report)
    engine.dispose()
    return report
