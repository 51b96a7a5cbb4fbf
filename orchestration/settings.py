"""The one settings object: everything configurable comes from environment variables.

With nothing set, the project runs on its embedded default: a PostgreSQL and an S3
endpoint started by `pso services start`, with data under `.pso/` in the project folder.
A malformed value fails at start-up with an error that names the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from sqlalchemy.engine import make_url

from resources.postgres import with_driver
from resources.s3 import S3Buckets, ensure_buckets, s3_client

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# Dagster's own storage, beside the service database on the same server, unless PSO_DAGSTER_STORAGE_URL says otherwise.
DAGSTER_DATABASE = "dagster"


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _int(env: dict[str, str], name: str, default: int, what: str) -> int:
    """`env[name]` as an int, or `default` when unset or empty; `what` names the expected value."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None


def _port(env: dict[str, str], name: str, default: int) -> int:
    value = _int(env, name, default, "a port number")
    if not 1 <= value <= 65535:
        raise SettingsError(f"{name} must be between 1 and 65535, got {value}")
    return value


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    value = _int(env, name, default, "a whole number")
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {value}")
    return value


def _database_url(env: dict[str, str], name: str) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    if not re.match(r"^postgresql(\+psycopg|\+psycopg2)?://", raw):
        raise SettingsError(
            f"{name} must be a PostgreSQL URL such as postgresql://user:password@host:5432/db, got a value "
            f"starting {raw.split(':', 1)[0]!r}"
        )
    return raw


AUTOMATION_VALUES = ("on", "paused")


def _automation_paused(env: dict[str, str]) -> bool:
    """PSO_AUTOMATION: `on` (default) starts every schedule and sensor running; `paused` starts them all
    stopped, for a cautious first deployment (each can then be turned on in the UI)."""
    raw = (env.get("PSO_AUTOMATION") or "on").strip().lower()
    if raw not in AUTOMATION_VALUES:
        raise SettingsError(f"PSO_AUTOMATION must be one of {', '.join(AUTOMATION_VALUES)}, got {raw!r}")
    return raw == "paused"


def _endpoint(env: dict[str, str], name: str) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    if not re.match(r"^https?://[^/\s]+/?$", raw):
        raise SettingsError(f"{name} must be an http(s) URL such as http://127.0.0.1:8333, got {raw!r}")
    return raw.rstrip("/")


