"""What every `pso` command needs before it touches a database: the embedded endpoints' URLs and
credentials in this process's environment (and so in its children's, Dagster's included), the
embedded services themselves when a command needs them and nothing else runs them, and Dagster's home."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from orchestration.settings import Settings, get_settings


def export_env(settings: Settings) -> None:
    """Make the embedded endpoints and their credentials visible to this process and its children.

    Dagster's storage URL is always exported with the psycopg2 driver, whatever form the user gave
    (`postgresql://…` means psycopg 3 to SQLAlchemy 2.1, which dagster-postgres cannot use), so every
    Dagster process started from here (webserver, daemon, runs, `pso dagster …`) reads a working URL.
    """
    from orchestration.services import export_embedded_env

    os.environ.update(export_embedded_env(settings))
    os.environ["PSO_DAGSTER_STORAGE_URL"] = settings.dagster_storage_url_for_instance
    get_settings.cache_clear()


def cli_settings() -> Settings:
    """The settings, after exporting the embedded endpoints (as `pso seed` does)."""
    export_env(get_settings())
    return get_settings()


def dagster_env(settings: Settings) -> dict[str, str]:
    """The environment of a Dagster process on this project's instance: the exported endpoints, and
    DAGSTER_HOME holding the instance's `dagster.yaml` (written afresh)."""
    from orchestration.instance import write_instance_yaml

    ensure_dagster_database(settings)
    export_env(settings)
    home = get_settings().dagster_home
    write_instance_yaml(home)
    return {**os.environ, "DAGSTER_HOME": str(home)}


def ensure_dagster_database(settings: Settings) -> None:
    """Create the default database of Dagster's storage (`dagster`, beside the service database on its
    server) when it is missing; says what to do if the role may not. Other storage URLs are left alone."""
    if settings.embedded:
        return
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    from orchestration.settings import DAGSTER_DATABASE

    service, target = make_url(settings.database_url), make_url(settings.dagster_storage_url_for_instance)
    if (target.host, target.port, target.database) != (service.host, service.port, DAGSTER_DATABASE):
        return
    libpq = service.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DAGSTER_DATABASE,)).fetchone():
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DAGSTER_DATABASE)))
        except psycopg.errors.InsufficientPrivilege:
            raise SystemExit(f"pso: Dagster's storage needs a database: create `{DAGSTER_DATABASE}` on the service's "
                             "server, or set PSO_DAGSTER_STORAGE_URL") from None
    print(f"dagster   created database {DAGSTER_DATABASE!r} for Dagster's storage", flush=True)


@contextlib.contextmanager
def embedded_services_for(settings: Settings, command: str) -> Iterator[list[str]]:
    """Run the embedded Postgres and S3 that `command` needs while it runs, when they are the configured
    services and are not running yet; stop only those this started. Yields their names."""
    from orchestration.services import embedded_services

    postgres, s3 = embedded_services(settings)
    started = []
    try:
        if settings.embedded and not postgres.is_running():
            postgres.start()
            postgres.ensure_database("dagster")
            started.append(postgres)
            print(f"postgres  started for `pso {command}` on 127.0.0.1:{postgres.port}; stopped when it ends", flush=True)
        if settings.embedded_s3 and not s3.is_running():
            s3.start()
            started.append(s3)
            print(f"s3        started for `pso {command}` at {s3.endpoint}; stopped when it ends", flush=True)
        yield ["postgres" if service is postgres else "s3" for service in started]
    finally:
        for service in reversed(started):
            service.stop()
            print(f"{'postgres' if service is postgres else 's3':<9} stopped (started for `pso {command}`)", flush=True)
