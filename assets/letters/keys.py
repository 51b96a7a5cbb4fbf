"""Where things live in S3 (domain.md §4.4 rules 3 and 5, §4.5 buckets): PDF names and prefixes, batch
names, the zip and manifest keys, contact-list keys; and the one "is this object there" test."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import date, datetime
from typing import Iterable

from botocore.exceptions import ClientError

from orchestration.clock import as_utc, letter_pdf_folder
from resources.s3 import S3Buckets, is_missing_object

POSTAGE_CODES = {"first": "1", "second": "2", "economy": "ECONOMY", "europe": "E", "rest-of-world": "N"}
# A reference forms a key only from the characters AWS calls safe in object key names (letters, digits
# and ! - _ . * ' ( )): no "/" (another folder), spaces, "?", "%", "#" or non-ASCII.
KEY_SAFE_REFERENCE = r"^[A-Za-z0-9!_.*'()-]+$"
MAX_KEY_BYTES = 1024
# The longest PDF key around its reference: `YYYY-MM-DD/NOTIFY.` + `.D.ECONOMY.C.YYYYmmddHHMMSS.PDF`.
MAX_REFERENCE_LENGTH = MAX_KEY_BYTES - len("2026-01-01/NOTIFY..D.ECONOMY.C.20260101000000.PDF")
PDF_SUFFIX = ".pdf"


def pdf_file_name(reference: str, postage: str, created_at: datetime) -> str:
    """`NOTIFY.{REFERENCE}.D.{postage code}.C.{created_at UTC}.PDF`, upper-cased (rule 3)."""
    utc = as_utc(created_at)
    return f"NOTIFY.{reference}.D.{POSTAGE_CODES[postage]}.C.{utc:%Y%m%d%H%M%S}.PDF".upper()


def pdf_folder(created_at: datetime) -> str:
    return letter_pdf_folder(created_at).isoformat()


def pdf_prefix(reference: str, created_at: datetime) -> str:
    """The lookup prefix `{folder}/NOTIFY.{REFERENCE}` of a letters-PDF-bucket object."""
    return f"{pdf_folder(created_at)}/NOTIFY.{reference.upper()}"


def is_pdf_key(key: str) -> bool:
    """Rule 3: only an object whose key ends in `.pdf`, in any case, is a letter's PDF."""
    return key.lower().endswith(PDF_SUFFIX)


def pdf_location(buckets: S3Buckets, *, notification_status: str, key_type: str, reference: str,
                 postage: str, created_at: datetime) -> tuple[str, str]:
    """(bucket, key) of a letter's PDF per §4.5: validation-failed → invalid-PDF bucket, test key →
    test-letters bucket (both without a folder), everything else → letters-PDF bucket in its folder."""
    name = pdf_file_name(reference, postage, created_at)
    if notification_status == "validation-failed":
        return buckets.invalid_pdf, name
    if key_type == "test":
        return buckets.test_letters, name
    return buckets.letters_pdf, f"{pdf_folder(created_at)}/{name}"


def batch_hash(pdf_keys: Iterable[str]) -> str:
    """First 20 characters of the URL-safe base64 of the SHA-512 of the keys, concatenated."""
    digest = hashlib.sha512("".join(pdf_keys).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:20]


def batch_zip_name(print_date: date, postage: str, sequence: int, pdf_keys: Iterable[str],
                   service_id: uuid.UUID, organisation_id: uuid.UUID | None) -> str:
    """`NOTIFY.{print_date}.{postage code}.{sequence:03}.{hash}.{service_id}.{organisation_id}.ZIP` (rule 5).
    A service without an organisation gives "None", as upstream's format string did."""
    return (f"NOTIFY.{print_date.isoformat()}.{POSTAGE_CODES[postage]}.{sequence:03}."
            f"{batch_hash(pdf_keys)}.{service_id}.{organisation_id}.ZIP")


def zip_key(print_date: date, zip_name: str) -> str:
    return f"{print_date.isoformat()}/{zip_name}"


def manifest_key(print_date: date, zip_name: str) -> str:
    return f"{print_date.isoformat()}/{zip_name}.manifest.json"


def contact_list_key(service_id: uuid.UUID, list_id: uuid.UUID) -> str:
    return f"service-{service_id}/{list_id}.csv"


def object_exists(s3, bucket: str, key: str) -> bool:
    """HEAD the object: True if there, False if S3 says it is not; any other refusal raises."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if is_missing_object(error):
            return False
        raise
