"""Synthetic UKRDC data (domain.md §2): facilities, patient records, patients, treatments, sessions.

Units and their patient counts (one UKRDC record per patient, plus a few PV-extract and transfer
records). Sizes scale with `ctx.scale`; at bench scale (20) RAJ01 has 10,000 patients and RFSBA
6,000 (both above the default cutoff of 5,000). At demo scale RAJ01 has 500 patients and the
generator sets `stats_settings.aot_min_records` to DEMO_CUTOFF (450), so the demo shows one unit
computed ahead of time and the others read through.

Bad input on purpose: unknown gender and ethnic codes, missing birth dates, 29 February
birthdays, overlapping and open-ended treatments, treatments without a start or ending before
they start, non-KRT admit reasons, and RXX99, a sending facility with no `facility` row.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

from orchestration.synthetic import SynthContext

# (code, demo-scale patients); RXX99 has records but no facility row.
UNITS = [("RAJ01", 500), ("RFSBA", 300), ("RBZ00", 200), ("RCSLB", 150), ("RDEE1", 120), ("RGT01", 100),
         ("RHM01", 80), ("RJZ01", 60), ("RK7CC", 40), ("RL403", 25), ("RXX99", 15)]
MISSING_FACILITY = "RXX99"
EMPTY_UNITS = ["RM301"]  # a facility with no patients (empty cohort)
DEMO_CUTOFF = 450

HD = ["1", "2", "3", "5"]
PD = ["11", "12"]
OTHER_KRT = ["20", "29", "78"]
INCENTRE_CODE = "302497006"


def _choice(rng, weighted):
    r = rng.random()
    acc = 0.0
    for value, weight in weighted:
        acc += weight
        if r < acc:
            return value
    return weighted[-1][0]


GENDERS = [("1", 0.5), ("2", 0.46), ("9", 0.01), ("X", 0.01), ("0", 0.01), (None, 0.01)]
ETHNIC = [("A", 0.6), ("B", 0.03), ("C", 0.03), ("D", 0.02), ("F", 0.01), ("H", 0.08), ("J", 0.05), ("K", 0.02),
          ("L", 0.02), ("R", 0.01), ("M", 0.03), ("N", 0.03), ("P", 0.01), ("S", 0.02), ("Z", 0.03), ("99", 0.005),
          (None, 0.005)]


def _at(day: date, hour: int = 8, minute: int = 0) -> datetime:
    return datetime.combine(day, datetime.min.time()).replace(hour=hour, minute=minute)


def _treatments(rng, today: date, serial: int, pid: str, code: str, unit_codes: list[str],
                treatments: list[tuple]) -> tuple:
    """A first modality, sometimes a switch (overlapping by a few days), some closed; appends the rows to
    `treatments` and returns the current (kind, qbl05, start, from_at, to_at)."""
    start = today - timedelta(days=rng.randrange(8 * 365))
    kind = _choice(rng, [("HD", 0.65), ("PD", 0.2), ("KRT", 0.1), ("NON", 0.05)])
    code_ = {"HD": rng.choice(HD), "PD": rng.choice(PD), "KRT": rng.choice(OTHER_KRT), "NON": "900"}[kind]
    qbl05 = _choice(rng, [("HOSP", 0.6), ("SATL", 0.25), ("HOME", 0.1), (None, 0.05)]) if kind == "HD" else None
    closed = rng.random() < 0.3
    end = start + timedelta(days=rng.randrange(30, 2000)) if closed else None
    if end is not None and end > today:
        end = None
    from_at = _at(start, rng.randrange(7, 18))
    to_at = _at(end, 17) if end else None
    bad = rng.random()
    if bad < 0.002:
        from_at = None  # no start: skipped by the calculator
    elif bad < 0.004 and to_at is not None:
        to_at = from_at - timedelta(days=3)  # ends before it starts
    if rng.random() < 0.03:  # KRT started elsewhere: a prior treatment at another unit
        other = rng.choice(unit_codes)
        treatments.append((f"T{serial}-0", pid, other, _at(start - timedelta(days=400), 9),
                           _at(start - timedelta(days=2), 17), rng.choice(HD), "HOSP"))
    treatments.append((f"T{serial}-1", pid, code, from_at, to_at, code_, qbl05))
    if end is not None and rng.random() < 0.5:  # switched modality; overlaps the first by 0–5 days
        switch_from = end - timedelta(days=rng.randrange(6))
        second = rng.choice(PD if kind == "HD" else HD)
        second_q = ("HOME" if rng.random() < 0.3 else "HOSP") if second in HD else None
        treatments.append((f"T{serial}-2", pid, code, _at(switch_from, 10), None, second, second_q))
        kind, qbl05, to_at = ("PD" if second in PD else "HD"), second_q, None
    return kind, qbl05, start, from_at, to_at


def _in_centre_sessions(rng, today: date, serial: int, pid: str, start: date, sessions: list[tuple]) -> None:
    """2–4 dialysis sessions a week from `start` or 150 days ago, whichever is later, until today."""
    per_week = rng.choice([2, 3, 3, 3, 4])
    gap = 7.0 / per_week
    first = max(start, today - timedelta(days=150))
    t = 0.0
    k = 0
    while first + timedelta(days=t) <= today:
        day = first + timedelta(days=int(t))
        ptype = INCENTRE_CODE if rng.random() < 0.95 else "714749008"
        sessions.append((f"S{serial}-{k}", pid, ptype, _at(day, 7 + (k % 3) * 4)))
        k += 1
        t += gap


def generate(ctx: SynthContext) -> None:
    rng, today = ctx.rng, ctx.today
    facilities = [(code, f"Renal unit {code}") for code, _ in UNITS if code != MISSING_FACILITY]
    facilities += [(code, f"Renal unit {code}") for code in EMPTY_UNITS]
    ctx.copy("facility", ["code", "description"], facilities)

    records, patients, treatments, sessions = [], [], [], []
    unit_codes = [code for code, _ in UNITS]
    serial = 0
    for code, base in UNITS:
        for i in range(ctx.n(base)):
            serial += 1
            ukrdcid = f"U{serial:09d}"
            pid = f"{code}-{i:06d}"
            records.append((pid, ukrdcid, code, "UKRDC"))
            # Birth: 1% on 29 February, 1% missing, else any day 1935–2005.
            roll = rng.random()
            if roll < 0.01:
                birth = _at(date(rng.choice([1948, 1956, 1964, 1972, 1980, 1988, 1996, 2000, 2004]), 2, 29), 0)
            elif roll < 0.02:
                birth = None
            else:
                birth = _at(date(1935, 1, 1) + timedelta(days=rng.randrange(70 * 365)), 0)
            death = _at(today - timedelta(days=rng.randrange(700)), rng.randrange(24)) if rng.random() < 0.08 else None
            patients.append((pid, birth, death, _choice(rng, GENDERS), _choice(rng, ETHNIC)))

            kind, qbl05, start, from_at, to_at = _treatments(rng, today, serial, pid, code, unit_codes, treatments)
            # In-centre sessions (current HD HOSP/SATL, alive): 2–4 a week over the last 150 days.
            if kind == "HD" and qbl05 in ("HOSP", "SATL") and to_at is None and from_at is not None and death is None:
                _in_centre_sessions(rng, today, serial, pid, start, sessions)
            # A few patients also have a PatientView record (not counted: extract is not UKRDC).
            if rng.random() < 0.02:
                records.append((f"PV-{pid}", ukrdcid, code, "PV"))
    ctx.copy("patientrecord", ["pid", "ukrdcid", "sendingfacility", "sendingextract"], records)
    ctx.copy("patient", ["pid", "birthtime", "deathtime", "gender", "ethnicgroupcode"], patients)
    ctx.copy("treatment", ["id", "pid", "healthcarefacilitycode", "fromtime", "totime", "admitreasoncode", "qbl05"],
             treatments)
    ctx.copy("dialysissession", ["id", "pid", "proceduretypecode", "proceduretime"], sessions)
    if ctx.scale < 10:
        # Demo: the default cutoff (5,000) would precompute nothing at this size.
        ctx.conn.execute("UPDATE stats_settings SET aot_min_records = %s WHERE id = 1", (DEMO_CUTOFF,))
    # A finished renal feed that touched two units (one without a facility row): the sync-complete
    # sensor refreshes RAJ01 and logs RXX99 as skipped.
    finished = ctx.now - timedelta(minutes=30)
    ctx.copy("sync_runs", ["source", "started_at", "finished_at", "all_succeeded", "touched"],
             [("renal_feed", finished - timedelta(minutes=5), finished, True, json.dumps(["RAJ01", MISSING_FACILITY]))])
