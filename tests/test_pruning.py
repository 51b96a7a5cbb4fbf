"""Replica pruning rules (domain.md §3.5): one table of cases per rule, against a real Postgres."""

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from assets.pruning import (
    ReplicaInputError,
    maintenance_due,
    overdue_replicas,
    replica_maintenance,
    sync_group_prune,
)
from orchestration.schema import create_replica_schema

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
REPLICA = "r1"
S = "replica_r1"
IN_1, IN_2, OUT = (uuid.UUID(int=i) for i in (1, 2, 3))  # IN_* in group g1 (current), OUT in g2


def _u() -> uuid.UUID:
    return uuid.uuid4()


class Replica:
    """Builds rows in one replica schema with plain SQL (the test reads like the rule table)."""

    def __init__(self, engine: sa.Engine, replica_id: str = REPLICA, current=IN_1, switched_at=None,
                 last_maintenance_at=None, state: bool = True):
        self.engine, self.id, self.schema = engine, replica_id, f"replica_{replica_id}"
        with engine.begin() as conn:
            create_replica_schema(conn, replica_id)
            self._rows(conn, "facility", [{"uuid": IN_1, "sync_group": "g1"}, {"uuid": IN_2, "sync_group": "g1"},
                                          {"uuid": OUT, "sync_group": "g2"}])
            if state:
                conn.execute(sa.text("INSERT INTO replica_state VALUES (:id, :f, :s, :m)"),
                             {"id": replica_id, "f": current, "s": switched_at, "m": last_maintenance_at})

    def _rows(self, conn, table, rows):
        cols = list(rows[0])
        conn.execute(sa.text(f'INSERT INTO "{self.schema}".{table} ({", ".join(cols)}) '
                             f'VALUES ({", ".join(":" + c for c in cols)})'), rows)

    def insert(self, table, **row):
        row.setdefault("uuid", _u())
        with self.engine.begin() as conn:
            self._rows(conn, table, [row])
        return row["uuid"]

    def patient(self, registered=None, assigned=None, sync_status="DONE", deleted_at=None, retain_until=None,
                phone_deleted_at=None, business_id_deleted_at=None):
        address = self.insert("patient_address")
        pid = self.insert("patient", address_uuid=address, registered_facility_id=registered,
                          assigned_facility_id=assigned, sync_status=sync_status, deleted_at=deleted_at,
                          retain_until=retain_until)
        self.insert("patient_phone_number", patient_uuid=pid, deleted_at=phone_deleted_at)
        self.insert("business_id", patient_uuid=pid, deleted_at=business_id_deleted_at)
        return pid

    def appointment(self, patient, facility=IN_1, status="scheduled", deleted_at=None, sync_status="DONE",
                    created_at=NOW - timedelta(days=1), uuid_=None):
        return self.insert("appointment", uuid=uuid_ or _u(), patient_uuid=patient, facility_uuid=facility,
                           status=status, created_at=created_at, deleted_at=deleted_at, sync_status=sync_status)

    def child(self, table, patient, sync_status="DONE", deleted=False):
        if table == "prescribed_drug":
            return self.insert(table, patient_uuid=patient, is_deleted=deleted, sync_status=sync_status)
        return self.insert(table, patient_uuid=patient, deleted_at=NOW - timedelta(days=1) if deleted else None,
                           sync_status=sync_status)

    def address_of(self, patient):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(f'SELECT address_uuid FROM "{self.schema}".patient WHERE uuid = :p'),
                                {"p": patient}).scalar_one()

    def exists(self, table, row_uuid) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(f'SELECT count(*) FROM "{self.schema}".{table} WHERE uuid = :u'),
                                {"u": row_uuid}).scalar() == 1

    def count(self, table, where="true", **params) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(f'SELECT count(*) FROM "{self.schema}".{table} WHERE {where}'), params).scalar()

    def children_of(self, patient) -> int:
        return sum(self.count(t, "patient_uuid = :p", p=patient) for t in ("patient_phone_number", "business_id"))

    def prune(self, **kwargs):
        with self.engine.connect() as conn:
            return sync_group_prune(conn, self.id, kwargs.pop("now", NOW), **kwargs)

    def maintain(self, **kwargs):
        with self.engine.connect() as conn:
            return replica_maintenance(conn, self.id, kwargs.pop("now", NOW), **kwargs)


