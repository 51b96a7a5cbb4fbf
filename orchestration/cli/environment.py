"""What every `pso` command needs before it touches a database: the embedded endpoints' URLs and
credentials in this process's environment (and so in its children's, Dagster's included)."""

from __future__ import annotations

import os

from orchestration.settings import Settings, get_settings


def export_env(settings: Settings) -> None:
    """Make the embedded endpoints and their credentials visible to this process and its children."""
    from orchestration.services import export_embedded_env

    os.environ.update(export_embedded_env(settings))
    os.environ.setdefault("PSO_DAGSTER_STORAGE_URL", settings.dagster_storage_url_for_instance)
    get_settings.cache_clear()


def cli_settings() -> Settings:
    """The settings, after exporting the embedded endpoints (as `pso seed` does)."""
    export_env(get_settings())
    return get_settings()
