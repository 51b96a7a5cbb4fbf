"""S3 helpers shared by tests: what a bucket holds, read through the real test S3."""

from __future__ import annotations


def stored_keys(s3, *buckets: str) -> set[tuple[str, str]]:
    """Every (bucket, key) stored in these buckets, across listing pages."""
    found = set()
    for bucket in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            found.update((bucket, obj["Key"]) for obj in page.get("Contents", []))
    return found
