"""Cohort stats (domain.md §2): calculators on hand-computed cohorts, the TTL cache, the Dagster wiring."""

from __future__ import annotations

import threading
import time
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from assets import cohort_stats as cs
from orchestration import schema
from orchestration.clock import london_today

UTC = timezone.utc
NOW = datetime(2024, 7, 10, 12, 0, tzinfo=UTC)  # London 13:00 BST, 10 July 2024


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def add_patient(conn, pid, unit, *, ukrdcid=None, extract="UKRDC", birth=None, death=None, gender="1",
                ethnic="A", treatments=(), sessions=()):
    conn.execute(schema.patientrecord.insert().values(pid=pid, ukrdcid=ukrdcid or f"U-{pid}", sendingfacility=unit,
                                                      sendingextract=extract))
    conn.execute(schema.patient.insert().values(pid=pid, birthtime=birth and ts(birth), deathtime=death and ts(death),
                                                gender=gender, ethnicgroupcode=ethnic))
    for i, (facility, start, end, code, qbl05) in enumerate(treatments):
        conn.execute(schema.treatment.insert().values(
            id=f"{pid}-t{i}", pid=pid, healthcarefacilitycode=facility, fromtime=start and ts(start),
            totime=end and ts(end), admitreasoncode=code, qbl05=qbl05))
    for i, (ptype, at) in enumerate(sessions):
        conn.execute(schema.dialysissession.insert().values(id=f"{pid}-s{i}", pid=pid, proceduretypecode=ptype,
                                                            proceduretime=ts(at)))


S = cs.INCENTRE_SESSION_CODE


def load_dialysis_cohort(conn) -> None:
    """Unit U1 on 10 July 2024: W1 = [2024-04-11, 2024-07-10] (naive London times)."""
    conn.execute(schema.facility.insert(), [{"code": "U1"}, {"code": "U2"}])
    add_patient(conn, "P1", "U1", treatments=[("U1", "2024-05-01T09:00", None, "1", "HOSP")],
                sessions=[(S, "2024-06-01T08:00"), (S, "2024-06-03T08:00"), (S, "2024-06-08T08:00"),
                          ("714749008", "2024-06-05T08:00"), (S, "2024-04-01T08:00")])  # other code / outside: ignored
    add_patient(conn, "P2", "U1", treatments=[("U1", "2023-01-01T09:00", None, "11", None)])
    # Starts exactly at the window start, but had KRT at U2 before: prevalent, not incident.
    add_patient(conn, "P3", "U1", treatments=[("U2", "2023-01-01T09:00", "2023-06-01T09:00", "29", None),
                                              ("U1", "2024-04-11T00:00", None, "2", "HOME")])
    # Ends one microsecond before the window (London): not in the cohort.
    add_patient(conn, "P4", "U1", treatments=[("U1", "2024-01-01T09:00", "2024-04-10T23:59:59.999999", "3", None)])
    # Ends exactly at the window start: in the cohort, not prevalent.
    add_patient(conn, "P5", "U1", treatments=[("U1", "2024-01-01T09:00", "2024-04-11T00:00", "5", "SATL")])
    # Starts at the last instant of the window: incident and prevalent; one session only (no frequency).
    add_patient(conn, "P6", "U1", treatments=[("U1", "2024-07-10T23:59:59.999999", None, "1", "HOSP")],
                sessions=[(S, "2024-07-10T23:59:59.999999")])
    # Starts the day after: outside.
    add_patient(conn, "P7", "U1", treatments=[("U1", "2024-07-11T00:00", None, "12", None)])
    add_patient(conn, "P8", "U1", death="2024-05-01T10:00", treatments=[("U1", "2024-02-01T09:00", None, "1", "HOSP")])
    add_patient(conn, "P9", "U1", death="2024-04-10T10:00", treatments=[("U1", "2024-02-01T09:00", None, "1", "HOSP")])
    add_patient(conn, "P10", "U1", treatments=[("U1", "2024-05-01T09:00", None, "900", None)])  # not KRT
    # Overlapping HD then PD: modality from the latest fromtime (PD); HD before the start: not incident.
    add_patient(conn, "P11", "U1", treatments=[("U1", "2024-03-01T09:00", "2024-05-10T09:00", "1", "HOSP"),
                                               ("U1", "2024-05-05T09:00", None, "11", None)])
    add_patient(conn, "P12", "U1", treatments=[("U1", None, None, "1", "HOSP")])  # no start: skipped
    # Two sessions one day apart: 14/week → last bin.
    add_patient(conn, "P13", "U1", treatments=[("U1", "2024-06-01T09:00", None, "2", "hosp ")],
                sessions=[(S, "2024-06-01T08:00"), (S, "2024-06-02T08:00")])
    # HD with no qbl05: Unknown/Incomplete; a PV-extract record of the same unit is not counted.
    add_patient(conn, "P14", "U1", treatments=[("U1", "2024-01-01T09:00", None, "3", None)])
    add_patient(conn, "P14pv", "U1", ukrdcid="U-P14", extract="PV",
                treatments=[("U1", "2024-01-01T09:00", None, "3", "HOME")])