@pytest.fixture
def replica(engine) -> Replica:
    return Replica(engine)


# ---------------------------------------------------------------------------------------------
# Sync-group prune: which patients are kept
# ---------------------------------------------------------------------------------------------

KEEP_CASES = [
    # (case, patient kwargs, appointments [(facility, status, deleted)], kept)
    ("registered in the group", dict(registered=IN_1, assigned=OUT), [], True),
    ("registered at another facility of the group", dict(registered=IN_2), [], True),
    ("assigned in the group", dict(registered=OUT, assigned=IN_2), [], True),
    ("PENDING outside the group", dict(registered=OUT, sync_status="PENDING"), [], True),
    ("DONE outside the group", dict(registered=OUT, assigned=OUT), [], False),
    ("INVALID outside the group", dict(registered=OUT, sync_status="INVALID"), [], False),
    ("no facility ids at all", dict(), [], False),
    ("scheduled appointment in the group", dict(registered=OUT), [(IN_2, "scheduled", False)], True),
    ("kept quirk: soft-deleted scheduled appointment in the group", dict(registered=OUT),
     [(IN_1, "scheduled", True)], True),
    ("cancelled appointment in the group", dict(registered=OUT), [(IN_1, "cancelled", False)], False),
    ("visited appointment in the group", dict(registered=OUT), [(IN_1, "visited", False)], False),
    ("scheduled appointment outside the group", dict(registered=OUT), [(OUT, "scheduled", False)], False),
    ("soft-deleted patient registered in the group", dict(registered=IN_1, deleted_at=NOW), [], True),
]


def test_sync_group_keep_rules(replica):
    """All cases in one replica: each patient's fate depends only on its own rows."""
    patients = {}
    for case, patient, appointments, kept in KEEP_CASES:
        pid = replica.patient(**patient)
        for facility, status, deleted in appointments:
            replica.appointment(pid, facility=facility, status=status, deleted_at=NOW if deleted else None)
        patients[case] = (pid, replica.address_of(pid), kept)
    outcome = replica.prune()
    assert outcome.skipped_reason is None
    for case, (pid, address, kept) in patients.items():
        assert replica.exists("patient", pid) is kept, case
        # Phone numbers and business ids go with their patient; so does the now unused address.
        assert replica.children_of(pid) == (2 if kept else 0), case
        assert replica.exists("patient_address", address) is kept, case
    pruned = sum(1 for *_, kept in KEEP_CASES if not kept)
    assert outcome.deleted["patient"] == outcome.deleted["patient_phone_number"] == pruned
    assert outcome.deleted["business_id"] == outcome.deleted["patient_address"] == pruned


def test_sync_group_prune_deletes_done_orphans_only_in_its_five_tables(replica):
    gone = replica.patient(registered=OUT)
    orphan_rows = {}
    for table in ("blood_pressure_measurement", "blood_sugar_measurement", "appointment", "prescribed_drug",
                  "medical_history", "call_result"):
        if table == "appointment":
            done = replica.appointment(gone, facility=OUT, status="visited")
            pending = replica.appointment(gone, facility=OUT, status="visited", sync_status="PENDING")
        else:
            done, pending = replica.child(table, gone), replica.child(table, gone, sync_status="PENDING")
        orphan_rows[table] = (done, pending)
    stray_address = replica.insert("patient_address")
    outcome = replica.prune()
    for table, (done, pending) in orphan_rows.items():
        assert replica.exists(table, pending), f"PENDING {table} row deleted"
        # call_result is not in the sync-group orphan list (§3.5 step 4).
        assert replica.exists(table, done) is (table == "call_result"), table
        assert outcome.deleted.get(table, 0) == (0 if table == "call_result" else 1)
    assert not replica.exists("patient_address", stray_address)
    assert outcome.deleted["patient_address"] == 2  # the pruned patient's and the stray one
    assert not outcome.pending_rows_lost
    assert outcome.pending_before == outcome.pending_after


