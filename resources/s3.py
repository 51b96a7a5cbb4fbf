"""S3: the buckets the project uses (a resource, so the UI shows them), and a boto3 client for code
that runs outside Dagster. Inside Dagster the client is dagster-aws's `S3Resource`, configured in
orchestration/definitions.py from the settings."""

from __future__ import annotations

from typing import Iterable

from botocore.exceptions import ClientError
from dagster import ConfigurableResource
from pydantic import Field


class S3Buckets(ConfigurableResource):
    """The project's bucket names (PSO_BUCKET_*; default `{PSO_BUCKET_PREFIX}-…`)."""

    letters_pdf: str = Field(description="Letter PDFs waiting to be printed (Notify's letters-pdf bucket)")
    invalid_pdf: str = Field(description="Letter PDFs that failed validation")
    test_letters: str = Field(description="PDFs of letters sent with a test key")
    letter_batches: str = Field(description="Zip batches and manifests handed to the printer")
    archive: str = Field(description="Parquet archives of notification history")
    contact_lists: str = Field(description="Uploaded contact list CSVs")

    def all(self) -> list[str]:
        return [self.letters_pdf, self.invalid_pdf, self.test_letters, self.letter_batches, self.archive,
                self.contact_lists]


def s3_client(endpoint_url: str | None, region: str, access_key_id: str | None, secret_access_key: str | None):
    """A plain boto3 client (None endpoint and keys: AWS itself and boto3's credential chain)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=64),
    )


def ensure_buckets(client, buckets: Iterable[str]) -> list[str]:
    """Create the buckets that are missing; returns the ones created."""
    created = []
    for bucket in buckets:
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError:
            client.create_bucket(Bucket=bucket)
            created.append(bucket)
    return created


MISSING_OBJECT_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def is_missing_object(error: ClientError) -> bool:
    """True when an S3 call failed because the object is not there (GET says NoSuchKey, HEAD a bare 404)."""
    return error.response.get("Error", {}).get("Code") in MISSING_OBJECT_CODES
