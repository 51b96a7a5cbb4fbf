"""Dagster resources: the service's Postgres (SQLAlchemy engine) and S3 (dagster-aws)."""

from resources.postgres import PostgresResource, make_engine
from resources.s3 import ensure_buckets, make_s3_resource, s3_client

__all__ = ["PostgresResource", "make_engine", "make_s3_resource", "s3_client", "ensure_buckets"]