@pytest.mark.parametrize("switched_ago, grace, prunes", [
    (None, timedelta(hours=24), True),
    (timedelta(hours=24), timedelta(hours=24), False),  # exactly the grace: strict comparison, no prune
    (timedelta(hours=24, microseconds=1), timedelta(hours=24), True),
    (timedelta(hours=23), timedelta(hours=24), False),
    (timedelta(hours=2), timedelta(hours=1), True),  # the grace is configurable
], ids=["never switched", "exactly 24 h", "24 h + 1 µs", "23 h", "grace 1 h"])
def test_grace_after_sync_group_switch(engine, switched_ago, grace, prunes):
    replica = Replica(engine, switched_at=NOW - switched_ago if switched_ago else None)
    pid = replica.patient(registered=OUT)
    outcome = replica.prune(grace=grace)
    assert replica.exists("patient", pid) is not prunes
    assert (outcome.skipped_reason is None) is prunes
    if not prunes:
        assert "grace" in outcome.skipped_reason


def test_no_current_facility_skips(engine):
    replica = Replica(engine, current=None)
    pid = replica.patient(registered=OUT)
    outcome = replica.prune()
    assert outcome.skipped_reason == "no current facility" and replica.exists("patient", pid)


def _sync_run(engine, replica_id=REPLICA, succeeded=True, finished=True, source="replica") -> int:
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO sync_runs (source, replica_id, started_at, finished_at, all_succeeded) "
            "VALUES (:source, :r, :s, :f, :ok) RETURNING id"),
            {"source": source, "r": replica_id, "s": NOW - timedelta(minutes=5), "f": NOW if finished else None,
             "ok": succeeded}).scalar_one()


@pytest.mark.parametrize("succeeded, finished, other_replica, prunes", [
    (True, True, False, True),
    (False, True, False, False),  # partial or failed sync: never prune
    (True, False, False, False),  # not finished
    (True, True, True, False),  # a sync of another replica
], ids=["succeeded", "failed", "unfinished", "other replica"])
def test_prune_only_after_a_fully_successful_sync_of_this_replica(engine, succeeded, finished, other_replica, prunes):
    replica = Replica(engine)
    if other_replica:
        Replica(engine, replica_id="r2")
    run_id = _sync_run(engine, "r2" if other_replica else REPLICA, succeeded, finished)
    pid = replica.patient(registered=OUT)
    outcome = replica.prune(sync_run_id=run_id)
    assert replica.exists("patient", pid) is not prunes
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT sync_run_id, kind, skipped_reason FROM prune_runs")).one()
    assert row.sync_run_id == run_id and row.kind == "sync_group"
    assert (row.skipped_reason is None) is prunes
    assert (outcome.skipped_reason is None) is prunes


