"""The single entry point: one `Definitions` built from what assets/, sensors/, schedules/
and resources/ export. Nothing else assembles definitions."""

from __future__ import annotations

from dagster import Definitions, EnvVar

from assets import ALL_ASSET_CHECKS, ALL_ASSETS, ALL_JOBS
from orchestration.settings import get_settings
from resources.postgres import PostgresResource
from resources.s3 import make_s3_resource
from schedules import ALL_SCHEDULES
from sensors import ALL_SENSORS


def build_resources() -> dict:
    settings = get_settings()
    return {
        # The URL may hold a password: it reaches Dagster only through the environment.
        "postgres": PostgresResource(database_url=EnvVar("PSO_DATABASE_URL"), pool_size=settings.db_pool_size),
        "s3": make_s3_resource(settings),
    }


defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_ASSET_CHECKS,
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=build_resources(),
)
