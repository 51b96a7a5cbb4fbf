"""History archives through Dagster: partitioned materializations, checks, schedules, generator, CLI."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa
from dagster import DagsterInstance, build_schedule_context, materialize

from assets import history
from orchestration import schema
from orchestration.clock import london_midnight_utc
from schedules import history as history_schedules
from tests.s3_helpers import stored_keys
from tests.test_history import SERVICE_A, SERVICE_B, insert, notification

UTC = timezone.utc
MICROSECOND = timedelta(microseconds=1)


def _seed(engine):
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.services), [{"id": SERVICE_A}, {"id": SERVICE_B}])
    day = datetime(2026, 11, 1, 12, tzinfo=UTC)
    rows = [notification(day), notification(day, key_type="test"), notification(day, SERVICE_B, "sms"),
            notification(day - timedelta(days=1)),  # another partition
            notification(day, notification_type="letter", status="created")]
    insert(engine, schema.notifications, rows)
    return rows


def test_materialize_partition_archives_that_day_and_passes_checks(engine, resources, monkeypatch):
    monkeypatch.setenv("PSO_NOW", "2026-11-23T03:00:00+00:00")
    rows = _seed(engine)
    assets = [*history.assets, *history.asset_checks]
    result = materialize(assets, partition_key="2026-11-01", resources=resources,
                         selection=["notification_history"])
    assert result.success
    meta = result.asset_materializations_for_node("notification_history")[0].metadata
    assert (meta["archived"].value, meta["test_key_deleted"].value) == (2, 1)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"conservation": True, "notification_history_has_no_pii": True,
                      "no_pending_letter_archived": True, "notification_bad_input": True}
    with engine.connect() as conn:
        archived = set(conn.execute(sa.select(schema.notification_history.c.id)).scalars())
    assert archived == {rows[0]["id"], rows[2]["id"]}
    again = materialize(assets, partition_key="2026-11-01", resources=resources, selection=["notification_history"])
    assert again.asset_materializations_for_node("notification_history")[0].metadata["archived"].value == 0


def test_checks_fail_when_pending_letter_is_in_history(engine, resources, monkeypatch):
    monkeypatch.setenv("PSO_NOW", "2026-11-23T03:00:00+00:00")
    pending = notification(datetime(2026, 10, 1, tzinfo=UTC), notification_type="letter", status="created")
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.services), [{"id": SERVICE_A}])
        conn.execute(sa.insert(schema.notification_history),
                     [{c: pending[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}])
    result = materialize([*history.assets, *history.asset_checks], partition_key="2026-11-01",
                         resources=resources, selection=["notification_history"], raise_on_error=False)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["no_pending_letter_archived"].passed is False
    assert str(pending["id"]) in str(evaluations["no_pending_letter_archived"].metadata)


def test_inbound_facts_and_deep_archive_assets(engine, resources, monkeypatch, s3, settings):
    monkeypatch.setenv("PSO_NOW", "2026-11-23T03:00:00+00:00")
    _seed(engine)
    old = {c: notification(datetime(2025, 11, 1, 10, tzinfo=UTC))[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}
    insert(engine, schema.notification_history, [old])
    insert(engine, schema.inbound_sms, [{"id": uuid.uuid4(), "service_id": SERVICE_A,
                                         "created_at": datetime(2026, 11, 1, tzinfo=UTC), "notify_number": "1",
                                         "user_number": "07700900999", "content": "hi", "provider": "mmg"}])
    result = materialize([*history.assets], partition_key="2026-11-01", resources=resources,
                         selection=["inbound_sms_history", "ft_notification_status"])
    assert result.success
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM inbound_sms_history")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT sum(notification_count) FROM ft_notification_status "
                                    "WHERE bst_date = '2026-11-01'")).scalar_one() == 3
    deep = materialize([*history.assets], partition_key="2025-11-01", resources=resources,
                       selection=["notification_history_deep_archive"])
    deep_metadata = deep.asset_materializations_for_node("notification_history_deep_archive")[0].metadata
    assert deep_metadata["rows"].value == 1
    [(_, key)] = stored_keys(s3, settings.buckets.archive)
    assert key.startswith("notification_history/created_at_date_hour=2025-11-01T10/")
    # Dagster's own keys: the prefix's URI, and the run's objects as a table (no markdown).
    assert deep_metadata["dagster/uri"].value == f"s3://{settings.buckets.archive}/notification_history/"
    assert [r.data["key"] for r in deep_metadata["keys"].records] == [key]
    facts = result.asset_materializations_for_node("ft_notification_status")[0].metadata
    assert facts["dagster/table_name"].value == "public.ft_notification_status"
    with engine.connect() as conn:
        assert facts["dagster/row_count"].value == conn.execute(sa.text(
            "SELECT count(*) FROM ft_notification_status WHERE bst_date = '2026-11-01'")).scalar_one() > 0


def test_schedules_request_ranges_at_upstream_times():
    by_name = {s.name: s for s in history_schedules.schedules}
    assert {n: (s.cron_schedule, s.execution_timezone) for n, s in by_name.items()} == {
        "ft_notification_status_nightly": ("30 0 * * *", "UTC"),
        "notification_history_deep_archive_nightly": ("35 1 * * *", "UTC"),
        "inbound_sms_archive_nightly": ("40 1 * * *", "UTC"),
        "notification_archive_nightly": ("0 3 * * *", "UTC"),
    }
    instance = DagsterInstance.ephemeral()
    when = datetime(2026, 7, 10, 0, 30, tzinfo=UTC)  # 01:30 London: London date 10 July
    facts = by_name["ft_notification_status_nightly"].evaluate_tick(
        build_schedule_context(instance=instance, scheduled_execution_time=when)).run_requests
    ranges = {tuple(r.run_config["ops"]["ft_notification_status"]["config"]["notification_types"]):
              (r.tags[history_schedules.RANGE_START], r.tags[history_schedules.RANGE_END]) for r in facts}
    assert ranges == {("email", "sms"): ("2026-07-06", "2026-07-09"), ("letter",): ("2026-06-30", "2026-07-09")}
    archive = by_name["notification_archive_nightly"].evaluate_tick(
        build_schedule_context(instance=instance, scheduled_execution_time=when.replace(hour=3))).run_requests[0]
    assert archive.tags[history_schedules.RANGE_END] == "2026-07-09"
    assert archive.run_key == "notification_archive:2026-07-10"
    deep = by_name["notification_history_deep_archive_nightly"].evaluate_tick(
        build_schedule_context(instance=instance, scheduled_execution_time=when.replace(hour=1, minute=35))
    ).run_requests[0]
    # The limit is 2025-07-10T01:00Z (02:00 London): the window's last day is the one holding it.
    assert (deep.tags[history_schedules.RANGE_START], deep.tags[history_schedules.RANGE_END]) == \
        ("2025-07-01", "2025-07-10")


def test_the_0135_run_archives_every_hour_up_to_the_limit(engine, resources, monkeypatch):
    tick = datetime(2026, 7, 10, 1, 35, tzinfo=UTC)
    limit = datetime(2025, 7, 10, 1, tzinfo=UTC)  # now − 365 d down to the hour: 02:00 London on 10 July 2025
    monkeypatch.setenv("PSO_NOW", tick.isoformat())
    instance = DagsterInstance.ephemeral()
    schedule = next(s for s in history_schedules.schedules if s.name == "notification_history_deep_archive_nightly")
    request = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=tick)
                                     ).run_requests[0]
    assert not request.run_config  # the run keeps the default cap of 240 hours
    assert history.DeepArchiveConfig().max_hours == 240
    window_start = london_midnight_utc(date.fromisoformat(request.tags[history_schedules.RANGE_START]))
    created = {
        "before_the_window": window_start - MICROSECOND,  # older: a backfill from the UI reaches it
        "first_hour": window_start,
        "last_whole_day": limit - timedelta(hours=2, minutes=1),  # 22:59Z on 9 July: 23:59 London
        "limit_day_first_hour": limit - timedelta(hours=2),  # 23:00Z: 00:00 London on 10 July
        "just_before_the_limit": limit - MICROSECOND,
        "on_the_limit": limit,
        "hour_not_whole": limit + timedelta(minutes=30),  # older than 365 days, but its hour is not whole
    }
    rows = {name: {c: notification(at)[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}
            for name, at in created.items()}
    insert(engine, schema.notification_history, list(rows.values()))
    result = materialize(history.assets, resources=resources, instance=instance, tags=request.tags,
                         selection=["notification_history_deep_archive"])
    assert result.success
    with engine.connect() as conn:
        left = set(conn.execute(sa.select(schema.notification_history.c.id)).scalars())
    assert left == {rows[n]["id"] for n in ("before_the_window", "on_the_limit", "hour_not_whole")}
    meta = result.asset_materializations_for_node("notification_history_deep_archive")[0].metadata
    assert (meta["rows"].value, meta["hours"].value) == (4, 4)
    assert meta["limit"].value == limit.isoformat()


def test_a_run_moves_at_most_240_hours(engine, resources, monkeypatch):
    monkeypatch.setenv("PSO_NOW", "2026-07-10T01:35:00+00:00")
    start = datetime(2025, 6, 1, 0, 30, tzinfo=UTC)
    rows = [{c: notification(start + timedelta(hours=i))[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}
            for i in range(241)]
    insert(engine, schema.notification_history, rows)
    result = materialize(history.assets, resources=resources, instance=DagsterInstance.ephemeral(),
                         tags={history_schedules.RANGE_START: "2025-06-01", history_schedules.RANGE_END: "2025-06-11"},
                         selection=["notification_history_deep_archive"])
    meta = result.asset_materializations_for_node("notification_history_deep_archive")[0].metadata
    assert (meta["hours"].value, meta["rows"].value) == (240, 240)
    with engine.connect() as conn:
        left = set(conn.execute(sa.select(schema.notification_history.c.id)).scalars())
    assert left == {rows[-1]["id"]}  # the newest hour waits for the next night


def test_generator_loads_every_kind_of_row(database_url, settings, s3):
    from orchestration.synthetic import seed_all

    now = datetime(2026, 11, 23, 9, tzinfo=UTC)
    seed_all(database_url, scale=0.2, s3=s3, settings=settings, now=now,
             families=["orchestration.synthetic.notifications"], echo=lambda *_: None)
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        combos = conn.execute(sa.text("SELECT DISTINCT notification_type, key_type FROM notifications")).all()
        statuses = set(conn.execute(sa.text("SELECT DISTINCT notification_status FROM notifications")).scalars())
        span = conn.execute(sa.text("SELECT max(created_at) - min(created_at) FROM notifications")).scalar_one()
        retention = set(conn.execute(sa.text("SELECT days_of_retention FROM service_data_retention")).scalars())
        old = conn.execute(sa.text("SELECT count(*) FROM notification_history "
                                   "WHERE created_at < :t"), {"t": now - timedelta(days=365)}).scalar_one()
        inbound = conn.execute(sa.text("SELECT count(*) FROM inbound_sms")).scalar_one()
        emails = conn.execute(sa.text("""SELECT count(*) FROM notifications WHERE notification_type = 'email'
                                         AND "to" NOT LIKE '%@example.com'""")).scalar_one()
    engine.dispose()
    assert len(combos) == 9 and len(statuses) >= 12 and span > timedelta(days=40)
    assert {3, 30} <= retention and old > 0 and inbound > 0 and emails == 0
    pdfs = len(stored_keys(s3, settings.buckets.letters_pdf, settings.buckets.invalid_pdf,
                           settings.buckets.test_letters))
    assert 0 < pdfs <= 30
    with sa.create_engine(database_url).connect() as conn:
        result = history.archive_notifications(conn, date(2026, 11, 23), s3=s3, buckets=settings.buckets)
    assert result.pdfs.deleted == pdfs and result.pdfs.errors == 0


def test_restore_hour_cli_parses_hours():
    import argparse

    import pytest

    from orchestration.cli.families import parse_hour

    assert parse_hour("2025-01-02T03") == datetime(2025, 1, 2, 3, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_hour("2025-01-02 03:00")


def test_pso_restore_hour_command(engine, settings, s3, dagster_storage, capsys):
    from dagster import AssetKey, DagsterInstance

    from orchestration.cli import main
    from orchestration.settings import get_settings

    hour = datetime(2024, 3, 5, 7, tzinfo=UTC)
    row = {c: notification(hour + timedelta(minutes=5))[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}
    insert(engine, schema.notification_history, [row])
    with engine.connect() as conn:
        history.deep_archive_notification_history(conn, s3, settings.buckets.archive, datetime(2026, 1, 1, tzinfo=UTC))
        assert conn.execute(sa.text("SELECT count(*) FROM notification_history")).scalar_one() == 0
    assert main(["restore-hour", "2024-03-05T07"]) == 0
    out = capsys.readouterr().out
    assert "no daemon is running" in out and "1 inserted" in out
    with engine.connect() as conn:
        restored = conn.execute(sa.select(schema.notification_history)).mappings().one()
    assert dict(restored) == row
    assert main(["restore-hour", "2024-03-05T08"]) == 1  # nothing archived for that hour: the run fails
    assert "nothing deep-archived for hour 2024-03-05T08" in capsys.readouterr().out
    # Each command is a run of the restore job, on the hour's London day, that materialized that partition.
    instance = DagsterInstance.from_config(str(get_settings().dagster_home))
    try:
        runs = [(r.job_name, r.tags.get("dagster/partition"), r.tags.get("pso/cli"), r.status.value)
                for r in reversed(instance.get_runs())]
        assert runs == [("restore_notification_history_hour", "2024-03-05", "restore-hour", "SUCCESS"),
                        ("restore_notification_history_hour", "2024-03-05", "restore-hour", "FAILURE")]
        event = instance.get_latest_materialization_event(AssetKey("notification_history"))
        assert event.run_id == instance.get_runs()[-1].run_id
        assert event.dagster_event.partition == "2024-03-05"
        metadata = event.asset_materialization.metadata
        assert (metadata["inserted"].value, metadata["hour"].value) == (1, "2024-03-05T07")
        assert metadata["dagster/uri"].value == (f"s3://{settings.buckets.archive}/notification_history/"
                                                 "created_at_date_hour=2024-03-05T07/")
    finally:
        instance.dispose()
