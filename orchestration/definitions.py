"""The single entry point: one `Definitions` built from what assets/, sensors/, schedules/
and resources/ export, with resources configured from the one settings object. Nothing else
assembles definitions."""

from __future__ import annotations

from dagster import Definitions, EnvVar, with_source_code_references
from dagster_aws.s3 import S3Resource

from assets import ALL_ASSET_CHECKS, ALL_ASSETS, ALL_JOBS
from orchestration.settings import Settings, get_settings
from resources.postgres import PostgresResource
from schedules import ALL_SCHEDULES
from sensors import ALL_SENSORS


def build_resources(settings: Settings | None = None) -> dict:
    """Secrets (the database URL, S3 keys, an endpoint) reach Dagster only as `EnvVar`s, so they
    never show in the UI; the rest is plain configuration from the settings."""
    settings = settings or get_settings()
    return {
        "postgres": PostgresResource(database_url=EnvVar("PSO_DATABASE_URL"), pool_size=settings.db_pool_size),
        "s3": S3Resource(
            region_name=settings.s3_region,
            endpoint_url=EnvVar("PSO_S3_ENDPOINT_URL") if settings.s3_endpoint_override else None,
            aws_access_key_id=EnvVar("PSO_S3_ACCESS_KEY_ID") if settings.s3_keys_from_pso_env else None,
            aws_secret_access_key=EnvVar("PSO_S3_SECRET_ACCESS_KEY") if settings.s3_keys_from_pso_env else None,
            max_attempts=5,
        ),
        "buckets": settings.buckets,
    }


defs = Definitions(
    # Each asset's page links the file and line of its function (source specs carry their declaration's).
    assets=with_source_code_references(ALL_ASSETS),
    asset_checks=ALL_ASSET_CHECKS,
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=build_resources(),
)
