"""Parallel status refreshes (`workers` > 1): the same rows as a serial refresh, one refresh at a time,
and a failing batch leaves nothing half-written — against a real Postgres."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from assets.statuses import STATUS_REFRESH_LOCK_KEY, StatusScope, refresh_statuses
from orchestration.patterns import derived_table as dt
from test_statuses_helpers import TODAY, World, refresh_everything

STATUS_TABLES = {
    "patient_consent_statuses": "patient_id, programme_id",
    "patient_triage_statuses": "patient_id, programme_id",
    "patient_vaccination_statuses": "patient_id, programme_id",
    "patient_session_session_statuses": "patient_session_id, programme_id",
    "patient_session_registration_statuses": "patient_session_id",
}


def cache(engine) -> dict[str, list[tuple]]:
    """Every cached row by key (ids left out: they differ between two seedings)."""
    with engine.connect() as conn:
        return {table: [tuple(r) for r in conn.execute(sa.text(f"SELECT {keys}, status FROM {table} ORDER BY {keys}"))]
                for table, keys in STATUS_TABLES.items()}


def empty_cache(engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(STATUS_TABLES)))


@pytest.fixture
def world(engine):
    """40 patients in two sessions, with consents, triages, records and attendance spread over them."""
    with engine.begin() as conn:
        w = World(conn)
        other = w.session(["hpv", "flu"], [TODAY])
        w.patients = []
        for i in range(40):
            p = w.patient()
            w.patients.append(p)
            session = other if i % 3 == 0 else None
            ps = w.patient_session(p, session)
            if i % 2:
                w.consent(p, "hpv", "given" if i % 4 == 1 else "refused", parent_id=w.parent(f"Parent {i}"))
            if i % 5 == 0:
                w.consent(p, "flu", "given", parent_id=w.parent(None))
            if i % 7 == 0:
                w.triage(p, "hpv", "do_not_vaccinate")
            if i % 6 == 1:
                w.record(p, "flu", "administered", session_id=session or w.main_session)
            if i % 4 == 2:
                w.attendance(ps, i % 8 == 2, session_id=session)
    return w


def test_parallel_refresh_writes_the_same_rows_as_a_serial_one(world, engine):
    serial = refresh_everything(engine, batch_size=7)
    expected = cache(engine)
    assert sum(len(rows) for rows in expected.values()) > 200
    empty_cache(engine)

    parallel = refresh_everything(engine, batch_size=7, workers=3)
    assert cache(engine) == expected
    for programme, result in parallel.items():
        # Batches of equal size, no larger than the serial ones, a whole number of rounds of 3.
        assert serial[programme].batches <= result.batches <= 3 * -(-serial[programme].batches // 3)
        assert result.written == serial[programme].written

    # Idempotent: a second parallel refresh writes nothing; and it repairs a corrupted row.
    assert sum(r.written for r in refresh_everything(engine, batch_size=7, workers=3).values()) == 0
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE patient_consent_statuses SET status = 3 WHERE patient_id = :p"),
                     {"p": world.patients[1]})
    repaired = refresh_everything(engine, batch_size=7, workers=3)
    assert sum(r.tables["patient_consent_statuses"].changed for r in repaired.values()) == 4
    assert cache(engine) == expected


@pytest.mark.parametrize(("count", "batch_size", "workers", "expected"), [
    (51_572, 10_000, 2, 8_596),   # 6 batches of 8,596 rather than five of 10,000 and one of 1,572
    (20_000, 10_000, 2, 10_000),  # already even
    (25, 10, 2, 7),               # 7, 7, 7, 4: two rounds of two workers
    (3, 10, 4, 1),                # fewer ids than workers: one id each
    (0, 10, 2, 1),
])
def test_parallel_batches_split_the_scope_evenly(engine, count, batch_size, workers, expected):
    listed = dt.list_batches(range(1, count + 1), batch_size=batch_size)
    counted = dt.keyset_batches(  # no known count: Postgres counts the scope
        "SELECT id FROM generate_series(1, CAST(:n AS bigint)) AS g (id) "
        "WHERE CAST(:after AS bigint) IS NULL OR id > CAST(:after AS bigint) ORDER BY id LIMIT :limit",
        {"n": count}, batch_size=batch_size)
    with engine.connect() as conn:
        assert listed.balanced_size(conn, workers) == expected
        assert counted.balanced_size(conn, workers) == expected


def test_a_session_scope_in_parallel(world, engine):
    refresh_everything(engine)
    expected = cache(engine)
    empty_cache(engine)
    with engine.connect() as conn:
        result = refresh_statuses(conn, world.programmes["hpv"], StatusScope(session_ids=(world.main_session,)),
                                  TODAY, batch_size=5, workers=2)
    main_patients = {p for i, p in enumerate(world.patients) if i % 3}
    got = cache(engine)["patient_consent_statuses"]
    assert {row[0] for row in got} == main_patients
    assert got == [row for row in expected["patient_consent_statuses"]
                   if row[0] in main_patients and row[1] == world.programmes["hpv"]]
    assert result.batches == -(-len(main_patients) // 5)


def test_a_parallel_refresh_waits_for_the_refresh_already_running(world, engine):
    done = threading.Event()

    def run():
        refresh_everything(engine, batch_size=7, workers=2)
        done.set()

    with engine.connect() as other:
        with other.begin():
            # Another refresh's batch holds the refresh lock.
            other.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": STATUS_REFRESH_LOCK_KEY})
            thread = threading.Thread(target=run)
            thread.start()
            time.sleep(1.0)
            assert not done.is_set()
            assert sum(len(rows) for rows in cache(engine).values()) == 0
        thread.join(timeout=60)
    assert done.is_set()
    assert sum(len(rows) for rows in cache(engine).values()) > 200


def test_a_worker_batch_sees_whether_the_coordinator_holds_the_refresh_lock(engine):
    key = STATUS_REFRESH_LOCK_KEY | (7 << 40)  # a key with both halves non-zero
    with engine.connect() as coordinator, engine.connect() as worker:
        with coordinator.begin():
            pid = coordinator.execute(dt._HOLD_REFRESH_LOCK, {"key": key}).one()[1]
            with worker.begin():
                assert worker.execute(dt._BEGIN_WORKER_BATCH, {"pid": pid, "key": key}).scalar_one() is True
                assert worker.execute(dt._BEGIN_WORKER_BATCH, {"pid": pid, "key": key + 1}).scalar_one() is False
        with worker.begin():  # the coordinator's transaction ended: the lock is gone
            assert worker.execute(dt._BEGIN_WORKER_BATCH, {"pid": pid, "key": key}).scalar_one() is False


def test_a_failing_batch_stops_the_refresh_and_is_not_half_written(engine):
    """A derived table whose value fails for one id: that batch writes nothing, finalize never runs."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE parallel_probe (id bigserial PRIMARY KEY, item bigint UNIQUE NOT NULL, "
                             "status smallint NOT NULL, copy smallint)"))
    probe = dt.DerivedTable(
        name="parallel_probe", key_columns=("item",),
        expected_sql="SELECT id AS item FROM batch_ids",
        existing_sql="SELECT p.id AS row_id, p.item, p.status AS cached FROM parallel_probe AS p "
                     "WHERE p.item IN (SELECT id FROM batch_ids)",
        value_expr="(k.item % 100) / (k.item - CAST(:bad AS bigint))")
    finalized = []
    try:
        with engine.connect() as conn:
            with pytest.raises(sa.exc.DBAPIError, match="division by zero"):
                dt.refresh(conn, [probe], dt.list_batches(range(1, 41), batch_size=4), {"bad": 22},
                           lock_key=0x5053_0F00, finalize=finalized.append, workers=3)
            written = set(conn.execute(sa.text("SELECT item FROM parallel_probe")).scalars())
        assert finalized == []
        assert not written & {21, 22, 23, 24}  # the failing batch: nothing of it
        assert written <= set(range(1, 41)) and written  # other batches committed whole
        for first in range(1, 41, 4):
            batch = set(range(first, first + 4))
            assert batch <= written or not batch & written
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE parallel_probe"))