def test_sync_group_prune_is_idempotent_and_recorded(replica, engine):
    for _ in range(3):
        replica.patient(registered=OUT)
    replica.patient(registered=IN_1)
    first = replica.prune()
    second = replica.prune()
    assert first.deleted["patient"] == 3
    assert second.total_deleted == 0
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, deleted, skipped_reason, started_at, finished_at FROM prune_runs "
                                    "ORDER BY id")).mappings().all()
    assert [r["deleted"] for r in rows] == [first.deleted, second.deleted]
    assert [r["id"] for r in rows] == [first.prune_run_id, second.prune_run_id]
    assert all(r["skipped_reason"] is None and r["started_at"] == NOW and r["finished_at"] >= NOW for r in rows)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_replica_without_schema_is_a_clear_error(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO replica_state (replica_id) VALUES ('ghost')"))
    with engine.connect() as conn, pytest.raises(ReplicaInputError, match="'ghost' has no schema 'replica_ghost'"):
        sync_group_prune(conn, "ghost", NOW)
    with engine.connect() as conn:
        reason = conn.execute(sa.text("SELECT skipped_reason FROM prune_runs WHERE replica_id = 'ghost'")).scalar_one()
    assert reason.startswith("bad input:") and "replica_ghost" in reason


def test_unknown_current_facility_is_a_clear_error(engine):
    unknown = uuid.UUID(int=99)
    replica = Replica(engine, current=unknown)
    pid = replica.patient(registered=OUT)
    with pytest.raises(ReplicaInputError, match=f"current_facility_uuid {unknown} is not in its facility table"):
        replica.prune()
    assert replica.exists("patient", pid)


def test_replica_without_state_and_facility_without_group_are_errors(engine):
    Replica(engine, state=False)
    with engine.connect() as conn, pytest.raises(ReplicaInputError, match="'r1' has no replica_state row"):
        replica_maintenance(conn, REPLICA, NOW)
    no_group = uuid.UUID(int=7)
    replica = Replica(engine, replica_id="r3", current=no_group)
    replica.insert("facility", uuid=no_group, sync_group=None)
    with pytest.raises(ReplicaInputError, match=f"current facility {no_group} has no sync_group"):
        replica.prune()


def test_invalid_replica_id_is_rejected(engine):
    with engine.connect() as conn, pytest.raises(ReplicaInputError, match="replica id must be"):
        sync_group_prune(conn, 'x"; DROP SCHEMA public; --', NOW)


# ---------------------------------------------------------------------------------------------
# Weekly maintenance: every step
# ---------------------------------------------------------------------------------------------

AGO = NOW - timedelta(days=3)
PATIENT_CASES = [
    # (case, patient kwargs, patient kept, phone kept, business id kept)
    ("1 deleted DONE patient goes, with phone, business id, address", dict(deleted_at=AGO), False, False, False),
    ("1 deleted PENDING patient stays", dict(deleted_at=AGO, sync_status="PENDING"), True, True, True),
    ("1 deleted INVALID patient stays (DONE only)", dict(deleted_at=AGO, sync_status="INVALID"), True, True, True),
    ("2 deleted phone of a DONE patient goes", dict(phone_deleted_at=AGO), True, False, True),
    ("2 deleted business id of a DONE patient goes", dict(business_id_deleted_at=AGO), True, True, False),
    ("2 deleted phone of a PENDING patient stays", dict(phone_deleted_at=AGO, sync_status="PENDING"), True, True, True),
    ("3 DONE patient past retain_until goes", dict(retain_until=NOW - timedelta(seconds=1)), False, False, False),
    ("3 DONE patient before retain_until stays", dict(retain_until=NOW + timedelta(days=1)), True, True, True),
    ("3 PENDING patient past retain_until stays", dict(retain_until=AGO, sync_status="PENDING"), True, True, True),
    ("live DONE patient stays", dict(), True, True, True),
]


def test_maintenance_patient_steps(replica):
    patients = {case: replica.patient(registered=IN_1, **patient) for case, patient, *_ in PATIENT_CASES}
    addresses = {case: replica.address_of(pid) for case, pid in patients.items()}
    outcome = replica.maintain()
    assert outcome.skipped_reason is None
    for case, _, kept, phone_kept, business_kept in PATIENT_CASES:
        pid = patients[case]
        assert replica.exists("patient", pid) is kept, case
        assert replica.count("patient_phone_number", "patient_uuid = :p", p=pid) == int(phone_kept), case
        assert replica.count("business_id", "patient_uuid = :p", p=pid) == int(business_kept), case
        # Step 1 deletes orphan addresses; step 3 (retain_until) does not (§3.5 lists them under step 1 only).
        assert replica.exists("patient_address", addresses[case]) is (kept or case.startswith("3")), case
    assert outcome.steps["1 deleted patients"]["patient"] == 1
    assert outcome.steps["3 patients past retain_until"]["patient"] == 1
    assert not outcome.pending_rows_lost


CHILD_CASES = [
    # (table, deleted, sync_status, kept)  steps 4 and 5
    *[(t, deleted, status, not (deleted and status == "DONE"))
      for t in ("blood_pressure_measurement", "blood_sugar_measurement", "medical_history", "call_result",
                "prescribed_drug")
      for deleted, status in ((True, "DONE"), (True, "PENDING"), (False, "DONE"))],
]


def test_maintenance_soft_deleted_rows(replica):
    pid = replica.patient(registered=IN_1)
    rows = [(replica.child(table, pid, sync_status=status, deleted=deleted), table, deleted, status, kept)
            for table, deleted, status, kept in CHILD_CASES]
    outcome = replica.maintain()
    for row, table, deleted, status, kept in rows:
        assert replica.exists(table, row) is kept, (table, deleted, status)
    assert outcome.steps["4 deleted measurements, medical history, call results"] == {
        t: 1 for t in ("blood_pressure_measurement", "blood_sugar_measurement", "medical_history", "call_result")}
    assert outcome.steps["5 deleted prescribed drugs"] == {"prescribed_drug": 1}


def test_maintenance_appointments_step_6(replica):
    d = NOW - timedelta(days=10)
    a = replica.patient(registered=IN_1)
    oldest = replica.appointment(a, created_at=d)
    older_pending = replica.appointment(a, created_at=d + timedelta(days=1), sync_status="PENDING")
    middle = replica.appointment(a, created_at=d + timedelta(days=2), status="visited")
    latest = replica.appointment(a, created_at=d + timedelta(days=3), status="cancelled")
    soft_deleted_latest = replica.appointment(a, created_at=d + timedelta(days=4), deleted_at=AGO)
    # Ties on created_at are broken by uuid, descending.
    b = replica.patient(registered=IN_1)
    tie_low = replica.appointment(b, created_at=d, uuid_=uuid.UUID(int=10))
    tie_high = replica.appointment(b, created_at=d, uuid_=uuid.UUID(int=11))
    # A PENDING latest appointment still makes older DONE ones superseded.
    c = replica.patient(registered=IN_1)
    c_done = replica.appointment(c, created_at=d)
    c_pending = replica.appointment(c, created_at=d + timedelta(days=1), sync_status="PENDING")
    soft_deleted_pending = replica.appointment(c, created_at=d, deleted_at=AGO, sync_status="PENDING")

    outcome = replica.maintain()
    kept = {u for u in (oldest, older_pending, middle, latest, soft_deleted_latest, tie_low, tie_high, c_done,
                        c_pending, soft_deleted_pending) if replica.exists("appointment", u)}
    assert kept == {older_pending, latest, tie_high, c_pending, soft_deleted_pending}
    assert outcome.steps["6 appointments"]["appointment"] == 5


def test_maintenance_step_7_deletes_done_orphans_only(replica):
    """Upstream also removed PENDING orphans when a DONE orphan had the same patient: fixed."""
    missing = _u()
    rows = {}
    for table in ("blood_pressure_measurement", "blood_sugar_measurement", "appointment", "medical_history",
                  "prescribed_drug", "call_result"):
        if table == "appointment":
            rows[table] = (replica.appointment(missing, created_at=NOW), replica.appointment(
                missing, created_at=NOW - timedelta(days=1), sync_status="PENDING"))
        else:
            rows[table] = (replica.child(table, missing), replica.child(table, missing, sync_status="PENDING"))
    outcome = replica.maintain()
    for table, (done, pending) in rows.items():
        assert replica.exists(table, pending), f"PENDING orphan deleted from {table}"
        assert replica.exists(table, done) is (table == "call_result"), table
    assert outcome.steps["7 DONE orphans"] == {t: 1 for t in ("blood_pressure_measurement", "blood_sugar_measurement",
                                                              "appointment", "medical_history", "prescribed_drug")}
    assert not outcome.pending_rows_lost


def test_maintenance_steps_run_in_order(replica):
    """Step 1 deletes a patient, so step 7 then finds its DONE measurement orphaned (same run)."""
    pid = replica.patient(registered=IN_1, deleted_at=AGO)
    bp = replica.child("blood_pressure_measurement", pid)
    pending_bp = replica.child("blood_pressure_measurement", pid, sync_status="PENDING")
    outcome = replica.maintain()
    assert not replica.exists("blood_pressure_measurement", bp)
    assert replica.exists("blood_pressure_measurement", pending_bp)
    assert list(outcome.steps) == ["1 deleted patients", "2 deleted phone numbers and business ids",
                                   "3 patients past retain_until",
                                   "4 deleted measurements, medical history, call results",
                                   "5 deleted prescribed drugs", "6 appointments", "7 DONE orphans"]


def _last_maintenance(engine, replica_id=REPLICA):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT last_maintenance_at FROM replica_state WHERE replica_id = :r"),
                            {"r": replica_id}).scalar()