def test_dialysis_calculator_hand_computed(engine):
    with engine.begin() as conn:
        load_dialysis_cohort(conn)
    w1 = cs.window_named(date(2024, 7, 10), "w1")
    assert (w1.start, w1.end) == (date(2024, 4, 11), date(2024, 7, 10))
    with engine.connect() as conn:
        values = cs.dialysis_stats(conn, "U1", w1)
    p = values["payload"]
    assert values["outcome"] == schema.StatsOutcome.OK and values["population"] == 9 == p["population"]
    assert p["all"] == {"HD Home": 1, "HD In-centre": 5, "HD Unknown/Incomplete": 1, "PD": 2}
    assert p["prevalent"] == {"HD Home": 1, "HD In-centre": 3, "HD Unknown/Incomplete": 1, "PD": 2}
    assert p["incident"] == {"HD Home": 0, "HD In-centre": 3, "HD Unknown/Incomplete": 0, "PD": 0}
    counts = p["incentre_dialysis_frequency"]["counts"]
    # P1: 3 sessions over 7 days = 3.0 a week, on an edge: the 2.5–3.0 bin (index 5). P13: 14 a week, last bin.
    assert len(counts) == 14 and counts[5] == 1 and counts[13] == 1 and sum(counts) == 2
    assert p["incentre_dialysis_frequency"]["bin_edges"][0] == 0 and p["incentre_dialysis_frequency"]["bin_edges"][-1] == 7
    assert p["from_time"] == "2024-04-11T00:00:00" and p["to_time"] == "2024-07-10T23:59:59.999999"


def test_window_boundaries_follow_london_time(engine):
    with engine.begin() as conn:
        load_dialysis_cohort(conn)
    # 23:30 UTC on 10 July is 00:30 on 11 July in London: W1 moves to [12 Apr, 11 Jul].
    today = london_today(datetime(2024, 7, 10, 23, 30, tzinfo=UTC))
    assert today == date(2024, 7, 11)
    w1 = cs.window_named(today, "w1")
    with engine.connect() as conn:
        p = cs.dialysis_stats(conn, "U1", w1)["payload"]
    # P7 (starts 11 Jul 00:00) joins; P5 (ended 11 Apr 00:00) leaves; P3 starts before the window now.
    assert p["population"] == 9
    assert p["all"]["PD"] == 3 and p["all"]["HD In-centre"] == 4
    assert p["incident"]["PD"] == 1


def test_windows_w2_and_quarter_start():
    assert [(w.name, w.start, w.end) for w in cs.stats_windows(date(2024, 7, 10))] == [
        ("w1", date(2024, 4, 11), date(2024, 7, 10)), ("w2", date(2024, 4, 2), date(2024, 7, 1))]
    # q = today: computed once
    assert [(w.name, w.start, w.end) for w in cs.stats_windows(date(2024, 7, 1))] == [
        ("w1", date(2024, 4, 2), date(2024, 7, 1))]
    assert cs.quarter_start(date(2024, 12, 31)) == date(2024, 10, 1)


def test_empty_cohort(engine):
    with engine.begin() as conn:
        conn.execute(schema.facility.insert().values(code="E1"))
    with engine.connect() as conn:
        values = cs.dialysis_stats(conn, "E1", cs.window_named(date(2024, 7, 10), "w1"))
        demo = cs.demographics_stats(conn, "E1", cs.window_named(date(2024, 7, 10), "w1"))
    assert values == {"outcome": schema.StatsOutcome.EMPTY_COHORT, "payload": None, "population": 0,
                      "calculator_version": cs.CALCULATOR_VERSIONS["dialysis"]}
    assert demo["outcome"] == schema.StatsOutcome.EMPTY_COHORT


