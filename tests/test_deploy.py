"""The production instance configs load under Dagster's own validation, with the limits we promise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer

from orchestration.instance import write_instance_yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

PRODUCTION_ENV = {
    "DAGSTER_PG_HOST": "dagster-db.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_K8S_NAMESPACE": "pso",
    "DAGSTER_K8S_JOB_IMAGE": "registry.example.org/public-service-orchestration:0.1.0",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
    "PSO_DAGSTER_STORAGE_URL": "postgresql+psycopg2://dagster:secret@127.0.0.1:5432/dagster",
}

CONFIGURABLE_SECTIONS = ("storage", "run_coordinator", "run_launcher")


def load_instance_config(path: Path, tmp_path: Path) -> dict:
    """Validate `path` as `dagster.yaml` the way DagsterInstance does, then validate (and resolve
    env vars in) the config of each pluggable class against that class's own schema."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(path, home / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(home))
    assert custom_class is None
    resolved = dict(config)
    for section in CONFIGURABLE_SECTIONS:
        value = config.get(section)
        if not value or "module" not in value:
            continue
        cls = class_from_code_pointer(value["module"], value["class"])
        result = process_config(cls.config_type(), value.get("config") or {})
        if not result.success:
            raise DagsterInvalidConfigError(f"invalid {section} config in {path}", result.errors, value)
        resolved[section] = {**value, "config": result.value}
    if "postgres" in config.get("storage", {}):
        from dagster_postgres import DagsterPostgresStorage

        result = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
        if not result.success:
            raise DagsterInvalidConfigError(f"invalid postgres storage in {path}", result.errors, config["storage"])
        resolved["storage"] = {"postgres": result.value}
    return resolved


def run_limits(config: dict) -> tuple[int, dict[str, int]]:
    """(max_concurrent_runs, {tag key: limit}) wherever the config puts them."""
    runs = config.get("concurrency", {}).get("runs") or config.get("run_coordinator", {}).get("config", {})
    return runs["max_concurrent_runs"], {limit["key"]: limit["limit"] for limit in runs["tag_concurrency_limits"]}


@pytest.fixture
def production_env(monkeypatch):
    for key, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(key, value)


def test_production_instance_validates_with_limits(production_env, tmp_path):
    config = load_instance_config(DEPLOY / "dagster.yaml", tmp_path)

    db = config["storage"]["postgres"]["postgres_db"]
    # Env vars resolved, so the secrets live only in the environment.
    assert db["hostname"] == "dagster-db.internal" and db["password"] == "not-a-real-password"
    raw = (DEPLOY / "dagster.yaml").read_text()
    assert "not-a-real-password" not in raw and "password: {env: DAGSTER_PG_PASSWORD}" in raw

    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    max_runs, limits = run_limits(config)
    assert 1 <= limits["dagster/backfill"] < max_runs

    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert launcher["config"]["job_namespace"] == "pso"
    assert launcher["config"]["job_image"].startswith("registry.example.org/")

    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] >= 1
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] and monitoring["max_runtime_seconds"] > 0
    assert monitoring["free_slots_after_run_end_seconds"] > 0
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_every_instance_gives_dagster_postgres_the_psycopg2_driver(production_env, tmp_path):
    """SQLAlchemy 2.1 opens `postgresql://` with psycopg 3, which dagster-postgres cannot use (`NOTIFY
    run_events, $1` fails): each instance config must end up with a psycopg2 URL."""
    from dagster_postgres.utils import pg_url_from_config

    production = load_instance_config(DEPLOY / "dagster.yaml", tmp_path)["storage"]["postgres"]
    assert pg_url_from_config(production).startswith("postgresql+psycopg2://dagster:not-a-real-password@")
    celery = load_instance_config(DEPLOY / "celery" / "dagster.yaml", tmp_path)["storage"]["postgres"]
    assert pg_url_from_config(celery).startswith("postgresql+psycopg2://")
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"


def test_deploy_leaves_automation_on():
    """Nothing in deploy/ stops the schedules and sensors: the code location's environment keeps
    PSO_AUTOMATION on (paused is the documented opt-in for a first deployment)."""
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    env = {e["name"]: e["value"] for e in values["dagster-user-deployments"]["deployments"][0]["env"]}
    assert env["PSO_AUTOMATION"] == "on"
    for path in DEPLOY.rglob("*.yaml"):
        settings = yaml.safe_dump(yaml.safe_load(path.read_text()))  # without the comments
        assert "STOPPED" not in settings and "paused" not in settings, path


def test_validation_rejects_a_broken_config(production_env, tmp_path):
    """The loader is not a rubber stamp: a typo in a limit is refused."""
    broken = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    broken["concurrency"]["runs"]["max_concurrent_runz"] = 3
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError):
        load_instance_config(path, tmp_path)
    broken = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    broken["run_monitoring"]["max_runtime_seconds"] = "six hours"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError):
        load_instance_config(path, tmp_path)


def test_production_instance_needs_its_env_vars(tmp_path, monkeypatch):
    for key in PRODUCTION_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DagsterInvalidConfigError):
        load_instance_config(DEPLOY / "dagster.yaml", tmp_path)


def test_celery_instance_validates(production_env, tmp_path):
    config = load_instance_config(DEPLOY / "celery" / "dagster.yaml", tmp_path)
    assert config["storage"]["postgres"]["postgres_url"].startswith("postgresql+psycopg2://")
    max_runs, limits = run_limits(config)
    assert 1 <= limits["dagster/backfill"] < max_runs


def test_celery_worker_config_is_valid():
    from dagster_celery.cli import get_validated_config

    config = get_validated_config(str(DEPLOY / "celery" / "celery_config.yaml"))
    assert config["broker"] == "redis://127.0.0.1:6379/0"
    assert config["backend"].startswith("redis://127.0.0.1:6379/")


def test_local_instance_yaml_validates(production_env, tmp_path):
    written = write_instance_yaml(tmp_path / "local")
    config = load_instance_config(written, tmp_path)
    assert config["storage"]["postgres"]["postgres_url"] == PRODUCTION_ENV["PSO_DAGSTER_STORAGE_URL"]
    max_runs, limits = run_limits(config)
    assert 1 <= limits["dagster/backfill"] <= max_runs
    assert config["run_monitoring"]["max_runtime_seconds"] > 0


def test_helm_values_name_the_code_location_and_secrets():
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == "orchestration.definitions"
    assert {s["name"] for s in deployment["envSecrets"]} >= {"pso-database", "pso-s3"}
    assert values["postgresql"]["enabled"] is False  # external Postgres
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert any(limit["key"] == "dagster/backfill" for limit in queued["tagConcurrencyLimits"])
    assert values["dagsterDaemon"]["runMonitoring"]["maxRuntimeSeconds"] > 0
    # No credential in the committed values.
    text = (DEPLOY / "helm-values.yaml").read_text().lower()
    assert "password:" not in text and "secret_access_key:" not in text