@pytest.mark.parametrize("last, force, runs", [
    (None, False, True),
    (NOW - timedelta(days=7, seconds=1), False, True),
    (NOW - timedelta(days=7), False, False),  # "more than 7 days ago"
    (NOW - timedelta(days=1), False, False),
    (NOW - timedelta(days=1), True, True),
], ids=["never", "7 d + 1 s", "exactly 7 d", "1 d", "forced"])
def test_maintenance_due_and_last_maintenance_set_only_after_a_purge(engine, last, force, runs):
    replica = Replica(engine, last_maintenance_at=last)
    pid = replica.patient(registered=IN_1, deleted_at=AGO)
    outcome = replica.maintain(force=force)
    assert maintenance_due(last, NOW) is (last is None or NOW - last > timedelta(days=7))
    assert replica.exists("patient", pid) is not runs
    assert _last_maintenance(engine) == (NOW if runs else last)
    assert (outcome.skipped_reason is None) is runs


def test_maintenance_skipped_while_a_sync_runs_and_not_recorded(engine):
    """Upstream bug fixed: a skipped run must not move last_maintenance_at."""
    replica = Replica(engine, last_maintenance_at=None)
    pid = replica.patient(registered=IN_1, deleted_at=AGO)
    running = _sync_run(engine, finished=False)
    outcome = replica.maintain()
    assert outcome.skipped_reason == f"sync run(s) in progress: {running}"
    assert replica.exists("patient", pid) and _last_maintenance(engine) is None
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE sync_runs SET finished_at = :now, all_succeeded = true"), {"now": NOW})
    assert replica.maintain().skipped_reason is None
    assert not replica.exists("patient", pid) and _last_maintenance(engine) == NOW


