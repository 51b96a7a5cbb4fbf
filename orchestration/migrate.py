"""Apply the Alembic migrations programmatically (CLI start-up, tests, deployment jobs).

    from orchestration.migrate import upgrade
    upgrade("postgresql+psycopg://user@host:5432/db")
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

PACKAGE_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
# alembic.ini lives at the project root, next to the package (a source checkout or an
# editable install). Without it, the configuration is built in code.
ALEMBIC_INI = PACKAGE_DIR.parent / "alembic.ini"


def _url_string(database_url: str | sa.URL) -> str:
    if isinstance(database_url, sa.URL):
        return database_url.render_as_string(hide_password=False)
    return database_url


def alembic_config(database_url: str | sa.URL) -> Config:
    """An Alembic Config for `database_url`, independent of the working directory."""
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.is_file() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser treats '%' as interpolation; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", _url_string(database_url).replace("%", "%%"))
    # Keep the caller's logging configuration (see env.py).
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str | sa.URL, revision: str = "head") -> None:
    """Migrate the database up to `revision` (default: the latest). A no-op when already there."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | sa.URL, revision: str = "base") -> None:
    """Migrate the database down to `revision` (default: drop everything the migrations created)."""
    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str | sa.URL) -> str | None:
    """The revision the database is at, or None if it has never been migrated."""
    engine = sa.create_engine(_url_string(database_url), poolclass=sa.pool.NullPool,
                              connect_args={"prepare_threshold": None})
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The latest revision in the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
