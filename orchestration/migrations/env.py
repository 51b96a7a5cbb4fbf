"""Alembic environment: migrates the schema declared in the orchestration/schema package.

The database URL comes from the caller (`sqlalchemy.url`, set by orchestration.migrate) or,
for the command line, from the PSO_DATABASE_URL environment variable. It is never stored in
alembic.ini. A caller may also pass an open connection as `config.attributes["connection"]`.
"""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from orchestration.schema import metadata
from orchestration.settings import load_settings

config = context.config

# Only the command line configures logging from alembic.ini; a host process (Dagster, the
# CLI, pytest) that calls orchestration.migrate keeps its own logging setup.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata

# Two processes (webserver and daemon, say) may migrate at start-up at the same time; this
# transaction-scoped advisory lock makes the second wait and then find nothing to do.
MIGRATION_LOCK_KEY = 7_406_311_001


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or load_settings().database_url_override
    if not url:
        raise RuntimeError("No database URL: set sqlalchemy.url or the PSO_DATABASE_URL environment variable")
    return url


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # Replica schemas are created at run time and are not part of the migrated schema.
        include_schemas=False,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (`alembic upgrade head --sql`) without connecting."""
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: sa.Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = sa.create_engine(_database_url(), poolclass=sa.pool.NullPool,
                              connect_args={"prepare_threshold": None})
    try:
        with engine.connect() as connection:
            _run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
