"""Rule 3 (domain.md §4.4): locate each letter's PDF and fetch it, through obstore, in a bounded thread pool.

A folder with many letters is listed once and each letter's prefix is resolved in the sorted listing,
which gives exactly "the first PDF under the prefix" at a fraction of upstream's one call per letter;
folders with few letters get one listing per letter, starting at its prefix. Only an object whose key
ends in `.pdf` (any case) is a letter's PDF: another object under the prefix is passed over, and a
letter with none is "no PDF yet". The fetched bytes are checked (0 bytes, or not starting with `%PDF`)
*before* planning, so a bad PDF never reaches a batch, and appended to spool files (one per chunk of
letters) in the run's temporary folder.

Reads go through obstore (Rust `object_store`: a pooled HTTP client, SigV4, retries with backoff on
5xx and connection errors), configured from what the S3 client of the settings or the `S3Resource`
uses: endpoint, region, keys. Writes (zips and manifests, with SSE) stay on boto3.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import hashlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import repeat
from pathlib import Path

import obstore
from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from obstore.exceptions import (
    BaseError as StoreError,
    InvalidPathError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from assets.letters.keys import is_pdf_key, pdf_folder, pdf_prefix
from assets.letters.selection import Letter

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 16  # GETs in flight; the S3 server, not this process, sets the pace beyond this
FOLDER_LISTING_MIN_LETTERS = 20  # below this, one listing per letter is cheaper than the folder
FETCH_CHUNK = 200  # letters per fetch task: one spool file each
CONNECT_TIMEOUT = "5s"
REQUEST_TIMEOUT = "120s"
READ_RETRIES = 3  # 5xx answers and connection errors: retried with backoff, then the run fails


class S3Unreachable(ConnectionError):
    """S3 did not answer (refused, reset, timed out, or 5xx after the retries): the run fails."""


# Connection-level failures mean S3 is unreachable: the run fails instead of skipping letters.
S3_UNREACHABLE = (S3Unreachable, EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)
# S3 refused this object or folder (access denied, a key obstore cannot address): its letters are skipped.
REFUSED = (PermissionDeniedError, UnauthenticatedError, InvalidPathError)


@dataclass(frozen=True)
class S3Access:
    """How to reach S3 for reads: the endpoint (None: AWS itself), region and keys (None: obstore's own
    chain of environment, web identity and instance credentials, as boto3's)."""

    endpoint_url: str | None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None

    @classmethod
    def of_settings(cls, settings) -> S3Access:
        return cls(settings.s3_endpoint, settings.s3_region, settings.aws_access_key_id,
                   settings.aws_secret_access_key)

    @classmethod
    def of_resource(cls, s3) -> S3Access:
        """From dagster-aws's `S3Resource` (its fields, as resolved for the run)."""
        return cls(s3.endpoint_url, s3.region_name, s3.aws_access_key_id, s3.aws_secret_access_key,
                   s3.aws_session_token)

    def store(self, bucket: str) -> S3Store:
        config = {"endpoint": self.endpoint_url, "region": self.region, "access_key_id": self.access_key_id,
                  "secret_access_key": self.secret_access_key, "session_token": self.session_token}
        return S3Store(
            bucket,
            config={k: v for k, v in config.items() if v},
            client_options={"allow_http": bool(self.endpoint_url and self.endpoint_url.startswith("http://")),
                            "connect_timeout": CONNECT_TIMEOUT, "timeout": REQUEST_TIMEOUT},
            retry_config={"max_retries": READ_RETRIES, "retry_timeout": timedelta(seconds=60),
                          "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=5),
                                      "base": 2}},
        )


@dataclass(frozen=True)
class FoundPdf:
    letter: Letter
    key: str
    size: int
    sha256: str
    path: Path  # the spool file holding the fetched bytes, in the run's temporary folder
    offset: int = 0  # where they start in it


