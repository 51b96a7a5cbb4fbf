"""Letter batches (domain.md §4): deadline, selection, lookup, grouping, naming, commit protocol, faults."""

import base64
import concurrent.futures as cf
import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import boto3
import obstore
import pytest
import sqlalchemy as sa
from botocore.config import Config

from assets import letters as L
from assets.letters import pdfs as P
from orchestration.clock import LONDON, letter_deadline, letter_deadline_on, letter_pdf_folder, print_date
from orchestration.settings import PROJECT_ROOT

UTC = timezone.utc
PRINT_DAY = date(2026, 11, 20)  # a Friday, GMT
AFTER_DEADLINE = datetime(2026, 11, 20, 17, 50, tzinfo=LONDON).astimezone(UTC)


def london(y, mo, d, h, mi, s=0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=LONDON).astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# helpers: real rows in Postgres, real objects in S3
# ---------------------------------------------------------------------------------------------


def add_service(conn, organisation_id=None) -> uuid.UUID:
    service_id = uuid.uuid4()
    conn.execute(sa.text("INSERT INTO services (id, organisation_id) VALUES (:id, :org)"),
                 {"id": service_id, "org": organisation_id or uuid.uuid4()})
    conn.commit()
    return service_id


def add_letter(conn, service_id, created_at, *, postage="second", key_type="normal", status="created",
               billable_units=1, notification_type="letter", reference=None) -> dict:
    letter = {"id": uuid.uuid4(), "service_id": service_id, "created_at": created_at, "postage": postage,
              "key_type": key_type, "status": status, "billable_units": billable_units,
              "type": notification_type, "reference": reference or uuid.uuid4().hex[:16].upper()}
    conn.execute(sa.text("""
        INSERT INTO notifications (id, service_id, template_id, template_version, key_type, notification_type,
                                   notification_status, created_at, reference, billable_units, postage, "to")
        VALUES (:id, :service_id, :template, 1, :key_type, :type, :status, :created_at, :reference,
                :billable_units, :postage, 'synthetic address')"""), {**letter, "template": uuid.uuid4()})
    conn.commit()
    return letter


def put_pdf(s3, settings, letter, body: bytes | None = None) -> str:
    bucket, key = L.pdf_location(settings.buckets, notification_status=letter["status"], key_type=letter["key_type"],
                                 reference=letter["reference"], postage=letter["postage"],
                                 created_at=letter["created_at"])
    s3.put_object(Bucket=bucket, Key=key, Body=b"%PDF-1.7 letter " + letter["id"].bytes if body is None else body)
    return key


def statuses(conn) -> dict:
    rows = conn.execute(sa.text("SELECT id, notification_status FROM notifications")).all()
    conn.commit()
    return dict(rows)


def batches(conn) -> list:
    rows = conn.execute(sa.text("SELECT * FROM letter_batches ORDER BY postage, sequence")).mappings().all()
    conn.commit()
    return [dict(r) for r in rows]


def batch_items(conn) -> dict:
    rows = conn.execute(sa.text("SELECT notification_id, batch_id FROM letter_batch_items")).all()
    conn.commit()
    return dict(rows)


def collate(conn, s3, settings, day=PRINT_DAY, now=AFTER_DEADLINE, **kwargs):
    kwargs.setdefault("reads", P.S3Access.of_settings(settings))
    return L.collate_letters(conn, s3, settings.buckets, day, now, **kwargs)


@pytest.fixture
def conn(engine):
    with engine.connect() as connection:
        yield connection


# ---------------------------------------------------------------------------------------------
# Rule 1: deadline (clock), rule 3: folder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("local, expected_deadline", [
    (datetime(2026, 11, 20, 17, 29), datetime(2026, 11, 19, 17, 30)),
    (datetime(2026, 11, 20, 17, 30), datetime(2026, 11, 20, 17, 30)),
    (datetime(2026, 11, 20, 17, 31), datetime(2026, 11, 20, 17, 30)),
    # BST starts 01:00 UTC on 29 March 2026: the previous day's deadline is GMT, today's is BST.
    (datetime(2026, 3, 29, 17, 29), datetime(2026, 3, 28, 17, 30)),
    (datetime(2026, 3, 29, 17, 30), datetime(2026, 3, 29, 17, 30)),
    (datetime(2026, 3, 29, 17, 31), datetime(2026, 3, 29, 17, 30)),
    # BST ends 01:00 UTC on 25 October 2026.
    (datetime(2026, 10, 25, 17, 29), datetime(2026, 10, 24, 17, 30)),
    (datetime(2026, 10, 25, 17, 31), datetime(2026, 10, 25, 17, 30)),
])
def test_deadline_edges_in_london_time(local, expected_deadline):
    now = local.replace(tzinfo=LONDON).astimezone(UTC)
    expected = expected_deadline.replace(tzinfo=LONDON).astimezone(UTC)
    assert letter_deadline(now) == expected
    assert print_date(now) == expected_deadline.date()


def test_deadline_utc_instants_across_the_clock_change():
    assert letter_deadline(london(2026, 3, 29, 17, 31)) == datetime(2026, 3, 29, 16, 30, tzinfo=UTC)
    assert letter_deadline(london(2026, 3, 29, 17, 29)) == datetime(2026, 3, 28, 17, 30, tzinfo=UTC)
    assert letter_deadline_on(date(2026, 10, 24)) == datetime(2026, 10, 24, 16, 30, tzinfo=UTC)
    assert letter_deadline_on(date(2026, 10, 25)) == datetime(2026, 10, 25, 17, 30, tzinfo=UTC)


@pytest.mark.parametrize("created, folder", [
    (london(2026, 11, 20, 17, 29, 59), date(2026, 11, 20)),
    (london(2026, 11, 20, 17, 30, 0), date(2026, 11, 20)),  # upstream: only *after* 17:30 moves on
    (london(2026, 11, 20, 17, 30, 1), date(2026, 11, 21)),
    (london(2026, 11, 20, 23, 59), date(2026, 11, 21)),
    (datetime(2026, 3, 28, 23, 30, tzinfo=UTC), date(2026, 3, 29)),  # 23:30 GMT, after 17:30
    (datetime(2026, 6, 1, 23, 30, tzinfo=UTC), date(2026, 6, 2)),  # 00:30 BST on 2 June: before 17:30
    (datetime(2026, 6, 1, 16, 31, tzinfo=UTC), date(2026, 6, 2)),  # 17:31 BST
])
def test_pdf_folder_is_the_london_date_plus_one_after_1730(created, folder):
    assert letter_pdf_folder(created) == folder


