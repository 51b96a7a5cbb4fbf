import pytest

from orchestration.settings import SettingsError, load_settings


def test_defaults_use_the_embedded_services(tmp_path):
    settings = load_settings({"PSO_DATA_DIR": str(tmp_path)})
    assert settings.embedded and settings.embedded_s3
    assert settings.database_url == "postgresql+psycopg://postgres@127.0.0.1:54329/pso"
    assert settings.dagster_storage_url.startswith("postgresql+psycopg2://")
    assert settings.s3_endpoint == "http://127.0.0.1:18333"
    assert settings.buckets.archive == "pso-archive"
    assert settings.data_dir == tmp_path


def test_configured_database_gets_the_right_drivers():
    settings = load_settings({"PSO_DATABASE_URL": "postgresql://app:pw@db.internal:5432/service"})
    assert not settings.embedded
    assert settings.database_url == "postgresql+psycopg://app:pw@db.internal:5432/service"
    # dagster-postgres needs psycopg2 even though SQLAlchemy 2.1 maps postgresql:// to psycopg 3
    assert settings.dagster_storage_url == "postgresql+psycopg2://app:pw@db.internal:5432/service"
    # Dagster's own tables go to a database of their own on that server (they clash with the schema's).
    assert settings.dagster_storage_url_for_instance == "postgresql+psycopg2://app:pw@db.internal:5432/dagster"
    with_params = load_settings({"PSO_DATABASE_URL": "postgresql://app:p%40ss@db:5432/service?sslmode=require"})
    assert with_params.dagster_storage_url_for_instance == "postgresql+psycopg2://app:p%40ss@db:5432/dagster?sslmode=require"


@pytest.mark.parametrize("written", [
    "postgresql://orchestrator:pw@db.internal:5432/dagster",
    "postgresql+psycopg://orchestrator:pw@db.internal:5432/dagster",
    "postgresql+psycopg2://orchestrator:pw@db.internal:5432/dagster",
])
def test_dagster_storage_url_gets_psycopg2_however_it_is_written(written):
    """README's "existing Postgres" example writes postgresql://; dagster-postgres needs psycopg2."""
    settings = load_settings({"PSO_DATABASE_URL": "postgresql://app:pw@db.internal:5432/service",
                              "PSO_DAGSTER_STORAGE_URL": written})
    assert settings.dagster_storage_url_for_instance == "postgresql+psycopg2://orchestrator:pw@db.internal:5432/dagster"


def test_aws_itself_when_asked():
    """PSO_S3_USE_AWS: no embedded S3 and no endpoint (boto3's default), read from the given environment."""
    settings = load_settings({"PSO_S3_USE_AWS": "1"})
    assert not settings.embedded_s3 and settings.s3_endpoint is None
    assert load_settings({"PSO_S3_USE_AWS": ""}).embedded_s3


def test_automation_is_on_unless_paused():
    assert load_settings({}).automation_paused is False
    assert load_settings({"PSO_AUTOMATION": "on"}).automation_paused is False
    assert load_settings({"PSO_AUTOMATION": "Paused"}).automation_paused is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PSO_DATABASE_URL", "mysql://root@localhost/x"),
        ("PSO_PG_PORT", "fifty"),
        ("PSO_PG_PORT", "70000"),
        ("PSO_S3_ENDPOINT_URL", "127.0.0.1:8333"),
        ("PSO_BUCKET_ARCHIVE", "Not_A_Bucket"),
        ("PSO_DB_POOL_SIZE", "0"),
        ("PSO_STATUS_REFRESH_WORKERS", "two"),
        ("PSO_STATUS_REFRESH_WORKERS", "0"),
        ("PSO_ALERT_WEBHOOK_URL", "ftp://example"),
        ("PSO_DAGSTER_STORAGE_URL", "sqlite:///dagster.db"),
        ("PSO_AUTOMATION", "off"),
    ],
)
def test_a_malformed_value_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_status_refresh_workers_fit_in_the_connection_pool():
    assert load_settings({}).status_refresh_workers == 2
    assert load_settings({"PSO_DB_POOL_SIZE": "2"}).status_refresh_workers == 1
    assert load_settings({"PSO_STATUS_REFRESH_WORKERS": "4", "PSO_DB_POOL_SIZE": "5"}).status_refresh_workers == 4
    # Each worker holds a connection, and the refresh's coordinator one more.
    with pytest.raises(SettingsError, match="PSO_STATUS_REFRESH_WORKERS.*PSO_DB_POOL_SIZE"):
        load_settings({"PSO_STATUS_REFRESH_WORKERS": "5", "PSO_DB_POOL_SIZE": "5"})


def test_credentials_must_come_in_pairs():
    with pytest.raises(SettingsError, match="PSO_S3_SECRET_ACCESS_KEY"):
        load_settings({"PSO_S3_ACCESS_KEY_ID": "AKIA"})


def test_cli_reports_a_malformed_setting_and_exits_2(monkeypatch, capsys):
    from orchestration import settings as settings_module
    from orchestration.cli import main

    monkeypatch.setenv("PSO_PG_PORT", "not-a-port")
    settings_module.get_settings.cache_clear()
    try:
        assert main(["services", "status"]) == 2
    finally:
        settings_module.get_settings.cache_clear()
    assert "PSO_PG_PORT" in capsys.readouterr().err