def test_maintenance_idempotent_vacuums_and_records_counts(replica, engine):
    pid = replica.patient(registered=IN_1, deleted_at=AGO)
    replica.child("blood_sugar_measurement", pid)
    live = replica.patient(registered=IN_1)
    replica.appointment(live, created_at=AGO)
    replica.appointment(live, created_at=NOW)
    first = replica.maintain()
    assert first.deleted == {"patient": 1, "patient_phone_number": 1, "business_id": 1, "patient_address": 1,
                             "blood_pressure_measurement": 0, "blood_sugar_measurement": 1, "medical_history": 0,
                             "call_result": 0, "prescribed_drug": 0, "appointment": 1}
    assert set(first.vacuumed) == {t for t, n in first.deleted.items() if n} and not first.vacuum_failed
    second = replica.maintain(force=True)
    assert second.total_deleted == 0 and second.vacuumed == []
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT deleted FROM prune_runs WHERE kind = 'maintenance' ORDER BY id")).scalars()
        assert list(stored) == [first.deleted, second.deleted]


def test_pending_rows_never_deleted_by_either_prune(replica, engine):
    """Every kind of PENDING row in the way of every rule survives both prunes."""
    outside = replica.patient(registered=OUT, sync_status="PENDING", deleted_at=AGO, retain_until=AGO)
    gone = replica.patient(registered=OUT)
    missing = _u()
    for pid in (outside, gone, missing):
        for table in ("blood_pressure_measurement", "blood_sugar_measurement", "medical_history", "call_result",
                      "prescribed_drug"):
            replica.child(table, pid, sync_status="PENDING", deleted=True)
            replica.child(table, pid)  # a DONE sibling (the upstream step-7 bug's trigger)
        replica.appointment(pid, facility=OUT, sync_status="PENDING", deleted_at=AGO, created_at=AGO)
        replica.appointment(pid, facility=OUT, created_at=NOW)
    with engine.connect() as conn:
        before = conn.execute(sa.text(
            " + ".join(f"(SELECT count(*) FROM {S}.{t} WHERE sync_status = 'PENDING')" for t in (
                "patient", "appointment", "blood_pressure_measurement", "blood_sugar_measurement", "medical_history",
                "call_result", "prescribed_drug")).join(("SELECT ", ""))
        )).scalar()
    outcomes = [replica.maintain(), replica.prune()]
    assert before == 1 + 3 * 6
    for outcome in outcomes:
        assert sum(outcome.pending_before.values()) == before
        assert outcome.pending_after == outcome.pending_before
        assert not outcome.pending_rows_lost
        assert sum(outcome.pending_deleted.values()) == 0
    assert outcomes[0].total_deleted > 0 and outcomes[1].deleted["patient"] == 1


def test_overdue_replicas_are_named(engine):
    Replica(engine, replica_id="fresh", last_maintenance_at=NOW - timedelta(days=2))
    Replica(engine, replica_id="late", last_maintenance_at=NOW - timedelta(days=9))
    Replica(engine, replica_id="never")
    with engine.connect() as conn:
        assert [r["replica_id"] for r in overdue_replicas(conn, NOW)] == ["late", "never"]


def test_prune_runs_deleted_matches_database(replica, engine):
    for _ in range(4):
        replica.patient(registered=OUT)
    outcome = replica.prune()
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT deleted FROM prune_runs WHERE id = :i"), {"i": outcome.prune_run_id}
                              ).scalar_one()
    assert stored == json.loads(json.dumps(outcome.deleted))
    assert stored["patient"] == 4 and replica.count("patient") == 0