def test_pdf_file_name_and_locations(settings):
    created = datetime(2026, 11, 20, 9, 5, 7, tzinfo=UTC)
    assert L.pdf_file_name("abc123", "first", created) == "NOTIFY.ABC123.D.1.C.20261120090507.PDF"
    assert L.pdf_file_name("abc123", "rest-of-world", created) == "NOTIFY.ABC123.D.N.C.20261120090507.PDF"
    # BST: the name keeps the UTC time, the folder the London date.
    summer = datetime(2026, 6, 30, 23, 30, tzinfo=UTC)  # 00:30 BST on 1 July
    b = settings.buckets
    assert L.pdf_location(b, notification_status="created", key_type="normal", reference="r1", postage="economy",
                          created_at=summer) == (b.letters_pdf, "2026-07-01/NOTIFY.R1.D.ECONOMY.C.20260630233000.PDF")
    assert L.pdf_location(b, notification_status="created", key_type="test", reference="r1", postage="europe",
                          created_at=summer) == (b.test_letters, "NOTIFY.R1.D.E.C.20260630233000.PDF")
    assert L.pdf_location(b, notification_status="validation-failed", key_type="normal", reference="r1",
                          postage="second", created_at=summer) == (b.invalid_pdf, "NOTIFY.R1.D.2.C.20260630233000.PDF")


# ---------------------------------------------------------------------------------------------
# Rule 2: selection
# ---------------------------------------------------------------------------------------------


def test_selection_at_the_deadline_edges(conn, s3, settings):
    service = add_service(conn)
    before = add_letter(conn, service, london(2026, 11, 20, 17, 29, 59))
    at = add_letter(conn, service, london(2026, 11, 20, 17, 30, 0))
    after = add_letter(conn, service, london(2026, 11, 20, 17, 31))
    for letter in (before, at, after):
        put_pdf(s3, settings, letter)
    result = collate(conn, s3, settings)
    assert result.selected == 1
    assert statuses(conn) == {before["id"]: "sending", at["id"]: "created", after["id"]: "created"}


def test_selection_across_the_clock_change(conn, s3, settings):
    """Print day 29 March 2026 (BST starts): its deadline is 16:30 UTC."""
    service = add_service(conn)
    in_ = add_letter(conn, service, datetime(2026, 3, 29, 16, 29, 59, tzinfo=UTC))
    out = add_letter(conn, service, datetime(2026, 3, 29, 16, 30, tzinfo=UTC))  # 17:30 BST
    for letter in (in_, out):
        put_pdf(s3, settings, letter)
    result = collate(conn, s3, settings, day=date(2026, 3, 29), now=london(2026, 3, 29, 17, 50))
    assert result.deadline == datetime(2026, 3, 29, 16, 30, tzinfo=UTC)
    assert statuses(conn) == {in_["id"]: "sending", out["id"]: "created"}


def test_selection_rules(conn, s3, settings):
    service = add_service(conn)
    t = london(2026, 11, 20, 12, 0)
    chosen = add_letter(conn, service, t)
    straggler = add_letter(conn, service, t - timedelta(days=40))  # no lower bound
    skipped = [
        add_letter(conn, service, t, key_type="team"),
        add_letter(conn, service, t, key_type="test"),
        add_letter(conn, service, t, billable_units=0),
        add_letter(conn, service, t, status="sending"),
        add_letter(conn, service, t, status="validation-failed"),
        add_letter(conn, service, t, notification_type="email"),
    ]
    for letter in [chosen, straggler, *skipped]:
        put_pdf(s3, settings, letter)
    # Already in a batch (e.g. of an earlier print day): never batched again.
    batched = add_letter(conn, service, t)
    put_pdf(s3, settings, batched)
    batch_id = uuid.uuid4()
    conn.execute(sa.text("""INSERT INTO letter_batches (id, print_date, postage, sequence, zip_name, service_id,
                             letter_count, total_bytes, state) VALUES (:id, '2026-11-19', 'second', 1, 'old.zip', :s, 1, 10, 1)"""),
                 {"id": batch_id, "s": service})
    conn.execute(sa.text("INSERT INTO letter_batch_items VALUES (:b, :n, 'k', 10)"), {"b": batch_id, "n": batched["id"]})
    conn.commit()

    selected = L.select_letters(conn, letter_deadline_on(PRINT_DAY))
    assert [letter.id for letter in selected] == [straggler["id"], chosen["id"]]  # ordered by created_at
    result = collate(conn, s3, settings)
    assert result.letters_sending == 2
    after = statuses(conn)
    assert after[chosen["id"]] == after[straggler["id"]] == "sending"
    assert [after[letter["id"]] for letter in skipped] == ["created", "created", "created", "sending",
                                                           "validation-failed", "created"]
    assert batch_items(conn)[batched["id"]] == batch_id


# ---------------------------------------------------------------------------------------------
# Rules 4 and 5: grouping, naming
# ---------------------------------------------------------------------------------------------


def _found(service, size, postage="second", n=0) -> P.FoundPdf:
    letter = L.Letter(uuid.UUID(int=n + 1), service, None, f"R{n}", postage, 1, datetime(2026, 1, 1, tzinfo=UTC))
    return P.FoundPdf(letter, f"2026-01-01/NOTIFY.R{n}.PDF", size, "0" * 64, Path("/nonexistent"))


def test_grouping_limits():
    a, b = uuid.uuid4(), uuid.uuid4()
    items = [_found(a, 10, n=i) for i in range(7)]  # 7 letters, limit 3 → 3, 3, 1
    items += [_found(b, 10, n=10)]  # another service → own batch
    items += [_found(b, 10, postage="first", n=11)]  # another postage → own batch
    groups = L.group_into_batches(items, max_letters=3, max_bytes=1000)
    assert [len(g) for g in groups] == [3, 3, 1, 1, 1]
    assert all(len({i.letter.service_id for i in g}) == 1 and len({i.letter.postage for i in g}) == 1 for g in groups)

    # Bytes: 40 + 40 fits 100, the third would exceed; an oversized PDF sits alone, even first.
    sized = [_found(a, 500, n=0), _found(a, 40, n=1), _found(a, 40, n=2), _found(a, 40, n=3),
             _found(a, 500, n=4), _found(a, 60, n=5), _found(a, 40, n=6)]
    groups = L.group_into_batches(sized, max_letters=500, max_bytes=100)
    assert [[i.size for i in g] for g in groups] == [[500], [40, 40], [40], [500], [60, 40]]
    assert L.group_into_batches([], 3, 100) == []