@dataclass
class GatherResult:
    found: list[FoundPdf] = field(default_factory=list)
    missing: list[uuid.UUID] = field(default_factory=list)  # no PDF under the prefix
    invalid: list[uuid.UUID] = field(default_factory=list)  # 0 bytes or not a PDF
    errors: list[uuid.UUID] = field(default_factory=list)  # S3 refused (e.g. access denied)
    list_calls: int = 0  # listings: one per folder listed, one per letter looked up alone
    lookup_seconds: float = 0.0
    fetch_seconds: float = 0.0


def _unreachable(error: StoreError) -> S3Unreachable:
    return S3Unreachable(f"S3 unreachable: {error}")


def list_folder(store: S3Store, folder: str) -> list[tuple[str, int]]:
    """(key, size) of every object under `folder/`, sorted by key."""
    keys: list[tuple[str, int]] = []
    for chunk in obstore.list(store, prefix=folder, chunk_size=1000):
        keys.extend((meta["path"], meta["size"]) for meta in chunk)
    keys.sort()  # S3 already lists in key order; sorting makes bisect safe on any endpoint
    return keys


def first_pdf_in(listing: list[tuple[str, int]], names: list[str], prefix: str) -> tuple[str, int] | None:
    """The first (key, size) of the sorted listing under `prefix` whose key ends in `.pdf`."""
    i = bisect.bisect_left(names, prefix)
    while i < len(names) and names[i].startswith(prefix):
        if is_pdf_key(names[i]):
            return listing[i]
        i += 1
    return None


def first_pdf_under(store: S3Store, prefix: str) -> tuple[str, int] | None:
    """One listing, from `prefix` on, of the prefix's folder: the first PDF under the prefix, or None."""
    folder = prefix.rsplit("/", 1)[0]
    for chunk in obstore.list(store, prefix=folder, offset=prefix, chunk_size=100):
        for meta in chunk:
            key = meta["path"]
            if not key.startswith(prefix):
                return None
            if is_pdf_key(key):
                return key, meta["size"]
    return None


Hit = tuple[str, int] | None | BaseException  # (key, size), no PDF, or S3's refusal


def _resolve_folder(store: S3Store, folder: str, group: list[Letter], folder_listing_min: int
                    ) -> tuple[int, dict[uuid.UUID, Hit]]:
    """Look up a folder's letters: one listing of the folder, or one per letter when they are few.
    Returns (listings made, each letter's hit)."""
    calls = 0
    if len(group) >= folder_listing_min:
        try:
            listing = list_folder(store, folder)
        except InvalidPathError:  # a key obstore cannot take somewhere in the folder: each letter alone
            log.warning("folder %s holds a key obstore cannot address; looking its letters up one by one", folder)
            calls = 1
        else:
            names = [key for key, _ in listing]
            return 1, {letter.id: first_pdf_in(listing, names, pdf_prefix(letter.reference, letter.created_at))
                       for letter in group}
    hits: dict[uuid.UUID, Hit] = {}
    for letter in group:
        try:
            hits[letter.id] = first_pdf_under(store, pdf_prefix(letter.reference, letter.created_at))
        except REFUSED as error:
            log.warning("listing under the prefix of letter %s refused: %s", letter.id, type(error).__name__)
            hits[letter.id] = error
    return calls + len(group), hits


