"""Faults: SIGKILL of the archiving process at random points, and a dropped connection mid-run."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa
from dagster import materialize

from assets import history
from orchestration import schema
from tests.test_history import SERVICE_A, SERVICE_B, SERVICE_C, notification

UTC = timezone.utc
TODAY = date(2024, 7, 10)


def _archive_until_killed(url: str, kind: str, kill_at: int, killed_inside) -> None:
    """Child process: archive with tiny batches; SIGKILL itself at the `kill_at`-th point of `kind`."""
    engine = sa.create_engine(url, connect_args={"prepare_threshold": None})
    seen = {"n": 0}

    def before(conn, cursor, statement, parameters, context, executemany):
        # The lock is the first statement of a batch's transaction: the previous batch has committed.
        if kind == "between" and "pg_advisory_xact_lock" in statement:
            seen["n"] += 1
            if seen["n"] == kill_at:
                killed_inside.value = 0
                os.kill(os.getpid(), signal.SIGKILL)

    def after(conn, cursor, statement, parameters, context, executemany):
        # After choosing the batch or after moving it, before the commit: inside a batch.
        if kind == "inside" and (statement.startswith("CREATE TEMP TABLE archive_batch")
                                 or statement.startswith("WITH moved AS")):
            seen["n"] += 1
            if seen["n"] == kill_at:
                killed_inside.value = 1
                os.kill(os.getpid(), signal.SIGKILL)

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    with engine.connect() as conn:
        history.archive_notifications(conn, TODAY, batch_size=40, letter_batch_size=15)
    os._exit(0)  # skip interpreter clean-up: it would touch the parent's inherited sockets


def _seed(engine) -> tuple[set, set, set]:
    old = datetime(2024, 6, 1, tzinfo=UTC)
    rng = random.Random(5)
    rows = []
    for i in range(3000):
        notification_type = rng.choice(("email", "sms", "letter"))
        status = rng.choice(("delivered", "sending", "created", "permanent-failure"))
        rows.append(notification(old + timedelta(seconds=rng.randrange(20 * 86400)),
                                 rng.choice((SERVICE_A, SERVICE_B, SERVICE_C)), notification_type,
                                 rng.choice(("normal", "normal", "team", "test")), status))
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.services), [{"id": s} for s in (SERVICE_A, SERVICE_B, SERVICE_C)])
        conn.execute(sa.insert(schema.notifications), rows)
    tests = {r["id"] for r in rows if r["key_type"] == "test"}
    kept = {r["id"] for r in rows if r["key_type"] != "test" and r["notification_type"] == "letter"
            and r["notification_status"] in history.PENDING_LETTER_STATUSES}
    archived = {r["id"] for r in rows} - tests - kept
    return archived, kept, tests


def _state(engine):
    with engine.connect() as conn:
        live = list(conn.execute(sa.select(schema.notifications.c.id)).scalars())
        hist = list(conn.execute(sa.select(schema.notification_history.c.id)).scalars())
    return live, hist


def test_sigkill_at_random_points_loses_and_duplicates_nothing(engine, database_url):
    archived, kept, tests = _seed(engine)
    rng = random.Random(20251123)
    ctx = multiprocessing.get_context("fork")
    killed_inside = ctx.Value("i", -1)
    progress, kinds = [], []
    for attempt in range(12):
        kind = ("inside", "between")[attempt % 2]
        process = ctx.Process(target=_archive_until_killed,
                              args=(database_url, kind, rng.randint(1, 5), killed_inside))
        process.start()
        process.join(timeout=60)
        assert process.exitcode == -signal.SIGKILL, "the run finished before its kill point"
        kinds.append(killed_inside.value)
        live, hist = _state(engine)
        assert len(set(live) & set(hist)) == 0  # a row is never in both tables after a crash
        assert set(hist) <= archived
        progress.append(len(hist))
    assert kinds.count(1) == 6 and kinds.count(0) == 6
    assert 0 < progress[-1] < len(archived)  # the kills landed mid-run
    with engine.connect() as conn:  # the rerun completes
        history.archive_notifications(conn, TODAY, batch_size=40, letter_batch_size=15)
    live, hist = _state(engine)
    assert len(hist) == len(set(hist)) and set(hist) == archived  # nothing lost, nothing duplicated
    assert set(live) == kept and not tests & (set(live) | set(hist))


def test_dropped_connection_is_retried_and_the_run_completes(engine, resources, monkeypatch):
    monkeypatch.setenv("PSO_NOW", "2024-07-10T03:00:00+00:00")
    old = datetime(2024, 6, 1, 12, tzinfo=UTC)
    rows = [notification(old + timedelta(minutes=i), service) for i in range(50) for service in (SERVICE_A, SERVICE_B)]
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.services), [{"id": SERVICE_A}, {"id": SERVICE_B}])
        conn.execute(sa.insert(schema.notifications), rows)
    killed = []
    blocker = engine.connect()
    # Hold service B's unit lock: A's unit completes, B's first batch waits, and we drop its connection.
    blocker.execute(sa.text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"),
                    {"k": f"notification_archive:{SERVICE_B}:email"})

    def drop_waiting_backend():
        with engine.connect() as conn:
            for _ in range(600):
                pids = conn.execute(sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalars().all()
                conn.commit()
                if pids:
                    conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})
                    conn.commit()
                    killed.append(pids[0])
                    break
                time.sleep(0.05)
        blocker.execute(sa.text("SELECT pg_advisory_unlock_all()"))
        blocker.commit()
        blocker.close()

    thread = threading.Thread(target=drop_waiting_backend)
    thread.start()
    result = materialize(history.assets, partition_key="2024-06-01", resources=resources,
                         selection=["notification_history"])
    thread.join()
    assert killed, "no archive batch was waiting on the unit lock"
    assert result.success
    restarts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]
    assert len(restarts) == 1
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM notification_history")).scalar_one()
        live = conn.execute(sa.text("SELECT count(*) FROM notifications")).scalar_one()
    assert (count, live) == (100, 0)