def test_grouping_real_limits_500_letters_and_40_mib():
    service = uuid.uuid4()
    groups = L.group_into_batches([_found(service, 1000, n=i) for i in range(1001)])
    assert [len(g) for g in groups] == [500, 500, 1]
    mib = 1024 * 1024
    groups = L.group_into_batches([_found(service, 20 * mib, n=0), _found(service, 20 * mib, n=1),
                                   _found(service, 1, n=2), _found(service, 41 * mib, n=3)])
    assert [[i.size for i in g] for g in groups] == [[20 * mib, 20 * mib], [1], [41 * mib]]


def test_batch_naming():
    keys = ["2026-11-20/NOTIFY.A.D.2.C.1.PDF", "2026-11-20/NOTIFY.B.D.2.C.1.PDF"]
    expected_hash = base64.urlsafe_b64encode(hashlib.sha512("".join(keys).encode()).digest()).decode()[:20]
    assert L.batch_hash(keys) == expected_hash and len(expected_hash) == 20
    service, org = uuid.UUID(int=1), uuid.UUID(int=2)
    assert L.batch_zip_name(PRINT_DAY, "economy", 7, keys, service, org) == (
        f"NOTIFY.2026-11-20.ECONOMY.007.{expected_hash}.{service}.{org}.ZIP")
    assert [L.POSTAGE_CODES[p] for p in ("first", "second", "economy", "europe", "rest-of-world")] == \
        ["1", "2", "ECONOMY", "E", "N"]


def test_sequence_continues_from_the_highest_existing(conn, s3, settings):
    service = add_service(conn)
    conn.execute(sa.text("""INSERT INTO letter_batches (id, print_date, postage, sequence, zip_name, service_id,
                             letter_count, total_bytes, state) VALUES (:id, :d, 'second', 7, 'earlier.zip', :s, 1, 1, 1)"""),
                 {"id": uuid.uuid4(), "d": PRINT_DAY, "s": service})
    conn.commit()
    letters = [add_letter(conn, service, london(2026, 11, 20, 10, i)) for i in range(3)]
    letters.append(add_letter(conn, service, london(2026, 11, 20, 10, 5), postage="first"))
    for letter in letters:
        put_pdf(s3, settings, letter)
    collate(conn, s3, settings, max_letters=2)
    seqs = sorted((b["postage"], b["sequence"]) for b in batches(conn))
    assert seqs == [("first", 1), ("second", 7), ("second", 8), ("second", 9)]
    names = {b["sequence"]: b["zip_name"] for b in batches(conn) if b["postage"] == "second"}
    assert names[8].startswith("NOTIFY.2026-11-20.2.008.") and names[9].startswith("NOTIFY.2026-11-20.2.009.")


def test_step_3_moves_only_still_created_letters_of_the_given_batches(conn, s3, settings, tmp_path):
    """Step 3 on planned batches, with the letters known (the collation) or read from the items
    (leftovers): a letter cancelled after planning stays cancelled; other batches are untouched."""
    service = add_service(conn)
    letters = [add_letter(conn, service, london(2026, 11, 20, 10, i)) for i in range(6)]
    for letter in letters:
        put_pdf(s3, settings, letter)
    selected = L.select_letters(conn, L.deadline_for_print_date(PRINT_DAY, AFTER_DEADLINE))
    gathered = P.gather_pdfs(P.S3Access.of_settings(settings), settings.buckets.letters_pdf, selected, tmp_path)
    first, second, third = L.plan_batches(conn, PRINT_DAY, gathered.found, max_letters=2)
    cancelled = first.items[1].letter.id
    conn.execute(sa.text("UPDATE notifications SET notification_status = 'cancelled' WHERE id = :id"), {"id": cancelled})
    conn.commit()
    assert L.complete_batches(conn, [first.id], [i.letter.id for i in first.items]) == 1
    assert L.complete_batches(conn, [second.id]) == 2
    after = statuses(conn)
    assert after[cancelled] == "cancelled" and after[first.items[0].letter.id] == "sending"
    assert all(after[i.letter.id] == "sending" for i in second.items)
    assert all(after[i.letter.id] == "created" for i in third.items)
    assert {b["id"]: b["state"] for b in batches(conn)} == {first.id: 1, second.id: 1, third.id: 0}
    assert L.complete_batches(conn, [first.id, second.id]) == 0  # idempotent


# ---------------------------------------------------------------------------------------------
# The collation end to end
# ---------------------------------------------------------------------------------------------