def locate_pdfs(store: S3Store, letters: list[Letter], workers: int = DEFAULT_WORKERS,
                folder_listing_min: int = FOLDER_LISTING_MIN_LETTERS
                ) -> tuple[dict[uuid.UUID, tuple[str, int]], list[uuid.UUID], list[uuid.UUID], int]:
    """Map each letter to (key, size) of the first PDF under its rule-3 prefix.

    Returns (located, missing ids, error ids, listings). Raises `S3Unreachable` if S3 does not answer."""
    by_folder: dict[str, list[Letter]] = defaultdict(list)
    for letter in letters:
        by_folder[pdf_folder(letter.created_at)].append(letter)
    hits: dict[uuid.UUID, Hit] = {}
    calls = 0
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="letters-lookup") as pool:
        jobs = {pool.submit(_resolve_folder, store, folder, group, folder_listing_min): group
                for folder, group in by_folder.items()}
        for future, group in jobs.items():
            try:
                made, found = future.result()
            except REFUSED as error:  # e.g. access denied on the folder: skip its letters, retried next run
                log.warning("listing folder %s refused: %s", pdf_folder(group[0].created_at), type(error).__name__)
                made, found = 1, {letter.id: error for letter in group}
            except StoreError as error:
                raise _unreachable(error) from error
            calls += made
            hits.update(found)
    located: dict[uuid.UUID, tuple[str, int]] = {}
    missing: list[uuid.UUID] = []
    errors: list[uuid.UUID] = []
    for letter in letters:
        hit = hits[letter.id]
        if hit is None:
            missing.append(letter.id)
        elif isinstance(hit, BaseException):
            errors.append(letter.id)
        else:
            located[letter.id] = hit
    return located, missing, errors, calls


def _fetch_chunk(store: S3Store, chunk: list[tuple[Letter, str]], spool: Path
                 ) -> list[tuple[Letter, str, int, str, bool, int] | tuple[Letter, str]]:
    """GET each PDF of the chunk and append its bytes to the chunk's spool file. Returns, per letter,
    (letter, key, size, sha256, looks like a PDF, offset in the spool) or (letter, "missing" | "refused")."""
    out = []
    with spool.open("wb") as sink:
        for letter, key in chunk:
            try:
                body = obstore.get(store, key).bytes()
            except FileNotFoundError:
                out.append((letter, "missing"))  # deleted since the listing
                continue
            except REFUSED:
                out.append((letter, "refused"))
                continue
            except StoreError as error:
                raise _unreachable(error) from error
            view = memoryview(body)
            out.append((letter, key, len(view), hashlib.sha256(view).hexdigest(), view[:4] == b"%PDF", sink.tell()))
            sink.write(view)
    return out


def fetch_pdfs(store: S3Store, wanted: list[tuple[Letter, str]], workdir: Path, result: GatherResult,
               workers: int = DEFAULT_WORKERS) -> None:
    """Fetch and check the PDFs, `FETCH_CHUNK` letters per task; results keep the order of `wanted`."""
    chunks = [wanted[i:i + FETCH_CHUNK] for i in range(0, len(wanted), FETCH_CHUNK)]
    spools = [workdir / f"fetched-{n:06}.bin" for n in range(len(chunks))]
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="letters-fetch")
    try:
        for spool, fetched in zip(spools, pool.map(_fetch_chunk, repeat(store), chunks, spools)):
            for outcome in fetched:
                if len(outcome) == 2:
                    letter, why = outcome
                    (result.missing if why == "missing" else result.errors).append(letter.id)
                    continue
                letter, key, size, digest, is_pdf, offset = outcome
                if size == 0 or not is_pdf:
                    result.invalid.append(letter.id)
                    continue
                result.found.append(FoundPdf(letter, key, size, digest, spool, offset))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # S3 unreachable: stop the queued chunks


def gather_pdfs(access: S3Access, bucket: str, letters: list[Letter], workdir: Path, workers: int = DEFAULT_WORKERS,
                folder_listing_min: int = FOLDER_LISTING_MIN_LETTERS) -> GatherResult:
    """Locate, fetch and check every letter's PDF. Letters keep their selection order. The bytes go to
    spool files in `workdir` (one per chunk of letters), never held in memory all at once."""
    result = GatherResult()
    store = access.store(bucket)
    started = time.perf_counter()
    located, result.missing, result.errors, result.list_calls = locate_pdfs(store, letters, workers, folder_listing_min)
    result.lookup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fetch_pdfs(store, [(letter, located[letter.id][0]) for letter in letters if letter.id in located], workdir,
               result, workers)
    result.fetch_seconds = time.perf_counter() - started
    return result
