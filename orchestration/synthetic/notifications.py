"""Synthetic Notify data for the history archives (domain.md §3.1–3.4).

Services (with organisation ids), service_data_retention rows (3, 10 and 30 days besides the
default 7), inbound numbers, ~52,000 notifications at demo scale (≥ 1,000,000 at bench scale 20)
of every type, status and key type spread over the last 45 days, inbound SMS, and some
notification_history rows older than 365 days for the deep archive. Letters come in archivable
and never-archived statuses ('created' ones have 0 billable units: stuck before validation, no
PDF, so letter collation leaves them alone). A few completed letters get a PDF in S3 when a client
is given, so the archive's PDF deletion has something to delete.

Contact details are fake: 07700 900xxx numbers (Ofcom's drama range) and @example.com addresses.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from orchestration import schema
from orchestration.synthetic import SynthContext

DAYS = 45
SPAN_SECONDS = DAYS * 86_400
PDF_UPLOADS = 30  # enough to exercise PDF deletion; kept small so seeding stays fast
FAKE_PDF = b"%PDF-1.4\n% synthetic letter\n%%EOF\n"

TYPE_WEIGHTS = (("email", 55), ("sms", 35), ("letter", 10))
KEY_WEIGHTS = (("normal", 90), ("team", 6), ("test", 4))
STATUS_WEIGHTS = {
    "email": (("delivered", 70), ("sending", 6), ("created", 3), ("sent", 2), ("pending", 3), ("failed", 2),
              ("technical-failure", 3), ("temporary-failure", 4), ("permanent-failure", 5), ("cancelled", 2)),
    "sms": (("delivered", 68), ("sending", 6), ("created", 3), ("sent", 4), ("pending", 4), ("failed", 2),
            ("technical-failure", 3), ("temporary-failure", 5), ("permanent-failure", 5)),
    "letter": (("delivered", 30), ("sending", 12), ("created", 10), ("pending-virus-check", 6),
               ("validation-failed", 6), ("virus-scan-failed", 4), ("returned-letter", 8), ("cancelled", 8),
               ("technical-failure", 6), ("permanent-failure", 4), ("sent", 6)),
}
PROVIDERS = {"email": "ses", "sms": "mmg", "letter": "dvla"}
NOTIFICATION_COLUMNS = list(schema.NOTIFICATION_HISTORY_COLUMNS) + ["to", "normalised_to", "personalisation",
                                                                     "reply_to_text", "unsubscribe_link"]


def _uuid(rng) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _cumulative(weights):
    values, cumulative, total = [], [], 0
    for value, weight in weights:
        total += weight
        values.append(value)
        cumulative.append(total)
    return values, cumulative


def generate(ctx: SynthContext) -> None:
    rng = ctx.rng
    service_ids = _services(ctx)
    templates = {s: [_uuid(rng) for _ in range(3)] for s in service_ids}
    jobs = {s: [_uuid(rng) for _ in range(4)] for s in service_ids}
    api_keys = {s: {k: _uuid(rng) for k in ("normal", "team", "test")} for s in service_ids}
    uploads: list[tuple] = []
    ctx.copy("notifications", NOTIFICATION_COLUMNS,
             _notifications(ctx, service_ids, templates, jobs, api_keys, uploads))
    sms_services = [s for i, s in enumerate(service_ids) if i % 3 == 0]
    ctx.copy("inbound_sms", ["id", "service_id", "created_at", "notify_number", "user_number", "content",
                             "provider_date", "provider_reference", "provider"], _inbound_sms(ctx, sms_services))
    ctx.copy("notification_history", list(schema.NOTIFICATION_HISTORY_COLUMNS),
             _old_history(ctx, service_ids, templates, api_keys))
    if ctx.s3 is not None and ctx.settings is not None:
        _upload_pdfs(ctx, uploads)


def _services(ctx: SynthContext) -> list[uuid.UUID]:
    """Services with their organisations, data retention and inbound numbers; returns the service ids."""
    rng = ctx.rng
    organisations = [_uuid(rng) for _ in range(ctx.n(8))]
    services = [(_uuid(rng), f"Synthetic service {i + 1}", organisations[i % len(organisations)])
                for i in range(ctx.n(40))]
    ctx.copy("services", ["id", "name", "organisation_id"], services)
    service_ids = [s[0] for s in services]

    # Retention: every 4th service keeps emails 3 days; every 5th keeps SMS 30 days; every 6th letters 10.
    retention = []
    for i, service_id in enumerate(service_ids):
        for notification_type, step, days in (("email", 4, 3), ("sms", 5, 30), ("letter", 6, 10)):
            if i % step == 0:
                retention.append((_uuid(rng), service_id, notification_type, days, ctx.now))
    ctx.copy("service_data_retention", ["id", "service_id", "notification_type", "days_of_retention", "created_at"],
             retention)

    # Inbound numbers: every 3rd service has one (so some SMS-retention services have one, some not);
    # a few numbers are unallocated.
    inbound = []
    for i, service_id in enumerate(service_ids):
        if i % 3 == 0:
            inbound.append((_uuid(rng), f"0770090{len(inbound):04d}", service_id, True))
    inbound += [(_uuid(rng), f"0770091{i:04d}", None, False) for i in range(3)]
    ctx.copy("inbound_numbers", ["id", "number", "service_id", "active"], inbound)
    return service_ids


def _notifications(ctx: SynthContext, service_ids, templates, jobs, api_keys, uploads: list[tuple]):
    """Rows of `notifications` (NOTIFICATION_COLUMNS); appends the letters to give a PDF to `uploads`."""
    rng = ctx.rng
    types, type_cum = _cumulative(TYPE_WEIGHTS)
    keys, key_cum = _cumulative(KEY_WEIGHTS)
    statuses = {t: _cumulative(w) for t, w in STATUS_WEIGHTS.items()}
    completed = set(schema.COMPLETED_NOTIFICATION_STATUSES)
    for i in range(ctx.n(52_000)):
        service_id = service_ids[int(rng.random() ** 1.5 * len(service_ids))]  # a few busy services
        notification_type = rng.choices(types, cum_weights=type_cum)[0]
        key_type = rng.choices(keys, cum_weights=key_cum)[0]
        status_values, status_cum = statuses[notification_type]
        status = rng.choices(status_values, cum_weights=status_cum)[0]
        created_at = ctx.now - timedelta(seconds=rng.randrange(SPAN_SECONDS))
        job_id = rng.choice(jobs[service_id]) if rng.random() < 0.4 else None
        row_id = _uuid(rng)
        settled = status not in ("created", "pending-virus-check")
        sent_at = created_at + timedelta(seconds=rng.randrange(5, 600)) if settled else None
        if notification_type == "email":
            to = f"person{i}@example.com"
            billable, postage, prefix, multiplier, reference = 0, None, None, None, None
        elif notification_type == "sms":
            to = f"07700900{i % 1000:03d}"
            billable, postage, prefix, multiplier, reference = rng.randint(1, 3), None, "44", 1, None
        else:
            to = f"A. Person\n{i % 200 + 1} Example Street\nExampletown\nEX1 1AA"
            # A 'created' letter here is stuck before validation: no pages, no PDF.
            billable = 0 if status in ("created", "pending-virus-check") else rng.randint(1, 5)
            postage = rng.choice(("first", "second", "second", "economy"))
            prefix, multiplier = None, None
            reference = f"SYN{row_id.hex[:13].upper()}"
            if status in completed and len(uploads) < PDF_UPLOADS and created_at < ctx.now - timedelta(days=12):
                uploads.append((reference, postage, created_at, status, key_type))
        yield (row_id, job_id, (i % 5000) + 1 if job_id else None, service_id,
               rng.choice(templates[service_id]), 1, api_keys[service_id][key_type], key_type,
               notification_type, created_at, sent_at, PROVIDERS[notification_type] if sent_at else None,
               sent_at or created_at, reference, billable, f"client-{i}" if rng.random() < 0.2 else None,
               False, prefix, multiplier, status, None, postage, None,
               to, to.lower() if notification_type != "letter" else None, '{"name": "Example"}', None, None)


def _inbound_sms(ctx: SynthContext, sms_services):
    rng = ctx.rng
    for i in range(ctx.n(2_000)):
        service_id = rng.choice(sms_services)
        created_at = ctx.now - timedelta(seconds=rng.randrange(SPAN_SECONDS))
        yield (_uuid(rng), service_id, created_at, "07700900000", f"07700900{i % 1000:03d}",
               "STOP" if i % 10 == 0 else "Synthetic reply", created_at, f"inbound-{i}", "mmg")


def _old_history(ctx: SynthContext, service_ids, templates, api_keys):
    """notification_history older than 365 days: ~2 days of hours for the deep archive."""
    rng = ctx.rng
    base = ctx.now - timedelta(days=367)
    for _ in range(ctx.n(600)):
        service_id = rng.choice(service_ids)
        notification_type = rng.choice(("email", "sms", "letter"))
        created_at = base - timedelta(seconds=rng.randrange(2 * 86_400))
        yield (_uuid(rng), None, None, service_id, rng.choice(templates[service_id]), 1,
               api_keys[service_id]["normal"], "normal", notification_type, created_at, created_at,
               PROVIDERS[notification_type], created_at, None, 1, None, False, None, None, "delivered", None,
               "second" if notification_type == "letter" else None, None)


def _upload_pdfs(ctx: SynthContext, uploads: list[tuple]) -> None:
    from assets.history import letter_pdf_location

    for reference, postage, created_at, status, key_type in uploads:
        bucket, key = letter_pdf_location(reference, postage, created_at, status, key_type, ctx.settings.buckets)
        ctx.s3.put_object(Bucket=bucket, Key=key, Body=FAKE_PDF, ContentType="application/pdf",
                          ServerSideEncryption="AES256")
