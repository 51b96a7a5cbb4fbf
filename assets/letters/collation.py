"""Letter print batches (domain.md §4): the daily 17:30 collation into zip batches in S3.

The collation (`collate_letters`) is plain code over a SQLAlchemy `Connection` and S3 clients:

1. resolve `planned` batches left by an earlier run (zip in S3 → finish step 3; else delete);
2. select the letters (§4.4 rule 2) in one set-based query (selection.py);
3. locate each PDF (rule 3) and fetch it, checking the bytes before planning (pdfs.py);
4. group (rule 4) and insert the batches `planned` with their items, in one transaction (batches.py);
5. per batch, in a small pool: build the zip, upload the JSON manifest, then the zip (the zip is the
   commit marker), both with SSE-AES256. As uploads finish, one transaction per round makes those
   batches `uploaded` and their letters `sending`;
6. recompute the print day's `letter_print_volumes` (rule 5 volumes).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from assets.letters.batches import (
    MAX_BATCH_BYTES,
    MAX_BATCH_LETTERS,
    PlannedBatch,
    complete_batches,
    plan_batches,
    resolve_leftover_batches,
    upload_batch,
)
from assets.letters.pdfs import DEFAULT_WORKERS, FOLDER_LISTING_MIN_LETTERS, S3Access, gather_pdfs
from assets.letters.selection import format_ids, select_letters, unbatchable_letters
from orchestration.clock import letter_deadline_on, now_utc, print_date as print_date_of
from orchestration.schema import POSTAGES, LetterBatchState
from orchestration.settings import get_settings
from resources.s3 import S3Buckets

log = logging.getLogger(__name__)

UPLOAD_WORKERS = 4  # zips built and put at once (each ≤ 40 MiB in memory)


def upsert_print_volumes(conn: sa.Connection, print_date: date) -> dict[str, dict[str, int]]:
    """Recompute `letter_print_volumes` of a print date from its uploaded batches (idempotent; the view
    still finds letters after they are archived to notification_history). Writes only changed rows."""
    with conn.begin():
        conn.execute(sa.text("""
            WITH figures AS (
                SELECT p.postage, count(n.id)::int AS letters, coalesce(sum(n.billable_units), 0)::int AS sheets
                FROM unnest(CAST(:postages AS text[])) AS p(postage)
                LEFT JOIN letter_batches b ON b.print_date = :d AND b.postage = p.postage AND b.state = :uploaded
                LEFT JOIN letter_batch_items i ON i.batch_id = b.id
                LEFT JOIN notifications_all_time_view n ON n.id = i.notification_id
                GROUP BY p.postage
            )
            INSERT INTO letter_print_volumes (print_date, postage, letters, sheets)
            SELECT :d, postage, letters, sheets FROM figures
            ON CONFLICT (print_date, postage) DO UPDATE
                SET letters = EXCLUDED.letters, sheets = EXCLUDED.sheets, updated_at = now()
                WHERE (letter_print_volumes.letters, letter_print_volumes.sheets)
                      IS DISTINCT FROM (EXCLUDED.letters, EXCLUDED.sheets)"""),
            {"d": print_date, "postages": list(POSTAGES), "uploaded": int(LetterBatchState.UPLOADED)})
        rows = conn.execute(sa.text(
            "SELECT postage, letters, sheets FROM letter_print_volumes WHERE print_date = :d ORDER BY postage"),
            {"d": print_date}).all()
    return {postage: {"letters": letters, "sheets": sheets} for postage, letters, sheets in rows}


@dataclass
class CollationResult:
    print_date: date
    deadline: datetime
    selected: int = 0
    # Letters no collation can take as they stand, with why (selection.unbatchable_letters).
    unbatchable: list[tuple[uuid.UUID, list[str]]] = field(default_factory=list)
    missing: list[uuid.UUID] = field(default_factory=list)
    invalid: list[uuid.UUID] = field(default_factory=list)
    lookup_errors: list[uuid.UUID] = field(default_factory=list)
    leftovers_finished: int = 0
    leftovers_discarded: int = 0
    batches: list[PlannedBatch] = field(default_factory=list)
    letters_sending: int = 0
    zip_keys: list[str] = field(default_factory=list)
    volumes: dict[str, dict[str, int]] = field(default_factory=dict)
    list_calls: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def deadline_for_print_date(day: date, now: datetime) -> datetime:
    """The deadline of print day `day`; refuses a day whose 17:30 London deadline is still ahead."""
    deadline = letter_deadline_on(day)
    if deadline > now:
        raise ValueError(f"print day {day} is not collatable yet: its deadline {deadline.isoformat()} is after now "
                         f"({now.isoformat()}); the latest collatable print day is {print_date_of(now)}")
    return deadline


def upload_and_mark(conn: sa.Connection, batches_s3, bucket: str, planned: list[PlannedBatch], workdir: Path,
                    workers: int, result: CollationResult,
                    after_upload: Callable[[PlannedBatch], None] | None = None) -> None:
    """Steps 2 and 3 for every planned batch: uploads in a small pool; as they finish, one transaction
    per round makes those batches `uploaded` and their letters `sending`. An upload failure stops the
    queued uploads, completes those that went up, then raises. `after_upload` (tests: a fault) runs
    in the upload's thread once its zip is stored."""

    def upload(batch: PlannedBatch) -> str:
        key = upload_batch(batches_s3, bucket, batch, workdir)
        if after_upload is not None:
            after_upload(batch)
        return key

    failure: BaseException | None = None
    with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, UPLOAD_WORKERS)),
                               thread_name_prefix="letters-upload") as pool:
        pending = {pool.submit(upload, b): b for b in planned}
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            uploaded: list[PlannedBatch] = []
            for future in done:
                batch = pending.pop(future)
                if future.cancelled():
                    continue
                try:
                    key = future.result()
                except BaseException as error:  # keep completing the batches that did upload
                    failure = failure or error
                    for other in pending:
                        other.cancel()
                    continue
                uploaded.append(batch)
                result.zip_keys.append(key)
            if uploaded:  # step 3 for every zip that went up since the last round, in one transaction
                result.letters_sending += complete_batches(
                    conn, [b.id for b in uploaded], [i.letter.id for b in uploaded for i in b.items])
    if failure is not None:
        raise RuntimeError(
            f"letter collation of {result.print_date} failed while uploading batches ({len(result.zip_keys)} of "
            f"{len(planned)} uploaded and marked); the rest stay planned and are resolved "
            f"at the start of the next run: {failure}") from failure