def test_a_row_written_outside_the_refresh_is_skipped_as_on_conflict_do_nothing(engine):
    """The seed inserts without a conflict clause and falls back to ON CONFLICT DO NOTHING on a unique
    violation: a row the refresh cannot see (here: `existing_sql` misses it, as a row committed by a
    writer outside the refresh would be) is left alone and every other row of the batch is still written."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE conflict_probe (id bigserial PRIMARY KEY, item bigint UNIQUE NOT NULL, "
                             "status smallint NOT NULL)"))
        conn.execute(sa.text("INSERT INTO conflict_probe (item, status) VALUES (3, 99)"))
    probe = dt.DerivedTable(
        name="conflict_probe", key_columns=("item",),
        expected_sql="SELECT id AS item FROM batch_ids",
        existing_sql="SELECT p.id AS row_id, p.item, p.status AS cached FROM conflict_probe AS p WHERE false",
        value_expr="k.item * 10")
    try:
        with engine.connect() as conn:
            result = dt.refresh(conn, [probe], dt.list_batches(range(1, 6)), {}, lock_key=0x5053_0F01)
            rows = dict(conn.execute(sa.text("SELECT item, status FROM conflict_probe")).all())
        assert rows == {1: 10, 2: 20, 3: 99, 4: 40, 5: 50}
        assert result.tables["conflict_probe"].seeded == 4
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE conflict_probe"))


def test_a_programme_scope_is_sized_by_an_estimate_that_never_narrows_it(engine, world):
    """The estimate sizing a programme's parallel batches counts the eligible patients (those of its
    sessions in another year too), not those only holding rows; the refresh still reaches those."""
    from assets.statuses.refresh import base_params, scope_passes

    def counts(programme: str) -> tuple[int, int]:
        params = {**base_params(world.programmes[programme], TODAY), "programme_type": programme}
        (source, _), = scope_passes(StatusScope(all=True), params)
        with engine.connect() as conn:
            exact = conn.execute(sa.text(f"SELECT count(*) FROM ({source.sql}) AS b"),
                                 {**source.params, "after": None, "limit": None}).scalar_one()
            return conn.execute(sa.text(source.count_sql), source.params).scalar_one(), exact

    assert counts("hpv") == (40, 40)
    refresh_everything(engine)
    holders = world.patients[:5]
    with engine.begin() as conn:  # five patients leave hpv's year groups but keep their rows
        conn.execute(sa.text("UPDATE patients SET birth_academic_year = 2015 WHERE id = ANY(:h)"), {"h": holders})
        conn.execute(sa.text("UPDATE patient_consent_statuses SET status = 3 WHERE patient_id = ANY(:h)"),
                     {"h": holders})
    assert counts("hpv") == (35, 40)
    refresh_everything(engine, batch_size=7, workers=2)
    with engine.connect() as conn:
        stale = conn.execute(sa.text("SELECT count(*) FROM patient_consent_statuses WHERE patient_id = ANY(:h) "
                                     "AND status = 3"), {"h": holders}).scalar_one()
    assert stale == 0
