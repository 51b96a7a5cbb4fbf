"""The Postgres resource: one small, bounded SQLAlchemy pool per process.

Safe behind PgBouncer in transaction pooling mode: psycopg 3 is told never to prepare
statements server-side (`prepare_threshold=None`), and the project only uses `SET LOCAL`,
`pg_advisory_xact_lock` and `ON COMMIT DROP` temp tables.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

log = logging.getLogger(__name__)

def with_driver(url: str, driver: str) -> str:
    """Return `url` with its PostgreSQL driver set, e.g. 'psycopg' (SQLAlchemy) or 'psycopg2' (Dagster storage)."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+{driver}://{rest}" if scheme.startswith("postgresql") else url


_engines: dict[tuple[str, int], sa.Engine] = {}
_engines_lock = threading.Lock()


def make_engine(database_url: str, pool_size: int = 5, pool_timeout: float = 60) -> sa.Engine:
    """A process-wide engine for `database_url` (one pool per process, reused by every run step)."""
    url = with_driver(database_url, "psycopg")
    key = (url, pool_size)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = sa.create_engine(
                url,
                pool_size=pool_size,
                max_overflow=0,  # a hard budget: PgBouncer / the server has few connections to share
                pool_timeout=pool_timeout,
                pool_pre_ping=True,
                connect_args={"prepare_threshold": None, "application_name": "public-service-orchestration"},
            )
            _engines[key] = engine
        return engine


def _is_connection_refusal(error: sa.exc.OperationalError) -> bool:
    text = str(error.orig if error.orig is not None else error).lower()
    return any(marker in text for marker in (
        "too many clients", "remaining connection slots", "no more connections allowed",
        "connection refused", "server closed the connection", "pool_size", "query_wait_timeout",
        "sorry, too many", "the database system is starting up",
    ))


class PostgresResource(ConfigurableResource):
    """The service's PostgreSQL database."""

    database_url: str = Field(description="SQLAlchemy URL of the service database (secret: set from the environment)")
    pool_size: int = Field(default=5, description="Connections this process may hold at once")
    connect_retries: int = Field(default=8, description="How often to retry when the server has no connection free")

    _engine: sa.Engine | None = PrivateAttr(default=None)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = make_engine(self.database_url, self.pool_size)
        return self._engine

    def _connect_with_retry(self) -> sa.Connection:
        delay = 0.5
        for attempt in range(self.connect_retries + 1):
            try:
                return self.engine.connect()
            except sa.exc.OperationalError as error:
                if attempt == self.connect_retries or not _is_connection_refusal(error):
                    raise
                log.warning("Postgres has no connection free (attempt %d/%d); waiting %.1fs before retrying",
                            attempt + 1, self.connect_retries, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10)
        raise AssertionError("unreachable")

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection whose transactions the caller commits (e.g. one per batch)."""
        conn = self._connect_with_retry()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A connection inside one transaction, committed on success."""
        with self.connect() as conn:
            with conn.begin():
                yield conn