def load_demographics_cohort(conn) -> None:
    conn.execute(schema.facility.insert().values(code="D1"))
    add_patient(conn, "A", "D1", birth="2000-02-29T00:00", gender="1", ethnic="A")
    add_patient(conn, "B", "D1", birth="2000-03-01T00:00", gender="2", ethnic="h1")
    add_patient(conn, "C", "D1", birth=None, gender="X", ethnic=None)
    add_patient(conn, "D", "D1", birth="1990-02-28T00:00", gender="9", ethnic="Z")
    add_patient(conn, "E", "D1", birth="1980-01-01T00:00", death="2023-01-01T00:00")
    add_patient(conn, "G", "D1", birth="1980-01-01T00:00", extract="PV")
    add_patient(conn, "H", "D1", birth="1985-06-01T00:00", gender=None, ethnic="Q")  # unknown codes


@pytest.mark.parametrize("on, ages", [
    (date(2023, 2, 28), {"22": 1, "23": 1, "33": 1, "37": 1}),  # non-leap: 29 Feb birthday counts on 28 Feb
    (date(2023, 2, 27), {"22": 2, "32": 1, "37": 1}),
    (date(2024, 2, 28), {"23": 2, "34": 1, "38": 1}),  # leap year: not yet 29 Feb
    (date(2024, 2, 29), {"23": 1, "24": 1, "34": 1, "38": 1}),
])
def test_demographics_hand_computed(engine, on, ages):
    with engine.begin() as conn:
        load_demographics_cohort(conn)
    window = cs.Window("w1", on - timedelta(days=90), on)
    with engine.connect() as conn:
        values = cs.demographics_stats(conn, "D1", window)
    p = values["payload"]
    assert values["population"] == 5
    assert p["gender"] == {"Male": 1, "Female": 1, "Indeterminate": 1, "Unknown": 2}
    assert p["ethnic_group"] == {"White": 1, "Mixed": 0, "Asian": 1, "Black": 0, "Other": 0, "Not Stated": 1,
                                 "Unknown": 2}
    assert p["age"] == {**ages, "Unknown": 1}


# ---------------------------------------------------------------------------------------------
# The TTL cache: read-through, stale serving, guards, concurrency, expiry
# ---------------------------------------------------------------------------------------------


def small_unit(conn, unit="S1", patients=3):
    conn.execute(schema.facility.insert().values(code=unit))
    for i in range(patients):
        add_patient(conn, f"{unit}-{i}", unit, treatments=[(unit, "2024-05-01T09:00", None, "1", "HOSP")])


def set_settings(engine, **values):
    with engine.begin() as conn:
        conn.execute(schema.stats_settings.update().where(schema.stats_settings.c.id == 1).values(**values))


def row(engine, unit, kind="dialysis"):
    with engine.connect() as conn:
        return conn.execute(sa.select(schema.facility_stats).where(
            schema.facility_stats.c.facility_code == unit, schema.facility_stats.c.stats_kind == kind)
            .order_by(schema.facility_stats.c.window_start)).mappings().all()


def test_read_through_computes_stores_then_serves_until_expiry(engine):
    with engine.begin() as conn:
        small_unit(conn)
    with engine.connect() as conn:
        first = cs.get_facility_stats(conn, "S1", "dialysis", "w1", now=NOW)
        again = cs.get_facility_stats(conn, "S1", "dialysis", "w1", now=NOW + timedelta(hours=7))
        later = cs.get_facility_stats(conn, "S1", "dialysis", "w1", now=NOW + timedelta(hours=9))
    assert first.source == "computed" and first.entry.values["population"] == 3
    assert again.source == "fresh" and again.entry.computed_at == first.entry.computed_at
    assert later.source == "computed" and later.entry.computed_at > first.entry.computed_at
    rows = row(engine, "S1")
    assert len(rows) == 1 and rows[0]["expires_at"] - rows[0]["computed_at"] == timedelta(hours=8)
    assert rows[0]["calculator_version"] == cs.CALCULATOR_VERSIONS["dialysis"] and rows[0]["duration_ms"] is not None


def test_read_through_for_an_aot_unit_serves_the_old_value_never_a_cold_read(engine, monkeypatch):
    with engine.begin() as conn:
        small_unit(conn, "BIG", patients=4)
    set_settings(engine, aot_min_records=3)  # BIG (4 records) is above the cutoff
    with engine.connect() as conn:
        first = cs.get_facility_stats(conn, "BIG", "dialysis", "w1", now=NOW)
    calls = []
    monkeypatch.setitem(cs.CALCULATORS, "dialysis", lambda *a: calls.append(a) or {})
    with engine.connect() as conn:
        stale = cs.get_facility_stats(conn, "BIG", "dialysis", "w1", now=NOW + timedelta(hours=9))
    assert stale.source == "stale" and stale.entry.computed_at == first.entry.computed_at and calls == []