def test_collation_end_to_end_and_idempotent_rerun(conn, s3, settings):
    org = uuid.uuid4()
    s1, s2 = add_service(conn, org), add_service(conn)
    t = london(2026, 11, 20, 9, 0)
    good = [add_letter(conn, s1, t + timedelta(minutes=i), postage=p, billable_units=i + 1)
            for i, p in enumerate(["first", "first", "second", "economy", "europe", "rest-of-world"])]
    good.append(add_letter(conn, s2, t, postage="first", billable_units=2))
    keys = {letter["id"]: put_pdf(s3, settings, letter) for letter in good}
    missing = add_letter(conn, s1, t)
    empty = add_letter(conn, s1, t)
    put_pdf(s3, settings, empty, b"")
    not_pdf = add_letter(conn, s1, t)
    put_pdf(s3, settings, not_pdf, b"<html>oops</html>")
    # A folder with many letters goes through the folder listing (threshold lowered to 2).
    result = collate(conn, s3, settings, folder_listing_min=2)

    assert result.selected == 10
    assert set(result.missing) == {missing["id"]}, (result.missing, result.lookup_errors, result.invalid)
    assert set(result.invalid) == {empty["id"], not_pdf["id"]}
    after = statuses(conn)
    assert all(after[letter["id"]] == "sending" for letter in good)
    assert after[missing["id"]] == after[empty["id"]] == after[not_pdf["id"]] == "created"
    rows = batches(conn)
    # first: s1 (2 letters) and s2 (1); second, economy, europe, rest-of-world: one each.
    assert sorted((b["postage"], b["letter_count"]) for b in rows) == [
        ("economy", 1), ("europe", 1), ("first", 1), ("first", 2), ("rest-of-world", 1), ("second", 1)]
    assert all(b["state"] == 1 and b["uploaded_at"] is not None for b in rows)
    first_s1 = next(b for b in rows if b["postage"] == "first" and b["letter_count"] == 2)
    assert first_s1["organisation_id"] == org and first_s1["zip_name"].endswith(f".{s1}.{org}.ZIP")

    bucket = settings.buckets.letter_batches
    zip_obj = s3.get_object(Bucket=bucket, Key=f"2026-11-20/{first_s1['zip_name']}")
    assert zip_obj["ServerSideEncryption"] == "AES256"
    archive = zipfile.ZipFile(io.BytesIO(zip_obj["Body"].read()))
    members = {info.filename: info for info in archive.infolist()}
    first_letters = [letter for letter in good if letter["postage"] == "first" and letter["service_id"] == s1]
    assert set(members) == {keys[letter["id"]].split("/")[1] for letter in first_letters}  # at the zip root
    assert all(info.compress_type == zipfile.ZIP_STORED for info in members.values())
    assert archive.read(keys[first_letters[0]["id"]].split("/")[1]) == b"%PDF-1.7 letter " + first_letters[0]["id"].bytes
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"2026-11-20/{first_s1['zip_name']}.manifest.json")["Body"].read())
    assert {m["notification_id"] for m in manifest["letters"]} == {str(letter["id"]) for letter in first_letters}
    body = b"%PDF-1.7 letter " + first_letters[0]["id"].bytes
    entry = next(m for m in manifest["letters"] if m["notification_id"] == str(first_letters[0]["id"]))
    assert entry == {"notification_id": str(first_letters[0]["id"]), "pdf_key": keys[first_letters[0]["id"]],
                     "size_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    volumes = dict(((p, (l_, s_)) for p, l_, s_ in conn.execute(sa.text(
        "SELECT postage, letters, sheets FROM letter_print_volumes WHERE print_date = :d"), {"d": PRINT_DAY})))
    conn.commit()
    assert volumes == {"first": (3, 1 + 2 + 2), "second": (1, 3), "economy": (1, 4), "europe": (1, 5),
                       "rest-of-world": (1, 6)}
    assert {p: (v["letters"], v["sheets"]) for p, v in result.volumes.items()} == volumes

    # Rerun: nothing new, nothing duplicated, same volumes.
    before = (batches(conn), batch_items(conn))
    again = collate(conn, s3, settings)
    assert again.batches == [] and again.letters_sending == 0
    assert (batches(conn), batch_items(conn)) == before

    # The missing PDF arrives: the next run batches it, continuing the sequence.
    put_pdf(s3, settings, missing)
    third = collate(conn, s3, settings)
    assert third.letters_sending == 1 and statuses(conn)[missing["id"]] == "sending"
    assert max(b["sequence"] for b in batches(conn) if b["postage"] == "second") == 2


UNBATCHABLE_CASES = [  # (column changes, reasons)
    ({"reference": None}, ["no_reference"]),
    ({"postage": None}, ["no_postage"]),
    ({"billable_units": 0}, ["no_sheets"]),
    ({"billable_units": -2}, ["no_sheets"]),
    ({"reference": "../A B?%#é/x"}, ["reference_not_a_key"]),
    ({"reference": "A B"}, ["reference_not_a_key"]),
    ({"reference": "ABC/DEF"}, ["reference_not_a_key"]),
    ({"reference": "ABC\n"}, ["reference_not_a_key"]),
    ({"reference": "A" * 976}, ["reference_not_a_key"]),  # its PDF key would pass S3's 1,024 bytes
    ({"reference": None, "postage": None, "billable_units": 0}, ["no_reference", "no_postage", "no_sheets"]),
]


def test_a_letter_no_run_can_collate_is_named_with_its_reasons(conn, s3, settings):
    """Issue 18 item 9: not "no PDF yet" on every run, but named by id and reason, run after run."""
    service = add_service(conn)
    t = london(2026, 11, 20, 9, 0)
    good = add_letter(conn, service, t)
    put_pdf(s3, settings, good)
    expected = []
    for i, (changes, reasons) in enumerate(UNBATCHABLE_CASES):
        stuck = add_letter(conn, service, t + timedelta(minutes=i + 1))
        put_pdf(s3, settings, stuck)  # its PDF under the original reference: found or not, it is not batched
        assignments = ", ".join(f"{column} = :{column}" for column in changes)
        conn.execute(sa.text(f"UPDATE notifications SET {assignments} WHERE id = :id"), {**changes, "id": stuck["id"]})
        conn.commit()
        expected.append((stuck["id"], reasons))
    for folder_listing_min in (1, 100):
        messages = []
        result = collate(conn, s3, settings, echo=messages.append, folder_listing_min=folder_listing_min)
        assert result.unbatchable == expected
        assert result.missing == [] and result.invalid == [] and result.lookup_errors == []
        named = " ".join(m for m in messages if "can never be collated" in m)
        for notification_id, reasons in expected:
            assert str(notification_id) in named and all(f"({reason};" in named for reason in reasons)
    assert statuses(conn) == {good["id"]: "sending", **{i: "created" for i, _ in expected}}
    assert L.unbatchable_letters(conn, letter_deadline_on(PRINT_DAY)) == expected


def test_a_reference_of_key_safe_punctuation_is_collated(conn, s3, settings):
    service = add_service(conn)
    letter = add_letter(conn, service, london(2026, 11, 20, 9, 0), reference="r-1_x.Y(2)*'!" * 4)
    put_pdf(s3, settings, letter)
    assert collate(conn, s3, settings).letters_sending == 1 and statuses(conn)[letter["id"]] == "sending"
    assert L.keys.MAX_REFERENCE_LENGTH == 975


def test_a_future_print_day_is_refused(conn, s3, settings):
    with pytest.raises(ValueError, match="not collatable yet"):
        collate(conn, s3, settings, day=PRINT_DAY, now=london(2026, 11, 20, 17, 29))


