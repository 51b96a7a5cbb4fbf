"""S3: dagster-aws's S3Resource pointed at the configured endpoint (the embedded SeaweedFS by default)."""

from __future__ import annotations

import os

from botocore.exceptions import ClientError
from dagster import EnvVar
from dagster_aws.s3 import S3Resource

from orchestration.settings import Settings


def make_s3_resource(settings: Settings) -> S3Resource:
    """Credentials and endpoint come from the environment only (EnvVar), never from code."""
    endpoint = EnvVar("PSO_S3_ENDPOINT_URL") if os.environ.get("PSO_S3_ENDPOINT_URL") else None
    has_keys = os.environ.get("PSO_S3_ACCESS_KEY_ID")
    return S3Resource(
        region_name=settings.s3_region,
        endpoint_url=endpoint,
        aws_access_key_id=EnvVar("PSO_S3_ACCESS_KEY_ID") if has_keys else None,
        aws_secret_access_key=EnvVar("PSO_S3_SECRET_ACCESS_KEY") if has_keys else None,
        max_attempts=5,
    )


def s3_client(settings: Settings):
    """A plain boto3 client for code that runs outside Dagster (CLI, generator, tests)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=64),
    )


def ensure_buckets(client, settings: Settings) -> list[str]:
    """Create the project's buckets if missing; returns the ones created."""
    created = []
    for bucket in settings.buckets.all():
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError:
            client.create_bucket(Bucket=bucket)
            created.append(bucket)
    return created
