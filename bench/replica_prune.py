"""Sync-group prune of a replica of 100,000 patients (× scale) against a per-patient delete loop.

Half the patients are outside the current sync group (DONE) and get pruned, with their phone
numbers, business ids, addresses and DONE measurements/appointments. The baseline is the naive
shape: fetch the doomed ids, then delete each patient and its rows with one statement per table.
It is measured on a sample of patients (rate per pruned patient) and then the set-based prune
removes the rest; both rates are per pruned patient on the same replica.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from assets.pruning import replica_maintenance, sync_group_prune
from bench.runner import BenchDatabase, BenchReport, timed
from orchestration.schema import create_replica_schema
from orchestration.bulk import copy_rows

REPLICA = "bench"
S = "replica_bench"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
IN_GROUP, OUT_GROUP = uuid.UUID(int=1), uuid.UUID(int=2)
LOOP_SAMPLE = 2_000


def _load(db: BenchDatabase, patients: int) -> dict[str, int]:
    rng = random.Random(5)
    u = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)  # noqa: E731
    engine = db.engine()
    with engine.begin() as conn:
        create_replica_schema(conn, REPLICA)
        conn.execute(sa.text("INSERT INTO replica_state (replica_id, current_facility_uuid) VALUES (:r, :f)"),
                     {"r": REPLICA, "f": IN_GROUP})
    engine.dispose()
    rows = []
    for i in range(patients):
        inside = rng.random() < 0.4
        status = "PENDING" if rng.random() < 0.1 else "DONE"
        rows.append((u(), u(), IN_GROUP if inside else OUT_GROUP, status))
    counts: dict[str, int] = {}
    with db.connect() as conn:
        counts["facility"] = copy_rows(conn, f"{S}.facility", ["uuid", "sync_group"],
                                       [(IN_GROUP, "g1"), (OUT_GROUP, "g2")])
        counts["patient_address"] = copy_rows(conn, f"{S}.patient_address", ["uuid"], ((r[1],) for r in rows))
        counts["patient"] = copy_rows(conn, f"{S}.patient", ["uuid", "address_uuid", "registered_facility_id",
                                                             "sync_status"], rows)
        for table in ("patient_phone_number", "business_id"):
            counts[table] = copy_rows(conn, f"{S}.{table}", ["uuid", "patient_uuid"], ((u(), r[0]) for r in rows))
        counts["appointment"] = copy_rows(
            conn, f"{S}.appointment", ["uuid", "patient_uuid", "facility_uuid", "status", "created_at", "sync_status"],
            ((u(), r[0], r[2], rng.choice(("visited", "cancelled", "scheduled")) if r[2] == IN_GROUP else "visited",
              NOW - timedelta(days=rng.randint(1, 300)), "DONE") for r in rows for _ in range(2)))
        counts["blood_pressure_measurement"] = copy_rows(
            conn, f"{S}.blood_pressure_measurement", ["uuid", "patient_uuid", "sync_status"],
            ((u(), r[0], "DONE" if rng.random() < 0.9 else "PENDING") for r in rows for _ in range(3)))
        conn.commit()
        conn.execute("ANALYZE")
        conn.commit()
    return counts


def _doomed(conn) -> list[uuid.UUID]:
    return [r[0] for r in conn.execute(
        f"SELECT p.uuid FROM {S}.patient p WHERE p.sync_status <> 'PENDING' AND p.registered_facility_id = %s "
        f"AND NOT EXISTS (SELECT 1 FROM {S}.appointment a WHERE a.patient_uuid = p.uuid AND a.status = 'scheduled' "
        f"AND a.facility_uuid = %s) ORDER BY p.uuid", (OUT_GROUP, IN_GROUP)).fetchall()]


def _per_patient_loop(db: BenchDatabase, sample: int) -> tuple[int, float]:
    """The baseline: one statement per table per pruned patient, one transaction."""
    with db.connect() as conn:
        doomed = _doomed(conn)[:sample]
        with timed() as t:
            with conn.cursor() as cur:
                for pid in doomed:
                    cur.execute(f"DELETE FROM {S}.patient_phone_number WHERE patient_uuid = %s", (pid,))
                    cur.execute(f"DELETE FROM {S}.business_id WHERE patient_uuid = %s", (pid,))
                    address = cur.execute(f"DELETE FROM {S}.patient WHERE uuid = %s RETURNING address_uuid",
                                          (pid,)).fetchone()[0]
                    cur.execute(f"DELETE FROM {S}.patient_address WHERE uuid = %s", (address,))
                    for table in ("appointment", "blood_pressure_measurement"):
                        cur.execute(f"DELETE FROM {S}.{table} WHERE patient_uuid = %s AND sync_status = 'DONE'", (pid,))
            conn.commit()
        return len(doomed), t()


def run(db: BenchDatabase, scale: float) -> BenchReport:
    report = BenchReport("replica_prune", scale)
    patients = int(100_000 * scale)
    with timed() as t:
        counts = _load(db, patients)
    report.add("replica patients", patients, "rows")
    report.add("replica rows loaded", sum(counts.values()), "rows", f"in {t():.1f} s (COPY)")

    sample = min(LOOP_SAMPLE, max(100, patients // 50))
    looped, loop_seconds = _per_patient_loop(db, sample)
    report.add("per-patient loop: patients pruned (sample)", looped, "patients")
    report.add("per-patient loop rate (baseline)", looped / loop_seconds, "patients/s")

    engine = db.engine()
    with engine.connect() as conn:
        with timed() as t:
            outcome = sync_group_prune(conn, REPLICA, NOW)
        prune_seconds = t()
        assert not outcome.pending_rows_lost and outcome.skipped_reason is None
        with timed() as t:
            again = sync_group_prune(conn, REPLICA, NOW)
        idle_seconds = t()
        assert again.total_deleted == 0
        with timed() as t:
            maintenance = replica_maintenance(conn, REPLICA, NOW)
        maintenance_seconds = t()
    engine.dispose()
    pruned = outcome.deleted["patient"]
    report.add("set-based prune: patients pruned", pruned, "patients")
    report.add("set-based prune: rows deleted", outcome.total_deleted, "rows", f"in {prune_seconds:.2f} s")
    report.add("set-based prune rate", pruned / prune_seconds, "patients/s")
    report.add("set-based prune: row rate", outcome.total_deleted / prune_seconds, "rows/s")
    report.add("second prune (nothing to delete)", idle_seconds, "s")
    report.add("weekly maintenance after the prune", maintenance_seconds, "s",
               f"{maintenance.total_deleted} rows deleted, VACUUM (ANALYZE) of {len(maintenance.vacuumed)} tables")
    report.ratio("set-based vs per-patient loop, per pruned patient", "set-based prune rate",
                 "per-patient loop rate (baseline)", "≥ 10×")
    return report