# ---------------------------------------------------------------------------------------------
# Rule 3: reading through obstore (what is a PDF, listings, refusals), zips equal to the PDFs
# ---------------------------------------------------------------------------------------------


def test_reads_fetch_exact_bytes_and_sort_out_missing_refused_and_unreachable(s3, settings):
    bucket = settings.buckets.letters_pdf
    bodies = {"2026-11-20/NOTIFY.A.PDF": b"%PDF-1.7\r\n\r\nHTTP/1.1 200 OK\r\n" + bytes(range(256)) * 3,
              "2026-11-20/NOTIFY.BIG.PDF": b"%PDF-1.7 " + os.urandom(300_000),
              "2026-11-20/odd name +=~é.PDF": b"%PDF odd",
              "2026-11-20/NOTIFY.EMPTY.PDF": b""}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body, ServerSideEncryption="AES256")
    store = P.S3Access.of_settings(settings).store(bucket)
    for _ in range(2):  # the second round reuses the pooled connections
        assert {key: bytes(obstore.get(store, key).bytes()) for key in bodies} == bodies
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "2026-11-20/NOTIFY.NONE.PDF")
    wrong = replace(P.S3Access.of_settings(settings), secret_access_key="not-the-secret").store(bucket)
    with pytest.raises(P.REFUSED):
        obstore.get(wrong, "2026-11-20/NOTIFY.A.PDF")
    dead = P.S3Access("http://127.0.0.1:9", "us-east-1", "x", "y").store(bucket)
    with pytest.raises(P.S3Unreachable):
        P.locate_pdfs(dead, [L.Letter(uuid.uuid4(), uuid.uuid4(), None, "A", "second", 1, london(2026, 11, 20, 9, 0))])


def test_folder_listing_follows_continuation_pages(s3, settings):
    bucket = settings.buckets.letters_pdf
    keys = [f"2026-11-20/NOTIFY.K{i:05}.PDF" for i in range(1_005)]
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"%PDF"), keys))
    s3.put_object(Bucket=bucket, Key="2026-11-21/NOTIFY.OTHER.PDF", Body=b"%PDF")
    s3.put_object(Bucket=bucket, Key="2026-11-200/NOTIFY.NEIGHBOUR.PDF", Body=b"%PDF")  # not in the folder
    assert P.list_folder(P.S3Access.of_settings(settings).store(bucket), "2026-11-20") == [(key, 4) for key in keys]


SUFFIX_CASES = [  # (objects under the letter's prefix, the one batched)
    ((".PDF",), ".PDF"),
    ((".pdf",), ".pdf"),
    ((".ZIP",), None),  # PDF bytes, but not a PDF's key: never batched
    ((".zip",), None),
    ((".PDF.zip",), None),
    ((".ZIP", ".pdf"), ".pdf"),  # the first object under the prefix is passed over for the first PDF
]


def test_only_a_key_ending_in_pdf_is_a_letters_pdf(conn, s3, settings):
    """§4.4 rule 3: the first object under the prefix whose key ends in `.pdf`, in any case; a letter
    with none has no PDF yet. Both lookups: the folder listed once, then each letter's prefix alone."""
    service = add_service(conn)
    for day, folder_listing_min in ((20, 1), (19, 100)):
        expected = {}
        for i, (suffixes, batched) in enumerate(SUFFIX_CASES):
            letter = add_letter(conn, service, london(2026, 11, day, 10, i))
            _, key = L.pdf_location(settings.buckets, notification_status="created", key_type="normal",
                                    reference=letter["reference"], postage="second", created_at=letter["created_at"])
            stem = key.removesuffix(".PDF")
            for suffix in suffixes:
                s3.put_object(Bucket=settings.buckets.letters_pdf, Key=stem + suffix,
                              Body=b"%PDF-1.7 " + suffix.encode())
            expected[letter["id"]] = stem + batched if batched else None
        result = collate(conn, s3, settings, folder_listing_min=folder_listing_min)
        keys = {i.letter.id: i.key for b in result.batches for i in b.items}
        assert keys == {i: key for i, key in expected.items() if key}, folder_listing_min
        assert {i for i, key in expected.items() if key is None} <= set(result.missing)
        after = statuses(conn)
        assert all(after[i] == ("sending" if key else "created") for i, key in expected.items())