def unbatchable_by_reason(result: CollationResult) -> dict[str, list[uuid.UUID]]:
    by_reason: dict[str, list[uuid.UUID]] = {}
    for notification_id, reasons in result.unbatchable:
        for reason in reasons:
            by_reason.setdefault(reason, []).append(notification_id)
    return by_reason


def report_skipped(result: CollationResult, echo: Callable[[str], None]) -> None:
    for reason, ids in unbatchable_by_reason(result).items():
        echo(f"{len(ids)} letters can never be collated as they stand ({reason}; left created): {format_ids(ids)}")
    if result.missing:
        echo(f"{len(result.missing)} letters have no PDF yet (left created, retried next run): "
             f"{format_ids(result.missing)}")
    if result.lookup_errors:
        echo(f"{len(result.lookup_errors)} letters' PDFs could not be read from S3 (left created): "
             f"{format_ids(result.lookup_errors)}")
    if result.invalid:
        echo(f"{len(result.invalid)} letters have an empty or non-PDF object (skipped): {format_ids(result.invalid)}")


def collate_letters(conn: sa.Connection, s3, buckets: S3Buckets, day: date, now: datetime | None = None,
                    workers: int = DEFAULT_WORKERS, max_letters: int = MAX_BATCH_LETTERS,
                    max_bytes: int = MAX_BATCH_BYTES, folder_listing_min: int = FOLDER_LISTING_MIN_LETTERS,
                    reads: S3Access | None = None, echo: Callable[[str], None] = log.info,
                    after_upload: Callable[[PlannedBatch], None] | None = None) -> CollationResult:
    """Collate print day `day` (§4.4). `s3` is the boto3 client of the batches bucket (uploads with SSE,
    leftovers); `reads` reaches the letters-PDF bucket (default: the settings' endpoint and keys)."""
    now = now or now_utc()
    reads = reads or S3Access.of_settings(get_settings())
    batches_s3 = s3
    result = CollationResult(day, deadline_for_print_date(day, now))
    clock = time.perf_counter()

    finished, discarded = resolve_leftover_batches(conn, batches_s3, buckets.letter_batches)
    result.leftovers_finished, result.leftovers_discarded = len(finished), len(discarded)
    if finished or discarded:
        echo(f"leftover planned batches: {len(finished)} finished, {len(discarded)} discarded for regrouping")
    result.seconds["leftovers"] = time.perf_counter() - clock

    clock = time.perf_counter()
    letters = select_letters(conn, result.deadline)
    result.selected = len(letters)
    result.unbatchable = unbatchable_letters(conn, result.deadline)
    result.seconds["select"] = time.perf_counter() - clock
    echo(f"print day {day}: {len(letters)} letters created before {result.deadline.isoformat()} to collate")

    workdir = Path(tempfile.mkdtemp(prefix="pso-letters-"))
    try:
        gathered = gather_pdfs(reads, buckets.letters_pdf, letters, workdir, workers, folder_listing_min)
        result.missing, result.invalid, result.lookup_errors = gathered.missing, gathered.invalid, gathered.errors
        result.list_calls = gathered.list_calls
        result.seconds["lookup"], result.seconds["fetch"] = gathered.lookup_seconds, gathered.fetch_seconds
        report_skipped(result, echo)

        clock = time.perf_counter()
        result.batches = plan_batches(conn, day, gathered.found, max_letters, max_bytes)
        result.seconds["plan"] = time.perf_counter() - clock

        clock = time.perf_counter()
        try:
            upload_and_mark(conn, batches_s3, buckets.letter_batches, result.batches, workdir, workers, result,
                            after_upload)
        finally:
            result.seconds["upload"] = time.perf_counter() - clock
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result.volumes = upsert_print_volumes(conn, day)
    echo(f"print day {day}: {len(result.batches)} batches uploaded, {result.letters_sending} letters sending")
    return result
