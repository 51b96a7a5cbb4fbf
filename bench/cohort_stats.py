"""Cohort stats (issue 4, deliverable 9): the 10,000-patient unit, all units, cached reads, and the
upstream-shaped baseline (pull the unit's rows into pandas and compute there), in the same run.

At scale 20 the synthetic RAJ01 has 10,000 patients (RFSBA 6,000). Targets: 10,000-patient unit
under 300 ms (upstream 5–10 s), ≥ 10× the pandas baseline, cached read p99 under 5 ms.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

import pandas as pd
import sqlalchemy as sa

from assets import cohort_stats as cs
from bench.runner import BenchDatabase, BenchReport, timed
from orchestration.clock import london_today, now_utc
from orchestration.synthetic import seed_all

BIG_UNIT = "RAJ01"
REPEATS = 5
CACHED_READS = 2000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def pandas_dialysis(conn: sa.Connection, unit: str, window: cs.Window) -> dict:
    """The upstream shape: SELECT the unit's rows (no aggregation in SQL) and compute in pandas."""
    start, end = pd.Timestamp(window.start_at), pd.Timestamp(window.end_exclusive)
    t = pd.read_sql(sa.text("""
        SELECT r.ukrdcid, t.id, t.fromtime, t.totime, trim(t.admitreasoncode) AS code, upper(trim(t.qbl05)) AS qbl05,
               p.deathtime
        FROM treatment t JOIN patientrecord r ON r.pid = t.pid AND r.sendingextract = 'UKRDC'
        LEFT JOIN patient p ON p.pid = t.pid
        WHERE t.healthcarefacilitycode = :unit"""), conn, params={"unit": unit})
    b = t[t["code"].isin(cs.HD_CODES + cs.PD_CODES) & t["fromtime"].notna() & (t["fromtime"] < end)
          & (t["totime"].isna() | (t["totime"] >= start)) & (t["deathtime"].isna() | (t["deathtime"] > start))].copy()
    b["starts"] = b["fromtime"] >= start
    b["alive"] = b["deathtime"].isna() | (b["deathtime"] >= end)
    b["ongoing"] = b["totime"].isna() | (b["totime"] >= end)
    patients = b.groupby("ukrdcid").agg(starts=("starts", "any"), alive=("alive", "all"), ongoing=("ongoing", "any"))
    # An open treatment (no totime) sorts after every closed one: NaT last.
    ordered = b.sort_values(["ukrdcid", "fromtime", "totime", "id"], na_position="last")
    latest = ordered.groupby("ukrdcid").tail(1).set_index("ukrdcid")
    ids = list(patients.index)
    history = pd.read_sql(sa.text("""
        SELECT r.ukrdcid, trim(t.admitreasoncode) AS code, t.fromtime
        FROM patientrecord r JOIN treatment t ON t.pid = r.pid
        WHERE r.ukrdcid = ANY(CAST(:ids AS text[]))"""), conn, params={"ids": ids})  # any record, PV too
    prior = set(history[history["code"].isin(cs.KRT_CODES) & (history["fromtime"] < start)]["ukrdcid"])

    def modality(row):
        if row["code"] in cs.PD_CODES:
            return "PD"
        if row["qbl05"] == "HOME":
            return "HD Home"
        if row["qbl05"] in ("HOSP", "SATL"):
            return "HD In-centre"
        return "HD Unknown/Incomplete"

    patients["modality"] = latest.apply(modality, axis=1)
    patients["prevalent"] = patients["alive"] & patients["ongoing"]
    patients["incident"] = patients["starts"] & ~patients.index.isin(prior)
    incentre = list(patients[patients["prevalent"] & (patients["modality"] == "HD In-centre")].index)
    sessions = pd.read_sql(sa.text("""
        SELECT r.ukrdcid, s.proceduretypecode, s.proceduretime
        FROM patientrecord r JOIN dialysissession s ON s.pid = r.pid
        WHERE r.sendingextract = 'UKRDC' AND r.ukrdcid = ANY(CAST(:ids AS text[]))"""), conn, params={"ids": incentre})
    s = sessions[(sessions["proceduretypecode"] == cs.INCENTRE_SESSION_CODE) & (sessions["proceduretime"] >= start)
                 & (sessions["proceduretime"] < end)]
    g = s.groupby("ukrdcid")["proceduretime"].agg(["count", "min", "max"])
    g = g[(g["count"] >= 2) & ((g["max"] - g["min"]) >= pd.Timedelta(days=1))]
    per_week = 7 * g["count"] / (g["max"] - g["min"]).dt.days  # whole days
    edges = [*cs.FREQUENCY_BIN_EDGES[:-1], float("inf")]  # ≥ 7 in the last bin
    bins = pd.Series(pd.cut(per_week, edges, right=True, labels=False)).astype(int).value_counts()

    def split(mask):
        counts = patients[mask]["modality"].value_counts()
        return {m: int(counts.get(m, 0)) for m in cs.MODALITIES}

    return {"population": len(patients), "all": split(patients.index == patients.index),
            "incident": split(patients["incident"]), "prevalent": split(patients["prevalent"]),
            "counts": [int(bins.get(i, 0)) for i in range(14)]}