def test_zips_hold_the_pdfs_byte_for_byte_and_manifests_their_sha256(conn, s3, settings, monkeypatch):
    """Across several spool files (chunks of 3 letters) and batches (limit 4 letters), every zip entry
    is the PDF's exact bytes and every manifest line carries the right size and sha256."""
    monkeypatch.setattr(P, "FETCH_CHUNK", 3)
    service = add_service(conn)
    bodies = {}
    for i in range(11):
        letter = add_letter(conn, service, london(2026, 11, 20, 10, i))
        body = b"%PDF-1.7 " + os.urandom([10, 70_000, 1][i % 3] + i)
        bodies[put_pdf(s3, settings, letter, body)] = (letter["id"], body)
    result = collate(conn, s3, settings, max_letters=4, folder_listing_min=2)
    assert len(result.batches) == 3 and result.letters_sending == 11
    seen = set()
    for batch in batches(conn):
        day, bucket = batch["print_date"], settings.buckets.letter_batches
        archive = zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=bucket, Key=L.zip_key(day, batch["zip_name"]))["Body"].read()))
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=L.manifest_key(day, batch["zip_name"]))["Body"].read())
        assert archive.testzip() is None
        assert len(archive.infolist()) == len(manifest["letters"]) == batch["letter_count"]
        for entry in manifest["letters"]:
            notification_id, body = bodies[entry["pdf_key"]]
            assert entry == {"notification_id": str(notification_id), "pdf_key": entry["pdf_key"],
                             "size_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            assert archive.read(entry["pdf_key"].split("/")[1]) == body
            seen.add(entry["pdf_key"])
        assert manifest["total_bytes"] == batch["total_bytes"] == sum(e["size_bytes"] for e in manifest["letters"])
    assert seen == set(bodies)


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


def _two_services_of_letters(conn, s3, settings, per_service=3):
    letters = []
    for _ in range(2):
        service = add_service(conn)
        for i in range(per_service):
            letter = add_letter(conn, service, london(2026, 11, 20, 11, i))
            put_pdf(s3, settings, letter)
            letters.append(letter)
    return letters


def _assert_no_sending_without_zip(conn, s3, settings):
    rows = conn.execute(sa.text("""
        SELECT DISTINCT b.print_date, b.zip_name, b.state FROM notifications n
        JOIN letter_batch_items i ON i.notification_id = n.id JOIN letter_batches b ON b.id = i.batch_id
        WHERE n.notification_status = 'sending'""")).all()
    unbatched = conn.execute(sa.text("""SELECT count(*) FROM notifications n WHERE notification_status = 'sending'
        AND NOT EXISTS (SELECT 1 FROM letter_batch_items i WHERE i.notification_id = n.id)""")).scalar()
    conn.commit()
    assert unbatched == 0
    for day, name, state in rows:
        assert state == 1
        s3.head_object(Bucket=settings.buckets.letter_batches, Key=L.zip_key(day, name))


def _client_cut_after(settings, good_zip_uploads: int):
    """A real client of the test S3 whose connection is cut (requests sent to a closed port) once
    `good_zip_uploads` zips went through: S3 becomes unreachable in the middle of the uploads."""
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                          aws_access_key_id=settings.aws_access_key_id,
                          aws_secret_access_key=settings.aws_secret_access_key,
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    zips = []

    def cut(request, **_):
        if len(zips) >= good_zip_uploads:
            request.url = request.url.replace(settings.s3_endpoint, "http://127.0.0.1:9")
        elif request.url.split("?")[0].endswith(".ZIP"):
            zips.append(request.url)

    client.meta.events.register("before-send.s3.PutObject", cut)
    return client


def test_s3_unreachable_mid_collation_then_next_run_completes(conn, s3, settings):
    letters = _two_services_of_letters(conn, s3, settings)
    with pytest.raises(RuntimeError, match="failed while uploading"):
        collate(conn, _client_cut_after(settings, good_zip_uploads=1), settings, workers=1)
    # The first batch went up and was marked; the second stays planned with its letters created.
    assert sorted(b["state"] for b in batches(conn)) == [0, 1]
    assert sorted(statuses(conn).values()) == ["created"] * 3 + ["sending"] * 3
    _assert_no_sending_without_zip(conn, s3, settings)

    result = collate(conn, s3, settings)
    assert result.leftovers_discarded == 1 and result.leftovers_finished == 0
    assert set(statuses(conn).values()) == {"sending"}
    assert len(batches(conn)) == 2 and {b["state"] for b in batches(conn)} == {1}
    assert len(batch_items(conn)) == len(letters)
    _assert_no_sending_without_zip(conn, s3, settings)


def test_s3_unreachable_fails_the_run_and_changes_nothing(conn, s3, settings):
    _two_services_of_letters(conn, s3, settings)
    dead = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    dead_reads = P.S3Access("http://127.0.0.1:9", "us-east-1", "x", "y")
    with pytest.raises(P.S3_UNREACHABLE):
        collate(conn, s3, settings, reads=dead_reads, folder_listing_min=100)
    with pytest.raises(P.S3_UNREACHABLE):
        collate(conn, s3, settings, reads=dead_reads, folder_listing_min=1)
    assert set(statuses(conn).values()) == {"created"} and batches(conn) == []
    # Uploads to an unreachable endpoint: the run fails, the letters stay created.
    with pytest.raises(RuntimeError, match="failed while uploading"):
        collate(conn, dead, settings)
    assert set(statuses(conn).values()) == {"created"}
    result = collate(conn, s3, settings)
    assert set(statuses(conn).values()) == {"sending"} and result.leftovers_discarded == 2
    _assert_no_sending_without_zip(conn, s3, settings)


def test_sigkill_between_upload_and_status_update_then_next_run_finishes(conn, s3, settings, database_url):
    letters = _two_services_of_letters(conn, s3, settings)
    # The fault is a hook passed to the collation: the child SIGKILLs itself once the first zip is stored.
    script = (
        "import os, signal; from datetime import date, datetime;"
        "from assets.letters import collate_letters; from orchestration.settings import get_settings;"
        "from resources.postgres import make_engine;"
        "s = get_settings();"
        "conn = make_engine(s.database_url).connect();"
        "kill = lambda batch: os.kill(os.getpid(), signal.SIGKILL);"
        f"collate_letters(conn, s.s3_client(), s.buckets, date(2026, 11, 20), datetime.fromisoformat('{AFTER_DEADLINE.isoformat()}'),"
        " workers=1, after_upload=kill)"
    )
    env = {**os.environ, "PSO_DATABASE_URL": database_url}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    planned = batches(conn)
    assert len(planned) == 2 and {b["state"] for b in planned} == {0}
    assert set(statuses(conn).values()) == {"created"}  # uploaded, but never marked
    uploaded = [b for b in planned if L.object_exists(s3, settings.buckets.letter_batches,
                                                       L.zip_key(b["print_date"], b["zip_name"]))]
    assert len(uploaded) >= 1

    result = collate(conn, s3, settings)
    assert result.leftovers_finished == len(uploaded)
    assert result.leftovers_finished + result.leftovers_discarded == 2
    assert set(statuses(conn).values()) == {"sending"}
    after = batches(conn)
    assert len(after) == 2 and {b["state"] for b in after} == {1}
    assert {b["id"] for b in uploaded} <= {b["id"] for b in after}  # finished, not rebuilt
    assert len(batch_items(conn)) == len(letters)
    _assert_no_sending_without_zip(conn, s3, settings)
    assert collate(conn, s3, settings).batches == []


# ---------------------------------------------------------------------------------------------
# Dagster: materialize a partition, checks, schedules, the alert job
# ---------------------------------------------------------------------------------------------


def test_materialize_print_day_partition_with_checks(conn, s3, settings, resources, monkeypatch):
    from dagster import DagsterInstance, materialize

    letters = _two_services_of_letters(conn, s3, settings, per_service=2)
    monkeypatch.setenv("PSO_NOW", AFTER_DEADLINE.isoformat())
    result = materialize([L.letter_batches_asset, L.no_letter_sending_without_zip, L.no_letter_in_two_batches,
                          L.every_waiting_letter_collatable],
                         partition_key="2026-11-20", resources=resources, instance=DagsterInstance.ephemeral())
    assert result.success
    metadata = result.asset_materializations_for_node("letter_batches")[0].metadata
    assert metadata["letters_sending"].value == len(letters)
    assert metadata["letters_second"].value == len(letters) and metadata["sheets_second"].value == len(letters)
    assert metadata["batches_uploaded"].value == 2 and metadata["letters_unbatchable"].value == 0
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"no_letter_sending_without_zip": True, "no_letter_in_two_batches": True,
                      "every_waiting_letter_collatable": True}

    # A letter no run can collate: the run's metadata and the check name it, with its reason.
    stuck = add_letter(conn, letters[0]["service_id"], london(2026, 11, 20, 9, 0), reference="../A B?%#é/x")
    named = materialize([L.letter_batches_asset, L.every_waiting_letter_collatable], partition_key="2026-11-20",
                        resources=resources, instance=DagsterInstance.ephemeral())
    metadata = named.asset_materializations_for_node("letter_batches")[0].metadata
    expected = [{"notification_id": str(stuck["id"]), "reasons": ["reference_not_a_key"]}]
    assert metadata["unbatchable_letters"].value == expected and metadata["letters_unbatchable_reference_not_a_key"].value == 1
    evaluation = named.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.severity.value == "WARN"
    assert evaluation.metadata["unbatchable_letters"].value == expected
    conn.execute(sa.text("DELETE FROM notifications WHERE id = :id"), {"id": stuck["id"]})
    conn.commit()

    # A letter marked sending outside any batch fails the check (named by id).
    upstream = add_letter(conn, letters[0]["service_id"], london(2026, 11, 1, 8, 0), status="sending")
    conn.execute(sa.text("UPDATE notifications SET sent_by = 'dvla', sent_at = '2026-11-02' WHERE id = :id"),
                 {"id": upstream["id"]})
    stray = add_letter(conn, letters[0]["service_id"], london(2026, 11, 20, 8, 0))
    conn.execute(sa.text("UPDATE notifications SET notification_status = 'sending', sent_by = 'dvla', sent_at = now() WHERE id = :id"),
                 {"id": stray["id"]})
    conn.commit()
    rerun = materialize([L.letter_batches_asset, L.no_letter_sending_without_zip], partition_key="2026-11-20",
                        resources=resources, instance=DagsterInstance.ephemeral(), raise_on_error=False)
    evaluation = rerun.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.metadata["notification_ids"].value == [str(stray["id"])]