def test_missing_facility_raises(engine):
    with engine.begin() as conn:
        add_patient(conn, "X1", "NOFAC", treatments=[("NOFAC", "2024-05-01T09:00", None, "1", "HOSP")])
    with engine.connect() as conn, pytest.raises(cs.MissingFacilityError):
        cs.get_facility_stats(conn, "NOFAC", now=NOW)


def test_older_value_never_overwrites_newer(engine):
    key = cs.cache_key("S1", "dialysis", cs.window_named(date(2024, 7, 10), "w1"))
    newer = {"outcome": 0, "payload": {"v": "new"}, "population": 2, "duration_ms": 1, "calculator_version": "x"}
    older = {**newer, "payload": {"v": "old"}}
    with engine.begin() as conn:
        assert cs.STATS_CACHE.store(conn, key, newer, NOW, timedelta(hours=8)) is True
        assert cs.STATS_CACHE.store(conn, key, older, NOW - timedelta(minutes=1), timedelta(hours=8)) is False
        assert cs.STATS_CACHE.lookup(conn, key).values["payload"] == {"v": "new"}
        assert cs.STATS_CACHE.store(conn, key, older, NOW + timedelta(minutes=1), timedelta(hours=8)) is True
        assert cs.STATS_CACHE.lookup(conn, key).values["payload"] == {"v": "old"}


def test_old_value_readable_until_replacement_commits(engine):
    key = cs.cache_key("S1", "dialysis", cs.window_named(date(2024, 7, 10), "w1"))
    v = {"outcome": 0, "payload": {"v": 1}, "population": 1, "duration_ms": 1, "calculator_version": "x"}
    with engine.begin() as conn:
        cs.STATS_CACHE.store(conn, key, v, NOW, timedelta(hours=8))
    writer = engine.connect()
    try:
        writer.begin()
        cs.STATS_CACHE.store(writer, key, {**v, "payload": {"v": 2}}, NOW + timedelta(hours=8), timedelta(hours=8))
        with engine.connect() as reader:  # the replacement has not committed: the old value is read
            assert cs.STATS_CACHE.lookup(reader, key).values["payload"] == {"v": 1}
        writer.commit()
        with engine.connect() as reader:
            assert cs.STATS_CACHE.lookup(reader, key).values["payload"] == {"v": 2}
    finally:
        writer.close()


