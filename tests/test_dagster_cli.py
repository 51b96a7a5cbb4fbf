"""Dagster's storage URL works as the README writes it, and the `dagster` CLI reaches the project's
instance through `pso dagster …` with nothing exported by hand (issue 17, item 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, asset, define_asset_job

from orchestration.cli.environment import dagster_env
from orchestration.instance import write_instance_yaml
from orchestration.settings import PROJECT_ROOT, get_settings

PSO = Path(sys.executable).with_name("pso")


@asset
def probe() -> int:
    return 1


def plain_url(sqlalchemy_url: str) -> str:
    """The URL as a user writes it (README: `postgresql://…`), which SQLAlchemy 2.1 opens with psycopg 3."""
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


def materialize_probe(instance: DagsterInstance) -> None:
    job = Definitions(assets=[probe], jobs=[define_asset_job("probe_job", [probe])]).resolve_job_def("probe_job")
    result = job.execute_in_process(instance=instance)
    assert result.success


@pytest.fixture
def dagster_storage(empty_database_url, database_url, s3_env, set_env, tmp_path) -> str:
    """A fresh database for Dagster's storage, given as a plain `postgresql://` URL; the service
    database and S3 are the tests' own, so nothing embedded is started."""
    set_env("PSO_DATA_DIR", str(tmp_path / "data"))
    set_env("PSO_DAGSTER_STORAGE_URL", plain_url(empty_database_url))
    set_env("PSO_AUTOMATION", None)
    return plain_url(empty_database_url)


def test_instance_on_a_plain_postgresql_url_records_runs(dagster_storage, monkeypatch):
    env = dagster_env(get_settings())
    home = env["DAGSTER_HOME"]
    assert os.environ["PSO_DAGSTER_STORAGE_URL"] == "postgresql+psycopg2://" + dagster_storage.split("://", 1)[1]
    instance = DagsterInstance.from_config(home)
    try:
        materialize_probe(instance)  # stores events: the NOTIFY that psycopg 3 refuses
        event = instance.get_latest_materialization_event(AssetKey("probe"))
        assert event is not None and event.dagster_event.asset_key == AssetKey("probe")
        assert len(instance.get_runs()) == 1
    finally:
        instance.dispose()


def test_the_url_as_written_fails_without_the_rewrite(dagster_storage, monkeypatch, tmp_path):
    """The control: Dagster reading the plain URL itself fails as the issue reports."""
    monkeypatch.setenv("PSO_DAGSTER_STORAGE_URL", dagster_storage)
    home = tmp_path / "raw_home"
    write_instance_yaml(home)
    with pytest.raises(Exception, match=r"(?s)syntax error.*NOTIFY|NOTIFY.*syntax error"):
        instance = DagsterInstance.from_config(str(home))
        try:
            materialize_probe(instance)
        finally:
            instance.dispose()


def test_default_storage_is_a_database_of_its_own_beside_the_service_database(database_url, s3_env, set_env,
                                                                             pg_admin_url, tmp_path):
    """PSO_DATABASE_URL alone: Dagster's tables go to database `dagster` on that server, created when missing
    (in the service database, Dagster's migrations would read the project's alembic_version and fail)."""
    import psycopg

    from orchestration.cli.runs import open_instance

    set_env("PSO_DATA_DIR", str(tmp_path / "data"))
    set_env("PSO_DAGSTER_STORAGE_URL", None)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "dagster" WITH (FORCE)')
    try:
        from orchestration.cli.environment import export_env

        export_env(get_settings())  # as `pso run` does before it opens the instance
        instance = open_instance()
        try:
            materialize_probe(instance)
            assert instance.get_latest_materialization_event(AssetKey("probe")) is not None
        finally:
            instance.dispose()
        with psycopg.connect(pg_admin_url.rsplit("/", 1)[0] + "/dagster") as conn:
            assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS "dagster" WITH (FORCE)')


def pso(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(PSO), *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_pso_dagster_runs_the_dagster_cli_on_the_projects_instance(dagster_storage):
    """Nothing exported by hand: `pso dagster` sets DAGSTER_HOME, the endpoints and the storage URL."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    info = pso("dagster", "instance", "info", env=env)
    assert info.returncode == 0, info.stdout[-2000:] + info.stderr[-2000:]
    home = get_settings().dagster_home
    assert f"$DAGSTER_HOME: {home}" in info.stdout
    assert "Instance configuration" in info.stdout and "schedule_storage" in info.stdout  # storage reached

    # Dagster's own view of the schedules on this instance: every one is running, with nothing toggled.
    schedules = pso("dagster", "schedule", "list", "-w", str(PROJECT_ROOT / "workspace.yaml"), env=env)
    assert schedules.returncode == 0, schedules.stdout[-2000:] + schedules.stderr[-2000:]
    listed = [line for line in schedules.stdout.splitlines() if line.startswith("Schedule: ")]
    from orchestration.definitions import defs

    assert len(listed) == len(defs.get_repository_def().schedule_defs) > 0
    assert all(line.endswith("[RUNNING]") for line in listed), listed

    # A real run through the plain dagster CLI: a project asset, materialized against the test database,
    # recorded in the storage the user gave as postgresql://.
    run = pso("dagster", "asset", "materialize", "-m", "orchestration.definitions", "--select",
              "returned_letter_summary", env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    instance = DagsterInstance.from_config(str(home))
    try:
        event = instance.get_latest_materialization_event(AssetKey("returned_letter_summary"))
        assert event is not None
        assert instance.get_run_by_id(event.run_id).is_success
    finally:
        instance.dispose()
