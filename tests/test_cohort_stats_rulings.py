"""Cohort stats rulings of domain.md §2.4 (issue 18 item 8), each at its boundary: demographics are of
today for every window; a prior KRT treatment on any record (a PV extract too) makes a patient not
incident; in-centre frequency over whole days, a value on a bin edge in the lower bin; and a calculator
version change recomputes cached values."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from assets import cohort_stats as cs
from orchestration import schema
from tests.test_cohort_stats import S, add_patient, set_settings, small_unit

NOW = datetime(2024, 7, 10, 12, 0, tzinfo=timezone.utc)  # London 10 July 2024; W2 = [2024-04-02, 2024-07-01]
TODAY = date(2024, 7, 10)


# ---------------------------------------------------------------------------------------------
# Demographics: patients living today, aged on today, for W1 and W2 alike
# ---------------------------------------------------------------------------------------------


def test_demographics_w2_is_the_cohort_of_today(engine):
    with engine.begin() as conn:
        conn.execute(schema.facility.insert().values(code="D1"))
        add_patient(conn, "born", "D1", birth="2000-07-05T00:00")  # 23 on W2's end, 24 today
        add_patient(conn, "after_w2", "D1", birth="1970-01-01T00:00", death="2024-07-05T10:00")  # died after W2
        add_patient(conn, "on_w2_end", "D1", birth="1970-01-01T00:00", death="2024-07-01T23:00")
        add_patient(conn, "today", "D1", birth="1970-01-01T00:00", death="2024-07-10T09:00")  # died today
        add_patient(conn, "tomorrow", "D1", birth="1980-01-01T00:00", death="2024-07-11T00:00")  # living today
    w1, w2 = cs.stats_windows(TODAY)
    assert (w2.name, w2.end) == ("w2", date(2024, 7, 1))
    with engine.connect() as conn:
        first, second = (cs.demographics_stats(conn, "D1", w) for w in (w1, w2))
    assert first == second
    p = second["payload"]
    assert second["population"] == 2 and p["on_date"] == "2024-07-10"
    assert p["age"] == {"24": 1, "44": 1, "Unknown": 0}
    assert second["calculator_version"] == cs.CALCULATOR_VERSIONS["demographics"] == "pso-demographics-2"


def test_demographics_read_through_of_w2_ages_on_today(engine):
    with engine.begin() as conn:
        conn.execute(schema.facility.insert().values(code="D2"))
        add_patient(conn, "born", "D2", birth="2000-07-05T00:00")
        add_patient(conn, "after_w2", "D2", birth="1970-01-01T00:00", death="2024-07-05T10:00")
    with engine.connect() as conn:
        read = cs.get_facility_stats(conn, "D2", "demographics", "w2", now=NOW)
    assert read.entry.key["window_end"] == date(2024, 7, 1)
    assert read.entry.values["payload"]["age"] == {"24": 1, "Unknown": 0}


# ---------------------------------------------------------------------------------------------
# Incident cohort: prior KRT on any record of the patient
# ---------------------------------------------------------------------------------------------


def _incident_unit(conn) -> None:
    """Four patients who start HD at unit I1 inside W1 = [2024-04-11, 2024-07-10]; each also has a
    PV-extract record (same ukrdcid) elsewhere with one earlier treatment."""
    conn.execute(schema.facility.insert(), [{"code": "I1"}, {"code": "PVX"}])
    cases = {
        "pv_prior": ("2024-04-10T23:59:59.999999", "29"),  # KRT one microsecond before the window: not incident
        "pv_at_start": ("2024-04-11T00:00", "29"),  # KRT at the window start is not prior: incident
        "pv_not_krt": ("2020-01-01T09:00", "900"),  # an earlier treatment that is not KRT: incident
        "pv_prior_pd": ("2023-01-01T09:00", "11"),  # PD on the PV record years before: not incident
    }
    for pid, (start, code) in cases.items():
        add_patient(conn, pid, "I1", treatments=[("I1", "2024-05-01T09:00", None, "1", "HOSP")])
        add_patient(conn, f"{pid}-pv", "PVX", ukrdcid=f"U-{pid}", extract="PV",
                    treatments=[("PVX", start, "2024-04-30T09:00", code, None)])


def test_prior_krt_on_a_pv_extract_record_makes_a_patient_not_incident(engine):
    with engine.begin() as conn:
        _incident_unit(conn)
    with engine.connect() as conn:
        values = cs.dialysis_stats(conn, "I1", cs.window_named(TODAY, "w1"))
    p = values["payload"]
    assert p["all"]["HD In-centre"] == 4 and p["prevalent"]["HD In-centre"] == 4
    assert p["incident"] == {"HD Home": 0, "HD In-centre": 2, "HD Unknown/Incomplete": 0, "PD": 0}
    # The PV records count in no cohort of their own unit (UKRDC extract only).
    with engine.connect() as conn:
        assert cs.dialysis_stats(conn, "PVX", cs.window_named(TODAY, "w1"))["population"] == 0


# ---------------------------------------------------------------------------------------------
# In-centre frequency: whole days, a value on a bin edge in the lower bin
# ---------------------------------------------------------------------------------------------


def _sessions(first: str, *offsets: timedelta) -> list[tuple[str, str]]:
    start = datetime.fromisoformat(first)
    return [(S, (start + o).isoformat()) for o in (timedelta(0), *offsets)]


@pytest.mark.parametrize("sessions, expected_bin", [
    # 3 sessions over 5 days 12 hours: 5 whole days, 4.2 a week → 4.0–4.5 (exact days would give 3.82 → 3.5–4.0).
    (_sessions("2024-06-01T08:00", timedelta(days=2), timedelta(days=5, hours=12)), 8),
    # Exactly 3.5 a week (3 sessions over 6 days) → 3.0–3.5, not 3.5–4.0.
    (_sessions("2024-06-01T08:00", timedelta(days=3), timedelta(days=6)), 6),
    # 3 over 6 days 23:59 is still 6 whole days: 3.5 → 3.0–3.5.
    (_sessions("2024-06-01T08:00", timedelta(days=3), timedelta(days=6, hours=23, minutes=59)), 6),
    # 3 over 7 days: exactly 3.0 → 2.5–3.0.
    (_sessions("2024-06-01T08:00", timedelta(days=3), timedelta(days=7)), 5),
    # 13 over 14 days: exactly 6.5 → 6.0–6.5.
    (_sessions("2024-06-01T08:00", *(timedelta(days=d) for d in range(1, 12)), timedelta(days=14)), 12),
    # 2 over 2 days: exactly 7.0 → the last bin (6.5–7 and above).
    (_sessions("2024-06-01T08:00", timedelta(days=2)), 13),
    # 2 over 1 day 23 hours: 1 whole day, 14 a week → the last bin.
    (_sessions("2024-06-01T08:00", timedelta(days=1, hours=23)), 13),
    # 2 sessions less than a day apart: no frequency.
    (_sessions("2024-06-01T08:00", timedelta(hours=23, minutes=59)), None),
])
def test_incentre_frequency_bins(engine, sessions, expected_bin):
    with engine.begin() as conn:
        conn.execute(schema.facility.insert().values(code="F1"))
        add_patient(conn, "F", "F1", treatments=[("F1", "2024-05-01T09:00", None, "1", "HOSP")], sessions=sessions)
    with engine.connect() as conn:
        counts = cs.dialysis_stats(conn, "F1", cs.window_named(TODAY, "w1"))["payload"]["incentre_dialysis_frequency"]["counts"]
    assert counts == [int(i == expected_bin) for i in range(14)]


# ---------------------------------------------------------------------------------------------
# A calculator version change recomputes cached values
# ---------------------------------------------------------------------------------------------


def _store_old_version(engine, unit: str, computed_at: datetime) -> None:
    """Entries of both current windows as the previous dialysis calculator left them (unexpired)."""
    old = {"outcome": 0, "payload": {"old": True}, "population": 99, "duration_ms": 1,
           "calculator_version": "pso-dialysis-1"}
    with engine.begin() as conn:
        for w in cs.stats_windows(TODAY):
            cs.STATS_CACHE.store(conn, cs.cache_key(unit, "dialysis", w), old, computed_at, timedelta(hours=8))


def _versions(engine, unit: str) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.select(schema.facility_stats.c.calculator_version)
                            .where(schema.facility_stats.c.facility_code == unit)
                            .order_by(schema.facility_stats.c.window_start)).scalars().all()


def test_read_through_recomputes_a_fresh_value_of_an_older_calculator(engine):
    with engine.begin() as conn:
        small_unit(conn, "S1", patients=3)
    _store_old_version(engine, "S1", NOW)
    with engine.connect() as conn:
        read = cs.get_facility_stats(conn, "S1", "dialysis", "w1", now=NOW + timedelta(minutes=1))
        again = cs.get_facility_stats(conn, "S1", "dialysis", "w1", now=NOW + timedelta(minutes=2))
    assert read.source == "computed" and read.entry.values["population"] == 3
    assert read.entry.values["calculator_version"] == cs.CALCULATOR_VERSIONS["dialysis"] == "pso-dialysis-2"
    assert again.source == "fresh" and again.entry.computed_at == read.entry.computed_at


def test_refresh_and_expiry_check_treat_an_older_calculator_as_expired(engine):
    with engine.begin() as conn:
        small_unit(conn, "BIG", patients=4)
    set_settings(engine, aot_min_records=3)
    _store_old_version(engine, "BIG", NOW)
    later = NOW + timedelta(minutes=5)
    with engine.connect() as conn:
        # An ahead-of-time unit's reader is served the old value (it never waits) ...
        stale = cs.get_facility_stats(conn, "BIG", "dialysis", "w1", now=later)
        assert stale.source == "stale" and stale.entry.values["population"] == 99
        # ... while the expiry check (and so the registry sensor) sees both entries as due, within the TTL.
        expired, missing, _ = cs.expired_aot_entries(conn, later)
        assert sorted(k["window_end"] for k in expired) == [date(2024, 7, 1), TODAY] and missing == []
        # Computed 5 minutes ago, within skip_if_fresher_than, yet recomputed: another calculator made it.
        done, failed = cs.refresh_units(conn, ["BIG"], "dialysis", later)
        assert failed == {} and [o.status for o in done[0].outcomes] == ["stored", "stored"]
        assert cs.expired_aot_entries(conn, later)[0] == []
        # Computed by the current calculator: the skip window applies again.
        done, _ = cs.refresh_units(conn, ["BIG"], "dialysis", later + timedelta(minutes=5))
        assert [o.status for o in done[0].outcomes] == ["skipped_fresh", "skipped_fresh"]
    assert _versions(engine, "BIG") == ["pso-dialysis-2", "pso-dialysis-2"]


def test_bench_baseline_follows_the_rulings_and_agrees_with_sql(engine, database_url):
    """The per-row pandas baseline of `pso bench cohort_stats` computes the same figures as the SQL."""
    from bench.cohort_stats import BIG_UNIT, pandas_dialysis
    from orchestration.synthetic import seed_all

    seed_all(database_url, scale=0.2, families=["orchestration.synthetic.cohort_stats"], now=NOW, echo=lambda *_: None)
    with engine.connect() as conn:
        for window in cs.stats_windows(TODAY):
            p = cs.dialysis_stats(conn, BIG_UNIT, window)["payload"]
            baseline = pandas_dialysis(conn, BIG_UNIT, window)
            assert p["population"] > 0 and sum(p["incentre_dialysis_frequency"]["counts"]) > 0
            assert baseline == {"population": p["population"], "all": p["all"], "incident": p["incident"],
                                "prevalent": p["prevalent"], "counts": p["incentre_dialysis_frequency"]["counts"]}
