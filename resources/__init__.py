"""Resources: the bottom layer. They know nothing of settings; orchestration/definitions.py
builds them from the settings object."""

from resources.postgres import PostgresResource, make_engine
from resources.s3 import S3Buckets, ensure_buckets, s3_client

__all__ = ["PostgresResource", "S3Buckets", "ensure_buckets", "make_engine", "s3_client"]
