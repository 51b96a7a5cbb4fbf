"""Letter collation at volume (issue 6, deliverable 9): 100,000 letters × scale whose PDFs are in the
local S3, collated end to end (lookup, fetch, plan, zip, upload, mark). Baselines in the same run, on a
sample: upstream's one S3 call per letter made one at a time, and the same calls through the pool."""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import resource
import uuid
from dataclasses import replace
from datetime import timedelta

import sqlalchemy as sa

from assets import letters as L
from assets.letters import pdfs as P
from bench.runner import BenchDatabase, BenchReport, timed
from orchestration.clock import letter_deadline, now_utc, print_date
from orchestration.settings import get_settings
from orchestration.bulk import copy_rows
from resources.s3 import S3Buckets

LETTERS_AT_SCALE_1 = 100_000
SERVICES = 40
BASELINE_SAMPLE = 1_000
PUT_WORKERS = 16


def _bench_buckets(settings):
    tag = f"bench{uuid.uuid4().hex[:6]}"
    b = settings.buckets
    return replace(settings, buckets=S3Buckets(**{
        **b.model_dump(), "letters_pdf": f"{tag}-letters-pdf", "letter_batches": f"{tag}-letter-batches",
        "invalid_pdf": f"{tag}-invalid", "test_letters": f"{tag}-test-letters", "archive": f"{tag}-archive",
        "contact_lists": f"{tag}-contact-lists"}))


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _embedded_s3_cpu(settings) -> float | None:
    """CPU seconds used so far by the embedded S3 server (Linux /proc), or None when not measurable."""
    from orchestration.services import EmbeddedS3

    server = EmbeddedS3(settings.data_dir, settings.s3_port)
    if settings.s3_endpoint != server.endpoint:
        return None
    try:
        pid = int(server.pid_file.read_text().strip())
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _empty_bucket(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def _list_prefix(s3, bucket: str, prefix: str) -> bool:
    """Upstream's lookup: one listing of the letter's prefix (one key)."""
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("Contents"))


def _collate_once(engine, s3, settings, day, now, count: int) -> dict:
    client_cpu, server_cpu = _process_cpu(), _embedded_s3_cpu(settings)
    with engine.connect() as conn, timed() as t:
        result = L.collate_letters(conn, s3, settings.buckets, day, now, workers=16,
                                   reads=P.S3Access.of_settings(settings), echo=lambda *_: None)
    wall = t()
    client_cpu = _process_cpu() - client_cpu
    server_cpu = None if server_cpu is None else (_embedded_s3_cpu(settings) or server_cpu) - server_cpu
    assert result.letters_sending == count and not result.missing and not result.invalid, "every letter batched"
    return {"wall": wall, "client_cpu": client_cpu, "server_cpu": server_cpu, "result": result}


def _fake_letters(rng: random.Random, count: int, deadline) -> tuple[list[tuple], list[tuple]]:
    """Set-up: SERVICES (service, organisation) ids and `count` notification rows of letters awaiting print."""
    services = [(uuid.UUID(int=rng.getrandbits(128), version=4), uuid.UUID(int=rng.getrandbits(128), version=4))
                for _ in range(SERVICES)]
    letters = []
    for i in range(count):
        service, _ = services[rng.randrange(SERVICES)]
        created = deadline - timedelta(seconds=rng.randint(60, 3 * 86400))  # three folders' worth
        postage = rng.choices(list(L.POSTAGE_CODES), weights=[20, 65, 10, 3, 2])[0]
        letters.append((uuid.UUID(int=rng.getrandbits(128), version=4), service, uuid.UUID(int=1), 1, "normal",
                        "letter", "created", created, f"BENCH{i:011d}", rng.randint(1, 4), postage, "x"))
    return services, letters


def _load_letters(db: BenchDatabase, engine, services: list[tuple], letters: list[tuple]) -> None:
    """Set-up: the services and the notifications in the scratch database."""
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO services (id, organisation_id) VALUES (:s, :o)"),
                     [{"s": s, "o": o} for s, o in services])
    with db.connect() as raw:
        copy_rows(raw, "notifications", ["id", "service_id", "template_id", "template_version", "key_type",
                                         "notification_type", "notification_status", "created_at", "reference",
                                         "billable_units", "postage", "to"], letters)
        raw.commit()
        raw.execute("ANALYZE notifications")
        raw.commit()


