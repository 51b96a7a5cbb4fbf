"""The shared sync-complete sensor: cursor over out-of-order finishes, one add request per key."""

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from dagster import AddDynamicPartitionsRequest

from sensors.cursors import HighWaterCursor
from sensors.sync_complete import fetch_finished_sync_runs, merge_partition_requests

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def _sync(conn, source, started, finished=None, replica_id=None):
    return conn.execute(
        sa.text("INSERT INTO sync_runs (source, replica_id, started_at, finished_at, all_succeeded) "
                "VALUES (:s, :r, :st, :f, true) RETURNING id"),
        {"s": source, "r": replica_id, "st": started, "f": finished},
    ).scalar_one()


def test_a_sync_that_finishes_after_a_later_one_is_still_handled_once(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO replica_state (replica_id) VALUES ('north')"))
        slow = _sync(conn, "replica", T0, replica_id="north")  # started first, still running
        fast = _sync(conn, "replica", T0 + timedelta(minutes=1), T0 + timedelta(minutes=2), replica_id="north")
    with engine.connect() as conn:
        first = fetch_finished_sync_runs(conn, HighWaterCursor())
    assert [r.id for r in first] == [fast]
    cursor = HighWaterCursor().advance([(r.id, r.finished_at) for r in first])

    with engine.begin() as conn:  # the slow one finishes a moment later, with an earlier id
        conn.execute(sa.text("UPDATE sync_runs SET finished_at = :f WHERE id = :i"),
                     {"f": T0 + timedelta(minutes=3), "i": slow})
    with engine.connect() as conn:
        second = fetch_finished_sync_runs(conn, cursor)
    assert [r.id for r in second] == [slow]
    cursor = cursor.advance([(r.id, r.finished_at) for r in second])
    with engine.connect() as conn:
        assert fetch_finished_sync_runs(conn, cursor) == []  # nothing is handled twice
    assert HighWaterCursor.parse(cursor.dump()) == cursor


def test_partition_requests_are_merged_and_deduplicated():
    merged = merge_partition_requests([
        AddDynamicPartitionsRequest("replicas", ["north"]),
        AddDynamicPartitionsRequest("renal_units", ["RAJ01"]),
        AddDynamicPartitionsRequest("replicas", ["north", "south"]),
    ])
    assert {(r.partitions_def_name, tuple(r.partition_keys)) for r in merged} == {
        ("replicas", ("north", "south")), ("renal_units", ("RAJ01",))}
