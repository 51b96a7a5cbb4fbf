"""Scoped status refreshes at two database sizes (issue 17 item 3): a patient's or a session's refresh
should cost the same whatever the size of the database around it.

`pso bench statuses_scoped --scale N` loads the statuses generator at scale 20 (the baseline, in a
second scratch database) and at scale N (e.g. 150), fills each cache with one full refresh, then times
on each, the same way: the refresh of 1 patient (every programme, median of 15), of 1,000 patients
(median of 3) and of 1 session (median of 9), as the request sensor does them (priority refreshes).
"""

from __future__ import annotations

import statistics
from datetime import date

import sqlalchemy as sa

from assets.statuses import StatusScope, programme_ids_by_type, refresh_statuses
from bench.runner import BenchDatabase, BenchReport, scratch_database, timed
from orchestration.clock import london_today, now_utc
from orchestration.synthetic import seed_all

BASE_SCALE = 20
CASES = (("1 patient", 15), ("1,000 patients", 3), ("1 session", 9))


def _refresh(conn, programmes: dict[str, int], scope: StatusScope, today: date, priority: bool) -> None:
    for programme_id in programmes.values():
        refresh_statuses(conn, programme_id, scope, today, priority=priority, workers=1 if priority else 2)


def _scopes(conn) -> dict[str, list[StatusScope]]:
    """Spread over the database: patients from the middle of the id range, sessions that have patients."""
    patients = conn.execute(sa.text("SELECT id FROM patients ORDER BY id")).scalars().all()
    sessions = conn.execute(sa.text("SELECT DISTINCT session_id FROM patient_sessions ORDER BY 1")).scalars().all()
    step = max(1, len(patients) // 97)
    return {
        "1 patient": [StatusScope(patient_ids=(p,)) for p in patients[step::step]],
        "1,000 patients": [StatusScope(patient_ids=tuple(patients[i::max(1, len(patients) // 1000)][:1000]))
                           for i in range(3)],
        "1 session": [StatusScope(session_ids=(s,)) for s in sessions[len(sessions) // 3::max(1, len(sessions) // 29)]],
    }


def _measure(db_url: str, scale: float, label: str, report: BenchReport) -> None:
    now = now_utc()
    today = london_today(now)
    seed_all(db_url, scale=scale, now=now, families=["orchestration.synthetic.statuses"], echo=lambda *_: None)
    engine = sa.create_engine(db_url, connect_args={"prepare_threshold": None})
    with engine.connect() as conn:
        programmes = programme_ids_by_type(conn)
        patients = conn.execute(sa.text("SELECT count(*) FROM patients")).scalar_one()
        conn.commit()
        report.add(f"{label}: patients", patients, "patients")
        with timed() as t:
            _refresh(conn, programmes, StatusScope(all=True), today, priority=False)
        report.add(f"{label}: full refresh (fills the cache)", t(), "s")
        scopes = _scopes(conn)
        for case, repeats in CASES:
            seconds = []
            for scope in scopes[case][:repeats]:
                with timed() as t:
                    _refresh(conn, programmes, scope, today, priority=True)
                seconds.append(t())
            report.add(f"{label}: refresh of {case} (every programme)", statistics.median(seconds) * 1000, "ms",
                       f"median of {len(seconds)}")
    engine.dispose()


def run(db: BenchDatabase, scale: float) -> BenchReport:
    report = BenchReport("statuses_scoped", scale)
    big, base = f"scale {scale:g}", f"scale {BASE_SCALE}"
    with scratch_database("statuses_scoped_base") as base_db:
        _measure(base_db.url, BASE_SCALE, base, report)
    _measure(db.url, scale, big, report)
    for case, _ in CASES:
        report.ratio(f"refresh of {case}: {big} / {base}", f"{big}: refresh of {case} (every programme)",
                     f"{base}: refresh of {case} (every programme)", "≤ 1.2×")
    return report
