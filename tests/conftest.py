"""Test fixtures: one real PostgreSQL and one real S3 endpoint per test session.

By default both are the embedded servers, started in a temporary folder on free ports.
Set PSO_TEST_DATABASE_URL (an admin URL to an existing server) and/or PSO_TEST_S3_ENDPOINT_URL
(+ PSO_TEST_S3_ACCESS_KEY_ID / PSO_TEST_S3_SECRET_ACCESS_KEY) to use existing ones instead.

Isolation: each test gets its own database, cloned from a migrated template (fast), and its
own bucket prefix.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from orchestration import settings as settings_module
from orchestration.services import EmbeddedPostgres, EmbeddedS3, free_port_block
from orchestration.settings import load_settings

_counter = itertools.count()


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory) -> str:
    """libpq URL of a server where tests may create databases."""
    configured = os.environ.get("PSO_TEST_DATABASE_URL")
    if configured:
        yield configured.replace("postgresql+psycopg://", "postgresql://")
        return
    # Not under pytest's tmp folder: pytest resets /tmp/pytest-of-<user> to mode 0700 whenever any
    # session starts, which would lock the unprivileged Postgres user out of its own data directory.
    data_dir = Path(tempfile.mkdtemp(prefix="pso-test-postgres-"))
    # A random start keeps parallel test sessions on one machine off each other's ports.
    server = EmbeddedPostgres(data_dir, free_port_block(1, start=random.randint(25000, 29000)))
    server.start()
    try:
        yield f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _sqlalchemy_url(admin_url: str, database: str) -> str:
    base = admin_url.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+psycopg://", 1) + f"/{database}"


@pytest.fixture(scope="session")
def template_database(pg_admin_url) -> str:
    """A database migrated to head once per session; tests clone it."""
    from orchestration.migrate import upgrade

    name = f"pso_template_{uuid.uuid4().hex[:8]}"
    with _admin(pg_admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(_sqlalchemy_url(pg_admin_url, name))
    yield name
    with _admin(pg_admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_database(pg_admin_url: str, template: str | None) -> str:
    name = f"pso_test_{os.getpid()}_{next(_counter)}"
    with _admin(pg_admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def _drop_database(pg_admin_url: str, name: str) -> None:
    from resources.postgres import _engines

    for key, engine in list(_engines.items()):
        if key[0].endswith(f"/{name}"):
            engine.dispose()
            _engines.pop(key, None)
    with _admin(pg_admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(pg_admin_url) -> str:
    """SQLAlchemy URL of a fresh, empty database."""
    name = _fresh_database(pg_admin_url, None)
    yield _sqlalchemy_url(pg_admin_url, name)
    _drop_database(pg_admin_url, name)


@pytest.fixture
def database_url(pg_admin_url, template_database, monkeypatch) -> str:
    """SQLAlchemy URL of a fresh database migrated to head; also exported as PSO_DATABASE_URL."""
    name = _fresh_database(pg_admin_url, template_database)
    url = _sqlalchemy_url(pg_admin_url, name)
    monkeypatch.setenv("PSO_DATABASE_URL", url)
    settings_module.get_settings.cache_clear()
    yield url
    settings_module.get_settings.cache_clear()
    _drop_database(pg_admin_url, name)


@pytest.fixture
def set_env(monkeypatch):
    """`set_env(NAME, value)` sets (None: unsets) an environment variable for one test and makes the
    settings object read it again."""
    def set_(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        settings_module.get_settings.cache_clear()

    yield set_
    settings_module.get_settings.cache_clear()


@pytest.fixture
def dagster_storage(empty_database_url, set_env, monkeypatch, tmp_path) -> str:
    """For `pso` commands that run Dagster jobs: the instance's storage in a database of its own (given as
    a user would write it, `postgresql://…`) and its DAGSTER_HOME under tmp_path."""
    set_env("PSO_DATA_DIR", str(tmp_path / "pso"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "pso" / "dagster_home"))  # restored after the test
    url = "postgresql://" + empty_database_url.split("://", 1)[1]
    set_env("PSO_DAGSTER_STORAGE_URL", url)
    return url


@pytest.fixture
def engine(database_url) -> sa.Engine:
    engine = sa.create_engine(database_url, connect_args={"prepare_threshold": None})
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> dict:
    """Endpoint and credentials of a real S3 server for this session."""
    configured = os.environ.get("PSO_TEST_S3_ENDPOINT_URL")
    if configured:
        yield {"endpoint": configured, "key": os.environ["PSO_TEST_S3_ACCESS_KEY_ID"],
               "secret": os.environ["PSO_TEST_S3_SECRET_ACCESS_KEY"]}
        return
    data_dir = Path(tempfile.mkdtemp(prefix="pso-test-s3-"))
    server = EmbeddedS3(data_dir, free_port_block(10, start=random.randint(30000, 34000)))
    server.start()
    key, secret = server.credentials()
    try:
        yield {"endpoint": server.endpoint, "key": key, "secret": secret}
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict:
    """Points the process environment at the test S3 with a bucket prefix of this test's own."""
    prefix = f"t{os.getpid()}-{next(_counter)}"
    monkeypatch.setenv("PSO_S3_ENDPOINT_URL", s3_server["endpoint"])
    monkeypatch.setenv("PSO_S3_ACCESS_KEY_ID", s3_server["key"])
    monkeypatch.setenv("PSO_S3_SECRET_ACCESS_KEY", s3_server["secret"])
    monkeypatch.setenv("PSO_S3_REGION", "us-east-1")
    monkeypatch.setenv("PSO_BUCKET_PREFIX", prefix)
    settings_module.get_settings.cache_clear()
    yield s3_server
    settings_module.get_settings.cache_clear()


@pytest.fixture
def settings(database_url, s3_env):
    """Settings for a test that uses both the database and S3 (buckets created)."""
    loaded = load_settings()
    loaded.ensure_buckets()
    return loaded


@pytest.fixture
def s3(settings):
    return settings.s3_client()


@pytest.fixture
def resources(settings) -> dict:
    """The Dagster resources of the definitions, pointed at this test's database and buckets."""
    from orchestration.definitions import build_resources

    return build_resources()
