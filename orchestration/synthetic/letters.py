"""Synthetic letters (domain.md §4): letter notifications around the 17:30 London cut-off, their PDFs in
the letters-PDF bucket at the rule-3 key (a few missing, one empty, one that is not a PDF), returned
letters and a contact list. Runs after the notifications generator and reuses its services."""

from __future__ import annotations

import concurrent.futures as cf
import string
import uuid
from datetime import datetime, timedelta

from orchestration.clock import LONDON, LETTER_CUTOFF, UTC
from orchestration.schema import POSTAGES
from orchestration.synthetic import SynthContext

BASE_LETTERS = 300
DAYS_BACK = 4
UPLOAD_WORKERS = 16
NOTIFICATION_COLUMNS = ["id", "service_id", "template_id", "template_version", "key_type", "notification_type",
                        "notification_status", "created_at", "updated_at", "sent_at", "sent_by", "reference",
                        "billable_units", "postage", "to"]


def _uuid(rng) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _reference(rng) -> str:
    return "".join(rng.choices(string.ascii_uppercase + string.digits, k=16))


def _pdf_body(rng, letter_id: uuid.UUID) -> bytes:
    # A small, valid-looking PDF; the padding makes sizes vary like real letters.
    header = f"%PDF-1.7\n% synthetic letter {letter_id}\n".encode()
    return header + b"0" * rng.randint(1_500, 6_000) + b"\n%%EOF\n"


def services_for_letters(ctx: SynthContext) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    rows = ctx.conn.execute("SELECT id, organisation_id FROM services ORDER BY id").fetchall()
    if rows:
        return [(r[0], r[1]) for r in rows]
    created = [(_uuid(ctx.rng), _uuid(ctx.rng), f"Letter service {i}") for i in range(2)]
    ctx.copy("services", ["id", "organisation_id", "name"], created)
    return [(s, o) for s, o, _ in created]


def _created_at(ctx: SynthContext) -> datetime:
    """An instant within a few hours of 17:30 London on one of the last few days, never after now."""
    for _ in range(20):
        day = ctx.today - timedelta(days=ctx.rng.randint(0, DAYS_BACK))
        cutoff = datetime.combine(day, LETTER_CUTOFF, tzinfo=LONDON)
        instant = (cutoff + timedelta(seconds=ctx.rng.randint(-4 * 3600, 4 * 3600))).astimezone(UTC)
        if instant <= ctx.now:
            return instant
    return ctx.now - timedelta(hours=1)


def generate(ctx: SynthContext) -> None:
    from assets.letters import contact_list_key, pdf_location  # the rules' own key functions

    rng = ctx.rng
    services = services_for_letters(ctx)
    template_id = _uuid(rng)
    letters = []  # notification rows
    uploads = []  # (bucket, key, body)
    returned = []
    normal_created = []
    for i in range(ctx.n(BASE_LETTERS, minimum=30)):
        letter_id = _uuid(rng)
        service_id, _ = services[rng.randrange(len(services))]
        key_type = rng.choices(["normal", "team", "test"], weights=[86, 7, 7])[0]
        postage = POSTAGES[i % len(POSTAGES)] if i < len(POSTAGES) else rng.choices(POSTAGES, weights=[20, 60, 10, 5, 5])[0]
        billable_units = 0 if rng.random() < 0.03 else rng.randint(1, 5)
        created_at = _created_at(ctx)
        # No `sending` letters: those exist only inside uploaded batches (the collation's asset check).
        status = rng.choices(["created", "delivered", "returned-letter", "validation-failed"],
                             weights=[80, 12, 4, 4])[0]
        sent = status in {"delivered", "returned-letter"}
        reference = _reference(rng)
        letters.append((letter_id, service_id, template_id, 1, key_type, "letter", status, created_at,
                        created_at if sent else None, created_at + timedelta(hours=1) if sent else None,
                        "dvla" if sent else None, reference, billable_units, postage,
                        f"Resident {i}\n{i} Synthetic Street\nTestville"))
        if status == "returned-letter":
            reported = created_at + timedelta(days=rng.randint(3, 9))
            returned.append((_uuid(rng), service_id, letter_id, reported.date(), reported))
        if billable_units == 0:
            continue  # stuck before validation: no PDF yet
        bucket, key = pdf_location(ctx.settings.buckets, notification_status=status, key_type=key_type,
                                   reference=reference, postage=postage, created_at=created_at) \
            if ctx.settings is not None else (None, None)
        if key_type == "normal" and status == "created":
            normal_created.append(len(uploads))
        uploads.append((bucket, key, _pdf_body(rng, letter_id)))

    # Faults the collation must survive: a few PDFs missing, one empty, one that is not a PDF.
    faulty = normal_created[:6]
    if len(faulty) >= 6:
        bucket, key, _ = uploads[faulty[4]]
        uploads[faulty[4]] = (bucket, key, b"")
        bucket, key, _ = uploads[faulty[5]]
        uploads[faulty[5]] = (bucket, key, b"<html>not a pdf</html>")
        for index in faulty[:3]:
            uploads[index] = None
    uploads = [u for u in uploads if u is not None]

    ctx.copy("notifications", NOTIFICATION_COLUMNS, letters)
    ctx.copy("returned_letters", ["id", "service_id", "notification_id", "reported_at", "created_at"], returned)

    if ctx.s3 is None or ctx.settings is None:
        return
    with cf.ThreadPoolExecutor(max_workers=UPLOAD_WORKERS, thread_name_prefix="synthetic-letters") as pool:
        list(pool.map(lambda u: ctx.s3.put_object(Bucket=u[0], Key=u[1], Body=u[2], ServerSideEncryption="AES256"), uploads))

    # One contact list: its CSV in S3 first, then its metadata row.
    service_id, _ = services[0]
    list_id = _uuid(rng)
    csv_rows = "address_line_1,address_line_2,postcode\n" + "".join(
        f"Resident {i},{i} Synthetic Street,SW1A {i % 9}AA\n" for i in range(ctx.n(25)))
    key = contact_list_key(service_id, list_id)
    ctx.s3.put_object(Bucket=ctx.settings.buckets.contact_lists, Key=key, Body=csv_rows.encode(),
                      ServerSideEncryption="AES256")
    ctx.copy("service_contact_list", ["id", "service_id", "original_file_name", "row_count", "template_type",
                                      "created_at", "s3_key"],
             [(list_id, service_id, "synthetic-addresses.csv", ctx.n(25), "letter", ctx.now, key)])
