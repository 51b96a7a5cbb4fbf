"""The single entry point: one `Definitions` built from what assets/, sensors/, schedules/
and resources/ export, with resources configured from the one settings object. Nothing else
assembles definitions."""

from __future__ import annotations

import warnings

from dagster import (
    AssetSpec,
    BetaWarning,
    Definitions,
    EnvVar,
    ExecutorDefinition,
    Field,
    Selector,
    in_process_executor,
    multi_or_in_process_executor,
    multiprocess_executor,
    multi_observable_source_asset,
    with_source_code_references,
)
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


# The project's executor: Dagster's `multi_or_in_process_executor` with in-process as the default
# instead of multiprocess. A run's steps (the materialization and its checks) are sequential anyway, and
# a step subprocess costs a Python start and a code-location import (~8 s each on 2 loaded cores) for a
# check that queries for well under a second (issue 17 item 2; `pso bench run_overhead` measures both).
# A run can still ask for one process per step: run config `execution: {config: {multiprocess: {}}}`.
# A job that names its own executor (e.g. celery) keeps it.
step_executor = ExecutorDefinition(
    name="in_process_or_multiprocess",
    config_schema=Field(
        Selector({"in_process": in_process_executor.config_schema.as_field(),
                  "multiprocess": multiprocess_executor.config_schema.as_field()}),
        default_value={"in_process": {}},
    ),
    executor_creation_fn=multi_or_in_process_executor.executor_creation_fn,
    requirements=multi_or_in_process_executor.get_requirements,
    description="In-process by default (one process per run); `multiprocess` on request.",
)


def observable_sources(assets: list) -> list:
    """The families' source tables (plain `AssetSpec`s) declared observable, in one multi-asset. The
    sensors observe them with data versions (a sync run id, the newest request or row id, a digest of
    record counts), and Dagster's lineage compares those with the version each derived asset was built
    from: its dependents show stale when a source moved past them. A plain AssetSpec source would leave
    them stale for ever after its first observation. Observing from the UI records nothing new: only the
    sensors know what changed."""
    specs = [a for a in assets if isinstance(a, AssetSpec)]

    def operational_sources(context):
        yield from ()

    operational_sources = multi_observable_source_asset(
        name="operational_sources", specs=specs, can_subset=True,
        description="The operational tables the families read (observed by the sensors).")(operational_sources)

    return [operational_sources, *(a for a in assets if not isinstance(a, AssetSpec))]


def catalogued(assets: list) -> list:
    """The assets with code references (each asset's page links the file and line of its function; source
    specs carry their declaration's) and observable sources. Both are beta APIs, used on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return observable_sources(with_source_code_references(assets))


defs = Definitions(
    assets=catalogued(ALL_ASSETS),
    asset_checks=ALL_ASSET_CHECKS,
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=build_resources(),
    executor=step_executor,
)