def test_concurrent_misses_store_one_consistent_value(engine):
    key = cs.cache_key("S1", "dialysis", cs.window_named(date(2024, 7, 10), "w1"))
    computed = []
    barrier = threading.Barrier(2)

    def compute(conn):
        computed.append(threading.current_thread().name)
        time.sleep(0.3)  # long enough for the other reader to miss as well
        return {"outcome": 0, "payload": {"by": threading.current_thread().name}, "population": 1,
                "calculator_version": "x"}

    results = {}

    def reader(name):
        with engine.connect() as conn:
            barrier.wait()
            results[name] = cs.STATS_CACHE.read_through(conn, key, compute, ttl=timedelta(hours=8), now=NOW)

    threads = [threading.Thread(target=reader, args=(n,), name=n) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(computed) == 1
    assert results["a"].entry.values == results["b"].entry.values
    assert sorted(r.source for r in results.values()) == ["computed", "fresh"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM facility_stats")).scalar() == 1
        assert cs.STATS_CACHE.lookup(conn, key).values["payload"] == {"by": computed[0]}


def test_delete_expired_only_past_seven_days(engine):
    v = {"outcome": 0, "payload": None, "population": 0, "duration_ms": 1, "calculator_version": "x"}
    with engine.begin() as conn:
        for days, end in ((8, date(2024, 1, 1)), (6, date(2024, 1, 2))):
            key = cs.cache_key("S1", "dialysis", cs.Window("w1", end - timedelta(days=90), end))
            cs.STATS_CACHE.store(conn, key, v, NOW - timedelta(days=days, hours=8), timedelta(hours=8))
        assert cs.STATS_CACHE.delete_expired(conn, NOW) == 1
        assert [r.window_end for r in conn.execute(sa.select(schema.facility_stats.c.window_end))] == [date(2024, 1, 2)]


# ---------------------------------------------------------------------------------------------
# Ahead-of-time refresh: cutoff, kinds, TTL, skip window, failures, expiry check
# ---------------------------------------------------------------------------------------------


def test_refresh_respects_cutoff_kinds_ttl_and_skip_window(engine):
    with engine.begin() as conn:
        small_unit(conn, "BIG", patients=4)
        small_unit(conn, "SMALL", patients=2)
    set_settings(engine, aot_min_records=3)
    with engine.connect() as conn:
        done, failed = cs.refresh_units(conn, ["BIG", "SMALL"], "dialysis", NOW)
    assert failed == {}
    assert [o.status for o in done[0].outcomes] == ["stored", "stored"] and done[1].outcomes == []
    assert "≤ cutoff 3" in done[1].skipped_reason and row(engine, "SMALL") == []
    # Within skip_if_fresher_than (1 h): skipped; forced (sync-complete): recomputed.
    with engine.connect() as conn:
        done, _ = cs.refresh_units(conn, ["BIG"], "dialysis", NOW + timedelta(minutes=30))
        assert [o.status for o in done[0].outcomes] == ["skipped_fresh"] * 2
        done, _ = cs.refresh_units(conn, ["BIG"], "dialysis", NOW + timedelta(minutes=30), force=True)
        assert [o.status for o in done[0].outcomes] == ["stored"] * 2
    # A new TTL applies to the next refresh; demographics not in aot_kinds is not precomputed.
    set_settings(engine, ttl=timedelta(hours=2))
    with engine.connect() as conn:
        cs.refresh_units(conn, ["BIG"], "dialysis", NOW + timedelta(hours=3))
        done, _ = cs.refresh_units(conn, ["BIG"], "demographics", NOW + timedelta(hours=3))
    assert done[0].outcomes == [] and "not in aot_kinds" in done[0].skipped_reason
    assert all(r["expires_at"] - r["computed_at"] == timedelta(hours=2) for r in row(engine, "BIG"))
    # Raising the cutoff: BIG is no longer precomputed, but its existing unexpired entries stay current.
    set_settings(engine, aot_min_records=10)
    with engine.connect() as conn:
        done, _ = cs.refresh_units(conn, ["BIG"], "dialysis", NOW + timedelta(hours=4), force=True)
    assert not done[0].eligible and [o.status for o in done[0].outcomes] == ["stored"] * 2


def test_one_units_failure_never_aborts_the_others(engine, monkeypatch):
    with engine.begin() as conn:
        small_unit(conn, "A1", patients=4)
        small_unit(conn, "B1", patients=4)
    set_settings(engine, aot_min_records=3)
    real = cs.CALCULATORS["dialysis"]

    def flaky(conn, unit, window):
        if unit == "A1":
            raise RuntimeError("boom")
        return real(conn, unit, window)

    monkeypatch.setitem(cs.CALCULATORS, "dialysis", flaky)
    with engine.connect() as conn:
        done, failed = cs.refresh_units(conn, ["A1", "B1"], "dialysis", NOW)
    assert failed == {"A1": "RuntimeError"}
    assert [d.unit for d in done] == ["B1"] and len(row(engine, "B1")) == 2 and row(engine, "A1") == []


def test_expiry_check_finds_expired_entries_of_above_cutoff_units(engine):
    with engine.begin() as conn:
        small_unit(conn, "BIG", patients=4)
        small_unit(conn, "SMALL", patients=2)
    set_settings(engine, aot_min_records=3)
    with engine.connect() as conn:
        cs.refresh_units(conn, ["BIG"], "dialysis", NOW)
        cs.get_facility_stats(conn, "SMALL", now=NOW)  # small units may expire: not checked
        expired, missing, _ = cs.expired_aot_entries(conn, NOW + timedelta(hours=8, minutes=10))
        assert expired == [] and missing == []  # within the grace
        expired, missing, _ = cs.expired_aot_entries(conn, NOW + timedelta(hours=9))
        assert sorted(k["facility_code"] for k in expired) == ["BIG", "BIG"] and missing == []
        cs.refresh_units(conn, ["BIG"], "dialysis", NOW + timedelta(hours=9))
        assert cs.expired_aot_entries(conn, NOW + timedelta(hours=9))[0] == []


def test_record_counts_rewritten(engine):
    with engine.begin() as conn:
        small_unit(conn, "A1", patients=4)
        add_patient(conn, "pv", "A1", extract="PV")
        add_patient(conn, "ukrr", "UKRR")
        add_patient(conn, "nf", "NOFAC")
    with engine.connect() as conn:
        first = cs.refresh_record_counts(conn, NOW)
        conn.execute(sa.text("DELETE FROM patientrecord WHERE sendingfacility = 'NOFAC'"))
        conn.commit()
        second = cs.refresh_record_counts(conn, NOW)
        rows = dict(conn.execute(sa.text("SELECT facility_code, ukrdc_record_count FROM facility_record_counts")).all())
    assert first == {"facilities": 2, "inserted": 2, "updated": 0, "deleted": 0}
    assert second == {"facilities": 1, "inserted": 0, "updated": 1, "deleted": 1}
    assert rows == {"A1": 4}
