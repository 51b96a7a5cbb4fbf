"""`pso letters collate`, `pso letters archive-contact-list` and `pso prune` change data as Dagster runs of their family's job: in the
command's process when no daemon serves the instance, through the run queue when one does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance
from test_letters import AFTER_DEADLINE, add_letter, add_service, london, put_pdf

from assets.letters import object_exists, store_contact_list
from test_pruning_dagster import _replica

from orchestration.cli import main
from orchestration.cli.runs import daemon_is_running, open_instance
from orchestration.settings import PROJECT_ROOT, get_settings


def recorded_runs(instance: DagsterInstance) -> list[tuple]:
    return [(r.job_name, r.tags.get("dagster/partition"), r.tags.get("pso/cli"), r.status.value)
            for r in reversed(instance.get_runs())]


def test_letters_collate_is_a_run_of_the_collation_job(engine, settings, s3, dagster_storage, monkeypatch, capsys):
    monkeypatch.setenv("PSO_NOW", AFTER_DEADLINE.isoformat())
    with engine.connect() as conn:
        service = add_service(conn)
        for i in range(3):
            put_pdf(s3, settings, add_letter(conn, service, london(2026, 11, 20, 11, i)))

    assert main(["letters", "collate", "--print-date", "2026-11-20"]) == 0
    out = capsys.readouterr().out
    assert "no daemon is running" in out and "3 letters selected, 1 batch(es), 3 now sending" in out
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT notification_status, count(*) FROM notifications GROUP BY 1")).all()
    assert statuses == [("sending", 3)]

    instance = DagsterInstance.from_config(str(get_settings().dagster_home))
    try:
        assert recorded_runs(instance) == [("letter_collation", "2026-11-20", "letters collate", "SUCCESS")]
        event = instance.get_latest_materialization_event(AssetKey("letter_batches"))
        assert event.dagster_event.partition == "2026-11-20"
        assert event.asset_materialization.metadata["letters_sending"].value == 3
    finally:
        instance.dispose()


def test_letters_collate_reports_dagster_metadata(engine, settings, s3, dagster_storage, monkeypatch):
    monkeypatch.setenv("PSO_NOW", AFTER_DEADLINE.isoformat())
    with engine.connect() as conn:
        service = add_service(conn)
        put_pdf(s3, settings, add_letter(conn, service, london(2026, 11, 20, 11, 0)))
    assert main(["letters", "collate", "--print-date", "2026-11-20"]) == 0
    instance = DagsterInstance.from_config(str(get_settings().dagster_home))
    try:
        metadata = instance.get_latest_materialization_event(AssetKey("letter_batches")).asset_materialization.metadata
    finally:
        instance.dispose()
    bucket = settings.buckets.letter_batches
    assert metadata["dagster/table_name"].value == "public.letter_batches"
    assert metadata["dagster/row_count"].value == 1  # the print day's one batch
    assert metadata["dagster/uri"].value == f"s3://{bucket}/2026-11-20/"
    keys = [r.data["key"] for r in metadata["keys"].records]  # the zip and its manifest, both in S3
    assert len(keys) == 2 and keys[1] == keys[0] + ".manifest.json"
    assert all(object_exists(s3, bucket, key) for key in keys)
    volumes = [r.data for r in metadata["print_volumes"].records]  # a MetadataValue.table, not markdown
    assert {v["postage"]: v["letters"] for v in volumes if v["letters"]} == {"second": 1}
    assert all(v["sheets"] > 0 for v in volumes if v["letters"])


def test_archive_contact_list_is_a_run_of_its_job(engine, settings, s3, dagster_storage, capsys):
    bucket = settings.buckets.contact_lists
    with engine.connect() as conn:
        service = add_service(conn)
        list_id = store_contact_list(conn, s3, bucket, service, "addresses.csv", "letter",
                                     [["address_line_1", "postcode"], ["1 Test Street", "SW1A 1AA"]])
        key = conn.execute(sa.text("SELECT s3_key FROM service_contact_list WHERE id = :id"), {"id": list_id}).scalar()
    assert object_exists(s3, bucket, key)

    assert main(["letters", "archive-contact-list", str(list_id)]) == 0
    assert f"archived  contact list {list_id}" in capsys.readouterr().out
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT archived FROM service_contact_list WHERE id = :id"),
                            {"id": list_id}).scalar_one() is True
    assert not object_exists(s3, bucket, key)
    unknown = "00000000-0000-4000-8000-000000000000"
    assert main(["letters", "archive-contact-list", unknown]) == 1
    assert f"no such contact list: {unknown}" in capsys.readouterr().out
    assert main(["letters", "archive-contact-list", "not-a-uuid"]) == 2  # refused before any run

    instance = DagsterInstance.from_config(str(get_settings().dagster_home))
    try:
        assert recorded_runs(instance) == [("archive_contact_list", None, "letters archive-contact-list", "SUCCESS"),
                                           ("archive_contact_list", None, "letters archive-contact-list", "FAILURE")]
        event = instance.get_latest_materialization_event(AssetKey("contact_list_objects"))
        assert event.run_id == instance.get_runs()[-1].run_id
        metadata = event.asset_materialization.metadata
        assert metadata["list_id"].value == str(list_id)
        assert metadata["dagster/uri"].value == f"s3://{bucket}/{key}"
    finally:
        instance.dispose()


@pytest.fixture
def daemon(database_url, s3_env, dagster_storage):
    """A real `dagster-daemon` on the test instance (what `pso run` starts), stopped after the test."""
    instance = open_instance()  # writes DAGSTER_HOME/dagster.yaml and exports the endpoints
    env = {**os.environ, "DAGSTER_HOME": instance.root_directory}
    process = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
                                str(PROJECT_ROOT / "workspace.yaml")], env=env, cwd=PROJECT_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not daemon_is_running(instance):
            assert process.poll() is None and time.monotonic() < deadline, "the daemon did not start"
            time.sleep(1)
        yield instance
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        instance.dispose()


def test_prune_goes_through_the_run_queue_when_a_daemon_runs(engine, daemon, capsys):
    _replica(engine, "north", outside_patients=2)
    assert main(["prune", "north"]) == 0
    out = capsys.readouterr().out
    assert "submitted to the run queue" in out and "sync_group deleted 4 rows" in out
    run = daemon.get_runs()[0]
    assert (run.job_name, run.tags["dagster/partition"], run.status.value) == (
        "replica_sync_group_prune_job", "north", "SUCCESS")
    # Dequeued under the job's pool: the run is counted against `replica_prune`.
    assert run.run_op_concurrency is not None and "replica_prune" in run.run_op_concurrency.root_key_counts


def test_restore_hour_goes_through_the_run_queue_when_a_daemon_runs(engine, settings, s3, daemon, capsys):
    from datetime import datetime, timedelta, timezone

    from test_history import insert, notification

    from assets.history import deep_archive_notification_history
    from orchestration import schema

    hour = datetime(2024, 6, 1, 23, tzinfo=timezone.utc)  # 00:00 on 2 June in London (BST)
    row = {c: notification(hour + timedelta(minutes=1))[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}
    insert(engine, schema.notification_history, [row])
    with engine.connect() as conn:
        deep_archive_notification_history(conn, s3, settings.buckets.archive, datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert main(["restore-hour", "2024-06-01T23"]) == 0
    out = capsys.readouterr().out
    assert "submitted to the run queue" in out and "1 inserted" in out
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM notification_history")).scalar_one() == row["id"]
    run = daemon.get_runs()[0]
    assert (run.job_name, run.tags["dagster/partition"], run.status.value) == (
        "restore_notification_history_hour", "2024-06-02", "SUCCESS")
    assert run.run_op_concurrency is not None and "notification_archive" in run.run_op_concurrency.root_key_counts
    event = daemon.get_latest_materialization_event(AssetKey("notification_history"))
    assert (event.run_id, event.dagster_event.partition) == (run.run_id, "2024-06-02")