def test_materialize_refuses_a_print_day_before_its_deadline(settings, resources, monkeypatch):
    from dagster import DagsterInstance, materialize

    monkeypatch.setenv("PSO_NOW", london(2026, 11, 20, 17, 0).isoformat())
    result = materialize([L.letter_batches_asset], partition_key="2026-11-20", resources=resources,
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success


def test_schedules_target_the_right_partition_and_times():
    from dagster import build_schedule_context

    from orchestration.definitions import defs
    from orchestration.partitions import print_days_partitions
    from schedules.letters import letter_collation_schedule, letters_still_created_alert_schedule

    assert letter_collation_schedule.cron_schedule == "50 17 * * *"
    assert letter_collation_schedule.execution_timezone == "Europe/London"
    tick = datetime(2026, 3, 29, 17, 50, tzinfo=LONDON)
    context = build_schedule_context(scheduled_execution_time=tick, repository_def=defs.get_repository_def())
    request = letter_collation_schedule.evaluate_tick(context).run_requests[0]
    assert request.partition_key == "2026-03-29" and request.run_key == "letter_collation:2026-03-29"
    assert defs.resolve_job_def("letter_collation").partitions_def == print_days_partitions
    assert letters_still_created_alert_schedule.cron_schedule == "0 7 * * 1-5"
    assert letters_still_created_alert_schedule.execution_timezone == "UTC"


def test_letters_still_created_alert(conn, resources, monkeypatch):
    service = add_service(conn)
    monday_7am = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # previous day's deadline: Sun 22 Nov 17:30 GMT
    stuck = add_letter(conn, service, datetime(2026, 11, 22, 17, 29, tzinfo=UTC))
    old = add_letter(conn, service, datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    add_letter(conn, service, datetime(2026, 11, 22, 17, 30, tzinfo=UTC))  # at the deadline: not late yet
    add_letter(conn, service, datetime(2026, 11, 20, 9, 0, tzinfo=UTC), key_type="team")
    add_letter(conn, service, datetime(2026, 11, 20, 9, 0, tzinfo=UTC), status="sending")

    messages = []
    assert L.record_letters_still_created_alert(conn, monday_7am, echo=messages.append) == 2
    row = conn.execute(sa.text("SELECT kind, message, details FROM alerts")).one()
    conn.commit()
    assert row.kind == "letters_still_created"
    assert row.details["count"] == 2 and row.details["notification_ids"] == [str(old["id"]), str(stuck["id"])]
    assert "synthetic address" not in row.message and str(stuck["id"]) in row.message and messages == [row.message]

    # The job, as the schedule runs it.
    monkeypatch.setenv("PSO_NOW", monday_7am.isoformat())
    result = L.letters_still_created_alert_job.execute_in_process(resources=resources)
    assert result.success and result.output_for_node("check_letters_still_created") == 2
    assert conn.execute(sa.text("SELECT count(*) FROM alerts WHERE kind = 'letters_still_created'")).scalar() == 2
    conn.commit()
    monkeypatch.setenv("PSO_NOW", datetime(2026, 11, 2, 7, 0, tzinfo=UTC).isoformat())
    assert L.letters_still_created_alert_job.execute_in_process(resources=resources).output_for_node(
        "check_letters_still_created") == 0


# ---------------------------------------------------------------------------------------------
# Returned letters, contact lists
# ---------------------------------------------------------------------------------------------


def test_returned_letter_summary(conn, resources):
    from dagster import DagsterInstance, materialize

    s1, s2 = add_service(conn), add_service(conn)
    for service, day, count in [(s1, date(2026, 11, 1), 2), (s1, date(2026, 11, 10), 3), (s2, date(2026, 11, 5), 1)]:
        for _ in range(count):
            conn.execute(sa.text("INSERT INTO returned_letters (service_id, notification_id, reported_at) "
                                 "VALUES (:s, :n, :d)"), {"s": service, "n": uuid.uuid4(), "d": day})
    conn.commit()
    rows, latest = L.returned_letter_summary(conn)
    assert rows == [(s1, date(2026, 11, 10), 3), (s2, date(2026, 11, 5), 1), (s1, date(2026, 11, 1), 2)]
    assert latest == {s1: date(2026, 11, 10), s2: date(2026, 11, 5)}
    assert L.returned_letter_summary(conn, s2) == ([(s2, date(2026, 11, 5), 1)], {s2: date(2026, 11, 5)})
    result = materialize([L.returned_letter_summary_asset], resources=resources, instance=DagsterInstance.ephemeral())
    metadata = result.asset_materializations_for_node("returned_letter_summary")[0].metadata
    assert metadata["returned_letters"].value == 6 and metadata["most_recent_report"].value == "2026-11-10"


def test_contact_list_archive_deletes_the_object(conn, s3, settings, resources):
    from dagster import DagsterInstance, materialize

    bucket = settings.buckets.contact_lists
    service = add_service(conn)
    rows = [["address_line_1", "postcode"], ["1 Test Street", "SW1A 1AA"], ["2 Test Street", "SW1A 2AA"]]
    list_id = L.store_contact_list(conn, s3, bucket, service, "addresses.csv", "letter", rows)
    key = conn.execute(sa.text("SELECT s3_key FROM service_contact_list WHERE id = :id"), {"id": list_id}).scalar()
    conn.commit()
    stored = s3.get_object(Bucket=bucket, Key=key)
    assert stored["ServerSideEncryption"] == "AES256"
    assert stored["Body"].read().decode().splitlines()[1] == "1 Test Street,SW1A 1AA"

    assert L.archive_contact_list(conn, s3, bucket, list_id) is True
    assert not L.object_exists(s3, bucket, key)
    assert conn.execute(sa.text("SELECT archived FROM service_contact_list WHERE id = :id"), {"id": list_id}).scalar()
    conn.commit()
    assert L.archive_contact_list(conn, s3, bucket, list_id) is True  # idempotent
    assert L.archive_contact_list(conn, s3, bucket, uuid.uuid4()) is False

    # The sweep asset finishes an archive whose delete never happened, and reports a live list without CSV.
    half = L.store_contact_list(conn, s3, bucket, service, "b.csv", "letter", rows)
    conn.execute(sa.text("UPDATE service_contact_list SET archived = true WHERE id = :id"), {"id": half})
    orphan = uuid.uuid4()
    conn.execute(sa.text("""INSERT INTO service_contact_list (id, service_id, original_file_name, row_count,
                             template_type, s3_key) VALUES (:id, :s, 'c.csv', 1, 'letter', 'missing.csv')"""),
                 {"id": orphan, "s": service})
    conn.commit()
    result = materialize([L.contact_list_objects_asset], resources=resources, instance=DagsterInstance.ephemeral())
    metadata = result.asset_materializations_for_node("contact_list_objects")[0].metadata
    assert metadata["objects_deleted"].value == 1 and metadata["live_list_ids_without_object"].value == [str(orphan)]
    assert not L.object_exists(s3, bucket, L.contact_list_key(service, half))


# ---------------------------------------------------------------------------------------------
# The synthetic generator feeds the collation
# ---------------------------------------------------------------------------------------------


def test_generator_letters_collate_with_the_planted_faults(database_url, conn, s3, settings):
    from orchestration.synthetic import seed_all

    now = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
    seed_all(database_url, scale=0.5, s3=s3, settings=settings, now=now,
             families=["orchestration.synthetic.letters"], echo=lambda *_: None)
    kinds = conn.execute(sa.text("""SELECT count(DISTINCT postage), count(*) FILTER (WHERE billable_units = 0),
        count(DISTINCT key_type) FROM notifications WHERE notification_type = 'letter'""")).one()
    conn.commit()
    assert kinds == (5, kinds[1], 3) and kinds[1] >= 1
    result = collate(conn, s3, settings, day=date(2026, 11, 20), now=now)
    assert len(result.missing) == 3 and len(result.invalid) == 2 and result.letters_sending > 50
    _assert_no_sending_without_zip(conn, s3, settings)
    assert conn.execute(sa.text("SELECT count(*) FROM returned_letters")).scalar() >= 1
    assert conn.execute(sa.text("SELECT count(*) FROM service_contact_list")).scalar() == 1


def test_demo_data_of_both_notify_generators_collates_with_its_checks(database_url, engine, s3, settings, resources,
                                                                      monkeypatch):
    """The notifications generator's letters (incl. upstream-sent ones) and ours, then a scheduled-style run."""
    from dagster import DagsterInstance, materialize

    from orchestration.synthetic import seed_all

    now = datetime(2026, 11, 20, 17, 50, tzinfo=UTC)
    seed_all(database_url, scale=0.05, s3=s3, settings=settings, now=now, echo=lambda *_: None,
             families=["orchestration.synthetic.notifications", "orchestration.synthetic.letters"])
    monkeypatch.setenv("PSO_NOW", now.isoformat())
    result = materialize([L.letter_batches_asset, *L.asset_checks], partition_key="2026-11-20",
                         resources=resources, instance=DagsterInstance.ephemeral())
    metadata = result.asset_materializations_for_node("letter_batches")[0].metadata
    assert metadata["letters_sending"].value > 0 and metadata["letters_invalid_pdf"].value == 2
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {name: e.passed for name, e in evaluations.items()} == {
        "no_letter_sending_without_zip": True, "no_letter_in_two_batches": True,
        "every_waiting_letter_collatable": False}
    # The generator's letters stuck before validation (0 sheets) are the ones named, each with its reason.
    with engine.connect() as conn:
        stuck = conn.execute(sa.text("""SELECT id FROM notifications WHERE notification_type = 'letter'
            AND notification_status = 'created' AND key_type = 'normal' AND billable_units = 0
            AND created_at < :deadline ORDER BY created_at, id"""), {"deadline": letter_deadline(now)}).scalars().all()
    assert stuck and evaluations["every_waiting_letter_collatable"].metadata["unbatchable_letters"].value == [
        {"notification_id": str(i), "reasons": ["no_sheets"]} for i in stuck]