def _upload_pdfs(s3, settings, rng: random.Random, letters: list[tuple], report: BenchReport) -> None:
    """Set-up: every letter's PDF in the local S3, PUT_WORKERS at once."""
    def put(row):
        bucket, key = L.pdf_location(settings.buckets, notification_status="created", key_type="normal",
                                     reference=row[8], postage=row[10], created_at=row[7])
        s3.put_object(Bucket=bucket, Key=key, Body=b"%PDF-1.7\n" + row[0].bytes * rng.randint(40, 120),
                      ServerSideEncryption="AES256")

    with timed() as t:
        with cf.ThreadPoolExecutor(PUT_WORKERS) as pool:
            list(pool.map(put, letters))
    count = len(letters)
    report.add("setup: PDFs uploaded", count, "objects", f"{count / t():,.0f}/s")


def _measure_per_letter_lookups(s3, settings, rng: random.Random, letters: list[tuple], report: BenchReport) -> None:
    """Baselines on a sample: upstream's one prefix listing per letter, one at a time; then pooled."""
    sample = rng.sample(letters, min(BASELINE_SAMPLE, len(letters)))
    prefixes = [L.pdf_prefix(r[8], r[7]) for r in sample]
    with timed() as t:
        hits = sum(_list_prefix(s3, settings.buckets.letters_pdf, p) for p in prefixes)
    assert hits == len(sample), "baseline lookups must find every PDF"
    report.add("baseline: sequential per-letter lookups", len(sample) / t(), "lookups/s", f"sample {len(sample)}")
    with timed() as t:
        with cf.ThreadPoolExecutor(P.DEFAULT_WORKERS) as pool:
            list(pool.map(lambda p: _list_prefix(s3, settings.buckets.letters_pdf, p), prefixes))
    report.add("per-letter lookups through the pool", len(sample) / t(), "lookups/s", f"sample {len(sample)}")


def _measure_collation(engine, s3, settings, day, now, count: int, report: BenchReport) -> None:
    """The collation end to end: wall time, CPU, and its phases."""
    collation = _collate_once(engine, s3, settings, day, now, count)
    result, total = collation["result"], collation["wall"]
    report.add("letters collated", count, "letters")
    report.add("batches uploaded", len(result.zip_keys), "zips")
    report.add("S3 listings for the lookups", result.list_calls, "calls")
    report.add("collation wall time", total, "s", "target < 30 s at scale 1")
    report.add("collation rate", count / total, "letters/s")
    # CPU, less sensitive than wall time to other work on the machine (2 cores shared with the S3 server).
    report.add("collation CPU, this process", collation["client_cpu"], "s",
               f"{collation['client_cpu'] / count * 1e6:,.0f} µs/letter")
    if collation["server_cpu"] is not None:
        report.add("collation CPU, embedded S3 server", collation["server_cpu"], "s",
                   f"{collation['server_cpu'] / count * 1e6:,.0f} µs/letter")
    report.add("lookup rate (folder listings, pooled)", count / result.seconds["lookup"], "lookups/s")
    report.add("fetch + check rate (GET per PDF, pooled)", count / result.seconds["fetch"], "PDFs/s")
    for phase in ("leftovers", "select", "lookup", "fetch", "plan", "upload"):
        report.add(f"phase {phase}", result.seconds.get(phase, 0.0), "s")


def _delete_bench_buckets(s3, settings) -> None:
    for bucket in (settings.buckets.letters_pdf, settings.buckets.letter_batches, settings.buckets.invalid_pdf,
                   settings.buckets.test_letters, settings.buckets.archive, settings.buckets.contact_lists):
        try:
            _empty_bucket(s3, bucket)
        except Exception:  # noqa: BLE001 — cleanup is best effort; the figures are already taken
            pass


def run(db: BenchDatabase, scale: float) -> BenchReport:
    report = BenchReport("letters", scale)
    count = max(1_000, int(LETTERS_AT_SCALE_1 * scale))
    rng = random.Random(6)
    settings = _bench_buckets(get_settings())
    s3 = settings.s3_client()
    settings.ensure_buckets(s3)
    now = now_utc()
    deadline = letter_deadline(now)
    day = print_date(now)
    try:
        services, letters = _fake_letters(rng, count, deadline)
        engine = db.engine()
        _load_letters(db, engine, services, letters)
        _upload_pdfs(s3, settings, rng, letters, report)
        _measure_per_letter_lookups(s3, settings, rng, letters, report)
        _measure_collation(engine, s3, settings, day, now, count, report)
        report.ratio("lookups/s vs sequential per-letter baseline", "lookup rate (folder listings, pooled)",
                     "baseline: sequential per-letter lookups", "≥ 10×")
        engine.dispose()
    finally:
        _delete_bench_buckets(s3, settings)
    return report