def _bucket(env: dict[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    if not _BUCKET_RE.match(value):
        raise SettingsError(f"{name} must be a valid S3 bucket name (3-63 lower-case letters, digits, '.', '-'), got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # None means "use the embedded server"; the URL then comes from services.embedded_database_url().
    database_url_override: str | None
    s3_endpoint_override: str | None
    s3_region: str
    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    buckets: S3Buckets
    pg_port: int
    s3_port: int
    dagster_port: int
    db_pool_size: int
    # Batches a status refresh writes at once, each on its own connection (one per database core is
    # about right); with the refresh's coordinating connection it must fit in the pool.
    status_refresh_workers: int = field(default=2)
    # Patients the statuses' drift check recomputes per check run (PSO_STATUS_DRIFT_SAMPLE).
    status_drift_sample: int = field(default=500)
    # How patient events reach the status tables: "inline" (the request sensor refreshes small batches
    # itself, every few seconds) or "runs" (one Dagster run per batch, as before; the benchmark baseline).
    status_events: str = field(default="inline")
    status_events_interval: int = field(default=3)  # seconds between the request sensor's ticks
    alert_webhook_url: str | None = field(default=None)
    # True when the keys came from PSO_S3_* (Dagster then reads them through EnvVar, by those names).
    s3_keys_from_pso_env: bool = field(default=False)
    # PSO_DAGSTER_STORAGE_URL as the user wrote it (any PostgreSQL URL); None: the default below.
    dagster_storage_url_override: str | None = field(default=None)
    # PSO_AUTOMATION=paused: every schedule and sensor starts STOPPED (orchestration/automation.py).
    automation_paused: bool = field(default=False)
    # PSO_S3_USE_AWS (any non-empty value): AWS itself, boto3's default endpoint and credential chain.
    s3_use_aws: bool = field(default=False)

    @property
    def embedded(self) -> bool:
        return self.database_url_override is None

    @property
    def embedded_s3(self) -> bool:
        return self.s3_endpoint_override is None and not self.s3_use_aws

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL (psycopg 3) of the service database."""
        if self.database_url_override:
            return with_driver(self.database_url_override, "psycopg")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/pso"

    @property
    def dagster_storage_url(self) -> str:
        """Dagster's own storage needs psycopg2 (dagster-postgres), whatever SQLAlchemy's default is."""
        return with_driver(self.database_url, "psycopg2")

    @property
    def dagster_storage_url_for_instance(self) -> str:
        """Dagster's run/event/schedule storage: its own database beside the service's, always with the
        psycopg2 driver (dagster-postgres needs it; SQLAlchemy 2.1 reads `postgresql://` as psycopg 3)."""
        if self.dagster_storage_url_override:
            return with_driver(self.dagster_storage_url_override, "psycopg2")
        if self.embedded:
            return f"postgresql+psycopg2://postgres@127.0.0.1:{self.pg_port}/dagster"
        # A database of its own on the service's server: in the service database, Dagster's migrations
        # would read the project's `alembic_version` and refuse to start.
        return make_url(self.dagster_storage_url).set(database=DAGSTER_DATABASE).render_as_string(hide_password=False)

    @property
    def s3_endpoint(self) -> str | None:
        """None means real AWS (boto3's default endpoint)."""
        if self.s3_endpoint_override:
            return self.s3_endpoint_override
        if self.embedded_s3:
            return f"http://127.0.0.1:{self.s3_port}"
        return None

    def s3_client(self):
        """A boto3 client for code that runs outside Dagster (CLI, generator, benchmarks, tests)."""
        return s3_client(self.s3_endpoint, self.s3_region, self.aws_access_key_id, self.aws_secret_access_key)

    def ensure_buckets(self, client=None) -> list[str]:
        """Create the project's buckets where missing; returns the ones created."""
        return ensure_buckets(client or self.s3_client(), self.buckets.all())

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read and validate settings from `env` (default: the process environment)."""
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("PSO_DATA_DIR") or PROJECT_ROOT / ".pso").resolve()
    access_key = env.get("PSO_S3_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY_ID")
    secret_key = env.get("PSO_S3_SECRET_ACCESS_KEY") or env.get("AWS_SECRET_ACCESS_KEY")
    if bool(access_key) != bool(secret_key):
        raise SettingsError("PSO_S3_ACCESS_KEY_ID and PSO_S3_SECRET_ACCESS_KEY must be set together")
    webhook = env.get("PSO_ALERT_WEBHOOK_URL") or None
    if webhook and not re.match(r"^https?://", webhook):
        raise SettingsError(f"PSO_ALERT_WEBHOOK_URL must be an http(s) URL, got {webhook!r}")
    prefix = env.get("PSO_BUCKET_PREFIX", "pso")
    pool_size = _positive_int(env, "PSO_DB_POOL_SIZE", 5)
    workers = _positive_int(env, "PSO_STATUS_REFRESH_WORKERS", min(2, pool_size - 1) or 1)
    if workers > 1 and workers >= pool_size:
        raise SettingsError(f"PSO_STATUS_REFRESH_WORKERS ({workers}) needs a connection each plus one for the "
                            f"refresh's coordinator: raise PSO_DB_POOL_SIZE above it (now {pool_size})")
    return Settings(
        data_dir=data_dir,
        database_url_override=_database_url(env, "PSO_DATABASE_URL"),
        s3_endpoint_override=_endpoint(env, "PSO_S3_ENDPOINT_URL"),
        s3_region=env.get("PSO_S3_REGION") or "eu-west-2",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        buckets=S3Buckets(
            letters_pdf=_bucket(env, "PSO_BUCKET_LETTERS_PDF", f"{prefix}-letters-pdf"),
            invalid_pdf=_bucket(env, "PSO_BUCKET_INVALID_PDF", f"{prefix}-letters-invalid-pdf"),
            test_letters=_bucket(env, "PSO_BUCKET_TEST_LETTERS", f"{prefix}-test-letters"),
            letter_batches=_bucket(env, "PSO_BUCKET_LETTER_BATCHES", f"{prefix}-letter-batches"),
            archive=_bucket(env, "PSO_BUCKET_ARCHIVE", f"{prefix}-archive"),
            contact_lists=_bucket(env, "PSO_BUCKET_CONTACT_LISTS", f"{prefix}-contact-lists"),
        ),
        pg_port=_port(env, "PSO_PG_PORT", 54329),
        s3_port=_port(env, "PSO_S3_PORT", 18333),
        dagster_port=_port(env, "PSO_DAGSTER_PORT", 3000),
        db_pool_size=pool_size,
        status_refresh_workers=workers,
        status_drift_sample=_positive_int(env, "PSO_STATUS_DRIFT_SAMPLE", 500),
        status_events=_choice(env, "PSO_STATUS_EVENTS", ("inline", "runs"), "inline"),
        status_events_interval=_positive_int(env, "PSO_STATUS_EVENTS_INTERVAL", 3),
        alert_webhook_url=webhook,
        s3_keys_from_pso_env=bool(env.get("PSO_S3_ACCESS_KEY_ID")),
        dagster_storage_url_override=_database_url(env, "PSO_DAGSTER_STORAGE_URL"),
        automation_paused=_automation_paused(env),
        s3_use_aws=bool(env.get("PSO_S3_USE_AWS")),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def frozen_now(env: dict[str, str] | None = None) -> datetime | None:
    """PSO_NOW, the instant a test or a replayed day freezes "now" at for a whole process tree (ISO-8601
    with a UTC offset), or None when unset. Read at every call, not cached: tests change it per test."""
    raw = (os.environ if env is None else env).get("PSO_NOW")
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise SettingsError(f"PSO_NOW must be an ISO-8601 instant, got {raw!r}") from None
    if value.tzinfo is None:
        raise SettingsError(f"PSO_NOW must include a UTC offset, got {raw!r}")
    return value
