"""History archives (domain.md §3.1–3.4): rules, idempotency, S3, facts, deep archive, checks, Dagster."""

from __future__ import annotations

import logging
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from assets import history
from orchestration import schema
from orchestration.clock import (
    deep_archive_limit,
    london_day_bounds,
    london_midnight_utc,
    retention_cutoff,
)
from orchestration.patterns.archive import CountMismatch, delete_exported
from resources.s3 import is_missing_object
from tests.s3_helpers import stored_keys

UTC = timezone.utc
SERVICE_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
SERVICE_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
SERVICE_C = uuid.UUID("00000000-0000-4000-8000-00000000000c")
TEMPLATE = uuid.UUID("00000000-0000-4000-8000-0000000000f1")
PII_VALUES = ("person@example.com", "07700900123", '{"name": "Example"}')


def notification(created_at: datetime, service_id=SERVICE_A, notification_type="email", key_type="normal",
                 status="delivered", **extra) -> dict:
    row = {c: None for c in schema.NOTIFICATION_HISTORY_COLUMNS}
    row.update(id=uuid.uuid4(), service_id=service_id, template_id=TEMPLATE, template_version=1, key_type=key_type,
               notification_type=notification_type, created_at=created_at, billable_units=1,
               notification_status=status, to="person@example.com", normalised_to="07700900123",
               personalisation='{"name": "Example"}', reply_to_text=None, unsubscribe_link=None,
               international=False, rate_multiplier=1, updated_at=created_at)
    if notification_type == "letter":
        row.update(reference=f"REF{row['id'].hex[:10].upper()}", postage="second")
    row.update(extra)
    return row


@pytest.fixture
def services(engine):
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.services), [{"id": s, "name": f"service {s.hex[-1]}"}
                                                  for s in (SERVICE_A, SERVICE_B, SERVICE_C)])
    return engine


def insert(engine, table, rows):
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)
    return rows


def ids(engine, table) -> set[uuid.UUID]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(table.c.id)).scalars())


def archive(engine, today, **kwargs):
    with engine.connect() as conn:
        return history.archive_notifications(conn, today, **kwargs)


# --------------------------------------------------------------------------------------------- rules


@pytest.mark.parametrize("today, cutoff", [
    (date(2024, 7, 10), datetime(2024, 7, 2, 23, 0, tzinfo=UTC)),  # BST: London midnight is 23:00 UTC
    (date(2024, 1, 10), datetime(2024, 1, 3, 0, 0, tzinfo=UTC)),  # GMT
    (date(2024, 4, 3), datetime(2024, 3, 27, 0, 0, tzinfo=UTC)),  # cutoff day before the clocks went forward
])
def test_default_retention_cuts_at_london_midnight(services, today, cutoff):
    assert retention_cutoff(7, today) == cutoff == london_midnight_utc(today - timedelta(days=7))
    rows = insert(services, schema.notifications, [
        notification(cutoff - timedelta(microseconds=1)),  # past retention
        notification(cutoff),  # kept: the last 7 whole days plus today
        notification(cutoff - timedelta(days=20), notification_type="sms"),
    ])
    result = archive(services, today)
    assert ids(services, schema.notification_history) == {rows[0]["id"], rows[2]["id"]}
    assert ids(services, schema.notifications) == {rows[1]["id"]}
    assert result.archived.deleted == result.archived.inserted == 2


def test_retention_per_service_and_type(services):
    today = date(2024, 7, 10)
    insert(services, schema.service_data_retention, [
        {"service_id": SERVICE_A, "notification_type": "email", "days_of_retention": 3},
        {"service_id": SERVICE_B, "notification_type": "sms", "days_of_retention": 30},
    ])
    day = lambda n: london_midnight_utc(today - timedelta(days=n)) + timedelta(hours=12)  # noqa: E731
    rows = insert(services, schema.notifications, [
        notification(day(4), SERVICE_A, "email"),  # 3-day retention: archived
        notification(day(3), SERVICE_A, "email"),  # kept
        notification(day(4), SERVICE_A, "sms"),  # A's SMS: default 7 → kept
        notification(day(8), SERVICE_A, "sms"),  # archived
        notification(day(8), SERVICE_B, "sms"),  # 30 days → kept
        notification(day(31), SERVICE_B, "sms"),  # archived
        notification(day(8), SERVICE_B, "email"),  # default 7: archived
        notification(day(8), SERVICE_C, "letter"),  # default 7: archived
    ])
    archive(services, today)
    assert ids(services, schema.notification_history) == {rows[i]["id"] for i in (0, 3, 5, 6, 7)}
    assert ids(services, schema.notifications) == {rows[i]["id"] for i in (1, 2, 4)}