def run(db: BenchDatabase, scale: float) -> BenchReport:
    report = BenchReport("cohort_stats", scale)
    now = now_utc()
    with timed() as t:
        stats = seed_all(db.url, scale=scale, families=["orchestration.synthetic.cohort_stats"], now=now,
                         echo=lambda *_: None)
    report.add("synthetic rows loaded", stats.total, "rows")
    report.add("synthetic load", t(), "s")
    engine = db.engine()
    # Steady state after a bulk load: visibility map set (index-only scans), statistics current.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE patientrecord, patient, treatment, dialysissession, facility"))
    w1 = cs.window_named(london_today(now), "w1")
    with engine.connect() as conn:
        patients = conn.execute(sa.text("SELECT count(DISTINCT ukrdcid) FROM patientrecord WHERE sendingfacility = :u "
                                        "AND sendingextract = 'UKRDC'"), {"u": BIG_UNIT}).scalar()
        sessions = conn.execute(sa.text("SELECT count(*) FROM dialysissession")).scalar()
        report.add(f"{BIG_UNIT} patients", patients, "patients")
        report.add("dialysis sessions (all units)", sessions, "rows")

        sql_times, demo_times, base_times = [], [], []
        for _ in range(REPEATS):
            with timed() as t:
                values = cs.dialysis_stats(conn, BIG_UNIT, w1)
            sql_times.append(t())
            with timed() as t:
                cs.demographics_stats(conn, BIG_UNIT, w1)
            demo_times.append(t())
            with timed() as t:
                baseline = pandas_dialysis(conn, BIG_UNIT, w1)
            base_times.append(t())
        conn.rollback()
        p = values["payload"]
        same = (baseline["population"] == p["population"] and baseline["all"] == p["all"]
                and baseline["incident"] == p["incident"] and baseline["prevalent"] == p["prevalent"]
                and baseline["counts"] == p["incentre_dialysis_frequency"]["counts"])
        report.add(f"dialysis stats, {BIG_UNIT} W1 (SQL + pandas shaping), median", statistics.median(sql_times) * 1000,
                   "ms", "target < 300 ms")
        report.add(f"demographics stats, {BIG_UNIT} W1, median", statistics.median(demo_times) * 1000, "ms")
        report.add(f"baseline: rows into pandas, {BIG_UNIT} W1, median", statistics.median(base_times) * 1000, "ms")
        report.add("baseline result equals the SQL result", 1.0 if same else 0.0, "bool")

        # All units, every kind and window, as one forced refresh (the schedule's work if all were eligible).
        units = [c.facility_code for c in cs.ukrdc_record_counts(conn)]
        conn.rollback()
        settings = cs.StatsSettings(0, cs.KINDS, timedelta(hours=1), timedelta(hours=8))
        with timed() as t:
            done, failed = cs.refresh_units(conn, units, "dialysis", now, force=True, settings=settings)
            done2, failed2 = cs.refresh_units(conn, units, "demographics", now, force=True, settings=settings)
        entries = sum(len(d.outcomes) for d in done + done2)
        report.add(f"all {len(units)} units × 2 kinds × windows refreshed", t(), "s",
                   f"{entries} entries, {len(failed) + len(failed2)} failed")

        # Cached reads: the read-through function (settings + eligibility + cache row) and the bare lookup.
        cs.get_facility_stats(conn, BIG_UNIT, "dialysis", "w1", now=now)
        reads, lookups = [], []
        key = cs.cache_key(BIG_UNIT, "dialysis", w1)
        for _ in range(CACHED_READS):
            started = time.perf_counter()
            read = cs.get_facility_stats(conn, BIG_UNIT, "dialysis", "w1", now=now)
            reads.append(time.perf_counter() - started)
            assert read.source == "fresh"
            started = time.perf_counter()
            cs.STATS_CACHE.lookup(conn, key)
            lookups.append(time.perf_counter() - started)
            conn.rollback()
        report.add("cached read via get_facility_stats p50", _percentile(reads, 0.5) * 1000, "ms")
        report.add("cached read via get_facility_stats p99", _percentile(reads, 0.99) * 1000, "ms", "target < 5 ms")
        report.add("cache row lookup p50", _percentile(lookups, 0.5) * 1000, "ms")
        report.add("cache row lookup p99", _percentile(lookups, 0.99) * 1000, "ms")
    engine.dispose()
    report.ratio(f"pandas baseline vs SQL, {BIG_UNIT} dialysis W1",
                 f"baseline: rows into pandas, {BIG_UNIT} W1, median",
                 f"dialysis stats, {BIG_UNIT} W1 (SQL + pandas shaping), median", "≥ 10×")
    return report