def test_test_keys_deleted_pending_letters_kept_and_no_pii_copied(services):
    today = date(2024, 7, 10)
    old = datetime(2024, 6, 1, 12, tzinfo=UTC)
    rows = insert(services, schema.notifications, [
        notification(old, key_type="test"),
        notification(old, key_type="team"),
        notification(old, notification_type="letter", key_type="test", status="created"),
        *[notification(old, notification_type="letter", status=s) for s in history.PENDING_LETTER_STATUSES],
        notification(old, notification_type="letter", status="returned-letter"),
        notification(old, notification_type="letter", status="validation-failed"),
    ])
    result = archive(services, today)
    assert result.test_deleted.deleted == 2
    assert ids(services, schema.notification_history) == {rows[i]["id"] for i in (1, 6, 7)}
    assert ids(services, schema.notifications) == {rows[i]["id"] for i in (3, 4, 5)}
    with services.connect() as conn:
        archived = conn.execute(sa.select(schema.notification_history)).mappings().all()
        cols = set(conn.execute(sa.text("SELECT column_name FROM information_schema.columns "
                                        "WHERE table_name = 'notification_history'")).scalars())
    assert not cols & {"to", "normalised_to", "personalisation", "reply_to_text", "unsubscribe_link"}
    by_id = {r["id"]: r for r in rows}
    for row in archived:  # the 23 columns, unchanged
        assert {c: row[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS} == \
            {c: by_id[row["id"]][c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}
        assert not any(v in str(dict(row)) for v in PII_VALUES)


def test_rerun_changes_nothing_and_history_conflicts_are_not_lost(services):
    today = date(2024, 7, 10)
    rows = insert(services, schema.notifications,
                  [notification(datetime(2024, 6, 1, tzinfo=UTC) + timedelta(minutes=i)) for i in range(25)])
    # One row is already in history (an earlier, interrupted move): DO NOTHING keeps history's copy.
    insert(services, schema.notification_history, [{c: rows[0][c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}])
    first = archive(services, today, batch_size=10)
    assert (first.archived.batches, first.archived.deleted, first.archived.inserted) == (3, 25, 24)
    second = archive(services, today, batch_size=10)
    assert second.archived.deleted == second.archived.inserted == second.test_deleted.deleted == 0
    assert ids(services, schema.notification_history) == {r["id"] for r in rows}
    assert ids(services, schema.notifications) == set()


def test_partition_window_limits_the_run(services):
    today = date(2024, 7, 10)
    inside = datetime(2024, 6, 1, 12, tzinfo=UTC)
    rows = insert(services, schema.notifications, [notification(inside), notification(inside - timedelta(days=1))])
    start, end = london_day_bounds(date(2024, 6, 1))
    archive(services, today, window_start=start, window_end=end)
    assert ids(services, schema.notification_history) == {rows[0]["id"]}


def test_missing_object_is_told_from_other_s3_errors(settings, s3):
    def error_of(call, **kwargs) -> ClientError:
        with pytest.raises(ClientError) as raised:
            call(**kwargs)
        return raised.value

    bucket = settings.buckets.letters_pdf
    assert is_missing_object(error_of(s3.head_object, Bucket=bucket, Key="2024-06-04/NOTIFY.NONE.PDF"))  # bare 404
    assert is_missing_object(error_of(s3.get_object, Bucket=bucket, Key="2024-06-04/NOTIFY.NONE.PDF"))  # NoSuchKey
    assert not is_missing_object(error_of(s3.get_object, Bucket=f"{bucket}-absent", Key="x"))  # NoSuchBucket


def test_letter_pdfs_deleted_from_s3_first(services, settings, s3, caplog):
    today = date(2024, 7, 10)
    old = datetime(2024, 6, 3, 17, 45, tzinfo=UTC)  # 18:45 London: the PDF is in the next day's folder
    letters = insert(services, schema.notifications, [
        notification(old, notification_type="letter", status="delivered"),
        notification(old, notification_type="letter", status="validation-failed"),
        notification(old, notification_type="letter", status="returned-letter"),  # its PDF is missing
        notification(old, notification_type="letter", key_type="test", status="sending"),
        notification(old, notification_type="letter", status="sending"),  # never archived: PDF stays
    ])
    keys = {}
    for row in letters:
        bucket, key = history.letter_pdf_location(row["reference"], row["postage"], row["created_at"],
                                                  row["notification_status"], row["key_type"], settings.buckets)
        keys[row["id"]] = (bucket, key)
        if row["notification_status"] != "returned-letter":
            s3.put_object(Bucket=bucket, Key=key, Body=b"%PDF")
    assert keys[letters[0]["id"]] == (settings.buckets.letters_pdf,
                                      f"2024-06-04/NOTIFY.{letters[0]['reference']}.D.2.C.20240603174500.PDF")
    assert keys[letters[1]["id"]][0] == settings.buckets.invalid_pdf
    assert keys[letters[3]["id"]][0] == settings.buckets.test_letters
    with caplog.at_level(logging.WARNING):
        result = archive(services, today, s3=s3, buckets=settings.buckets, letter_batch_size=2)
    assert (result.pdfs.deleted, result.pdfs.missing, result.pdfs.errors) == (3, 1, 0)
    assert "PDF not found" in caplog.text
    assert stored_keys(s3, *settings.buckets.all()) == {keys[letters[4]["id"]]}
    assert ids(services, schema.notifications) == {letters[4]["id"]}
    # A lifecycle rule catches any PDF left behind; other rules on the bucket are kept.
    s3.put_bucket_lifecycle_configuration(Bucket=settings.buckets.test_letters, LifecycleConfiguration={"Rules": [
        {"ID": "other", "Status": "Enabled", "Filter": {"Prefix": "x/"}, "Expiration": {"Days": 1}}]})
    assert len(history.ensure_pdf_lifecycle_rules(s3, settings.buckets)) == 3
    assert history.ensure_pdf_lifecycle_rules(s3, settings.buckets) == []
    rules = s3.get_bucket_lifecycle_configuration(Bucket=settings.buckets.test_letters)["Rules"]
    assert {r["ID"] for r in rules} == {"other", history.PDF_LIFECYCLE_RULE_ID}


def test_bad_input_is_named_and_left_alone(services):
    today = date(2024, 7, 10)
    with services.begin() as conn:  # a service database without this schema's constraints
        for table, constraint in (("notifications", "ck_notifications_notification_status"),
                                  ("notifications", "ck_notifications_notification_type"),
                                  ("service_data_retention", "ck_service_data_retention_days_of_retention")):
            conn.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}"))
        conn.execute(sa.text("ALTER TABLE notifications ALTER COLUMN created_at DROP NOT NULL"))
    old = datetime(2024, 6, 1, tzinfo=UTC)
    rows = insert(services, schema.notifications, [
        notification(None), notification(old, status="lost-in-post"), notification(old, notification_type="fax"),
        notification(old, SERVICE_B, "sms"), notification(old, SERVICE_C, "sms"),
    ])
    bad_retention = insert(services, schema.service_data_retention, [
        {"id": uuid.uuid4(), "service_id": SERVICE_B, "notification_type": "sms", "days_of_retention": 0}])
    result = archive(services, today)
    assert ids(services, schema.notification_history) == {rows[4]["id"]}  # only the good row
    assert result.skipped_retention_ids == [str(bad_retention[0]["id"])]
    with services.connect() as conn:
        found = history.bad_notification_input(conn)
    assert found == {
        "notifications_null_created_at": [str(rows[0]["id"])],
        "notifications_unknown_status": [str(rows[1]["id"])],
        "notifications_unknown_type": [str(rows[2]["id"])],
        "retention_days_not_positive": [str(bad_retention[0]["id"])],
    }


# --------------------------------------------------------------------------------------------- inbound SMS


def test_inbound_sms_retention_and_no_pii(services):
    today = date(2024, 7, 10)
    insert(services, schema.service_data_retention, [
        {"service_id": SERVICE_A, "notification_type": "sms", "days_of_retention": 30},  # has a number
        {"service_id": SERVICE_B, "notification_type": "sms", "days_of_retention": 30},  # no number → 7
    ])
    insert(services, schema.inbound_numbers, [{"number": "07700900001", "service_id": SERVICE_A}])
    at = london_midnight_utc(today - timedelta(days=10))
    rows = insert(services, schema.inbound_sms, [
        {"id": uuid.uuid4(), "service_id": s, "created_at": at, "notify_number": "07700900001",
         "user_number": "07700900999", "content": "secret reply", "provider": "mmg"}
        for s in (SERVICE_A, SERVICE_B, SERVICE_C)])
    with services.connect() as conn:
        counts = history.archive_inbound_sms(conn, today, batch_size=1)
        assert counts["deleted"] == counts["inserted"] == 2
        again = history.archive_inbound_sms(conn, today)
        assert again["deleted"] == 0
        archived = conn.execute(sa.text("SELECT * FROM inbound_sms_history")).mappings().all()
    assert {r["id"] for r in archived} == {rows[1]["id"], rows[2]["id"]}
    assert not any("secret" in str(dict(r)) or "07700900999" in str(dict(r)) for r in archived)
    assert ids(services, schema.inbound_sms) == {rows[0]["id"]}


# --------------------------------------------------------------------------------------------- facts


def facts(engine, day):
    with engine.connect() as conn:
        return {(r.service_id, r.notification_type, r.job_id, r.key_type, r.notification_status): r.notification_count
                for r in conn.execute(sa.select(schema.ft_notification_status)
                                      .where(schema.ft_notification_status.c.bst_date == day))}


def test_facts_count_live_and_history_and_clear_stale_groups(services):
    day = date(2024, 7, 1)
    at = london_midnight_utc(day) + timedelta(minutes=30)  # 23:30 UTC on 30 June: London's 1 July
    job = uuid.uuid4()
    insert(services, schema.notifications, [
        notification(at, status="sending"), notification(at, status="sending"), notification(at, job_id=job),
        notification(at, key_type="test"), notification(at - timedelta(hours=1)),  # test key / previous day
    ])
    insert(services, schema.notification_history,
           [{c: notification(at, SERVICE_B, "sms")[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}])
    insert(services, schema.ft_notification_status, [{  # a stale fact for a service with no rows that day
        "bst_date": day, "template_id": TEMPLATE, "service_id": SERVICE_C, "job_id": schema.NO_JOB_ID,
        "notification_type": "email", "key_type": "normal", "notification_status": "delivered",
        "notification_count": 9}])
    with services.connect() as conn:
        history.rebuild_ft_notification_status(conn, [day], ["email", "sms"])
    no_job = schema.NO_JOB_ID
    assert facts(services, day) == {
        (SERVICE_A, "email", no_job, "normal", "sending"): 2,
        (SERVICE_A, "email", job, "normal", "delivered"): 1,
        (SERVICE_B, "sms", no_job, "normal", "delivered"): 1,
    }
    with services.begin() as conn:  # every sending becomes delivered: the 'sending' group must disappear
        conn.execute(sa.update(schema.notifications).where(schema.notifications.c.notification_status == "sending")
                     .values(notification_status="delivered"))
    with services.connect() as conn:
        history.rebuild_ft_notification_status(conn, [day], ["email", "sms"])
        history.rebuild_ft_notification_status(conn, [day], ["email", "sms"])  # idempotent
    assert facts(services, day) == {
        (SERVICE_A, "email", no_job, "normal", "delivered"): 2,
        (SERVICE_A, "email", job, "normal", "delivered"): 1,
        (SERVICE_B, "sms", no_job, "normal", "delivered"): 1,
    }
    assert history.fact_days(date(2024, 7, 10), "sms") == [date(2024, 7, d) for d in (9, 8, 7, 6)]
    assert len(history.fact_days(date(2024, 7, 10), "letter")) == 10


# --------------------------------------------------------------------------------------------- deep archive


def test_deep_archive_and_restore_round_trip(services, settings, s3):
    now = datetime(2025, 7, 10, 12, tzinfo=UTC)
    old = datetime(2024, 7, 1, 10, 5, tzinfo=UTC)
    rows = [{c: notification(old + timedelta(minutes=i * 20), status="delivered", rate_multiplier=1.5,
                             postage=None, job_row_number=i)[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}
            for i in range(7)]  # 10:05 … 12:05: three hours
    recent = {c: notification(now - timedelta(days=10))[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS}
    insert(services, schema.notification_history, rows + [recent])
    with services.connect() as conn:
        original = {r["id"]: dict(r) for r in conn.execute(sa.select(schema.notification_history)).mappings()}
        result = history.deep_archive_notification_history(conn, s3, settings.buckets.archive, now, page_size=2,
                                                            max_hours=2)
        assert (result["hours"], result["rows"]) == (2, 6)
        rest = history.deep_archive_notification_history(conn, s3, settings.buckets.archive, now, page_size=2)
        assert (rest["hours"], rest["rows"]) == (1, 1)
        assert ids(services, schema.notification_history) == {recent["id"]}
        manifests = conn.execute(sa.select(schema.deep_archive_manifests)).mappings().all()
    assert sorted(m["row_count"] for m in manifests) == [1, 3, 3] and all(m["deleted_at"] for m in manifests)
    key = result["s3_keys"][0]
    assert key.startswith("notification_history/created_at_date_hour=2024-07-01T10/") and key.endswith(".parquet")
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=settings.buckets.archive, Key=key)["TagSet"]}
    assert tags["contents_deleted"] == "true" and "contents_deleted_at" in tags
    import hashlib
    body = s3.get_object(Bucket=settings.buckets.archive, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == next(m["checksum"] for m in manifests if m["s3_key"] == key)

    # A re-run of a half-finished hour left a second object for 10:00: restore deduplicates by id.
    from orchestration.patterns.archive import export_parquet
    with services.begin() as conn:
        conn.execute(sa.insert(schema.notification_history), [rows[0]])
    with services.connect() as conn:
        export_parquet(conn, history.DEEP_ARCHIVE_EXPORT, {"range_start": old.replace(minute=0),
                                                          "range_end": old.replace(minute=0) + timedelta(hours=1)},
                       s3, settings.buckets.archive, history.hour_prefix(old) + "rerun.parquet")
        conn.execute(sa.delete(schema.notification_history).where(schema.notification_history.c.id == rows[0]["id"]))
        conn.commit()
        counts = history.restore_hour(conn, s3, settings.buckets.archive, old.replace(minute=0))
        assert counts == {"objects": 2, "rows_read": 4, "inserted": 3}
        for hour in (11, 12):
            history.restore_hour(conn, s3, settings.buckets.archive, old.replace(hour=hour, minute=0))
        again = history.restore_hour(conn, s3, settings.buckets.archive, old.replace(minute=0))
        assert again["inserted"] == 0
        restored = {r["id"]: dict(r) for r in conn.execute(sa.select(schema.notification_history)).mappings()}
        counts = history.notification_counts(conn, None, now)
    assert restored == original
    assert counts == {"live": 0, "history": 8, "deep_archived": 0}  # each row counted once


MICROSECOND = timedelta(microseconds=1)


@pytest.mark.parametrize("now, limit", [
    (datetime(2026, 7, 10, 10, 11, tzinfo=UTC), datetime(2025, 7, 10, 10, tzinfo=UTC)),
    (datetime(2026, 7, 10, 10, 0, tzinfo=UTC), datetime(2025, 7, 10, 10, tzinfo=UTC)),  # exactly on the hour
    (datetime(2026, 7, 10, 10, 0, tzinfo=UTC) + MICROSECOND, datetime(2025, 7, 10, 10, tzinfo=UTC)),
    (datetime(2026, 7, 10, 10, 0, tzinfo=UTC) - MICROSECOND, datetime(2025, 7, 10, 9, tzinfo=UTC)),
    (datetime(2024, 3, 1, 0, 30, tzinfo=UTC), datetime(2023, 3, 2, 0, tzinfo=UTC)),  # 365 days across 29 February
])
def test_deep_archive_limit_is_365_days_back_truncated_down_to_the_hour(now, limit):
    assert deep_archive_limit(now) == limit


@pytest.mark.parametrize("now", [
    datetime(2026, 7, 10, 10, 11, tzinfo=UTC),
    datetime(2026, 7, 10, 10, 0, tzinfo=UTC),  # exactly on the hour
    datetime(2026, 7, 10, 10, 0, tzinfo=UTC) + MICROSECOND,
    datetime(2026, 7, 10, 10, 0, tzinfo=UTC) - MICROSECOND,  # the limit is still 09:00
])
@pytest.mark.parametrize("window_end", ["none", "past_the_limit"])
def test_deep_archive_moves_only_whole_hours_before_the_limit(services, settings, s3, now, window_end):
    ten = datetime(2025, 7, 10, 10, tzinfo=UTC)  # 10:00 of the day 365 days back
    created = [ten - timedelta(hours=1) - MICROSECOND, ten - MICROSECOND, ten, ten + MICROSECOND,
               ten + timedelta(minutes=30)]
    rows = insert(services, schema.notification_history,
                  [{c: notification(at)[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS} for at in created])
    limit = deep_archive_limit(now)
    with services.connect() as conn:
        result = history.deep_archive_notification_history(
            conn, s3, settings.buckets.archive, now,
            window_end=None if window_end == "none" else now + timedelta(days=1))
    assert result["limit"] == limit
    assert ids(services, schema.notification_history) == {r["id"] for r in rows if r["created_at"] >= limit}
    assert result["rows"] == sum(1 for r in rows if r["created_at"] < limit)
    # At 10:11, 10:00 and 10:00:00.000001 the 09:00 hour moves; a microsecond before 10:00 it is not whole yet.
    assert result["rows"] == (2 if limit.hour == 10 else 1)


def test_deep_archive_never_deletes_when_counts_differ(services):
    old = datetime(2024, 7, 1, 10, tzinfo=UTC)
    insert(services, schema.notification_history,
           [{c: notification(old)[c] for c in schema.NOTIFICATION_HISTORY_COLUMNS} for _ in range(3)])
    with services.connect() as conn:
        with pytest.raises(CountMismatch):
            delete_exported(conn, history.DEEP_ARCHIVE_EXPORT,
                            {"range_start": old, "range_end": old + timedelta(hours=1)}, expected=2)
    assert len(ids(services, schema.notification_history)) == 3


# --------------------------------------------------------------------------------------------- checks


def test_checks_fail_on_pii_and_pending_letters(services):
    with services.connect() as conn:
        assert history.pii_columns_in(conn, "notification_history") == []
        assert history.pii_columns_in(conn, "inbound_sms_history") == []
        assert history.pending_letters_in_history(conn) == []
    pending = {c: notification(datetime(2024, 1, 1, tzinfo=UTC), notification_type="letter", status="sending")[c]
               for c in schema.NOTIFICATION_HISTORY_COLUMNS}
    insert(services, schema.notification_history, [pending])
    with services.begin() as conn:
        conn.execute(sa.text('ALTER TABLE inbound_sms_history ADD COLUMN "content" text'))
    with services.connect() as conn:
        assert history.pending_letters_in_history(conn) == [str(pending["id"])]
        assert history.pii_columns_in(conn, "inbound_sms_history") == ["content"]
