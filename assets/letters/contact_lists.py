"""Returned letters summary and contact lists (CSV objects beside their `service_contact_list` rows)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date

import sqlalchemy as sa

from assets.letters.batches import SSE
from assets.letters.keys import contact_list_key, object_exists


def returned_letter_summary(conn: sa.Connection, service_id: uuid.UUID | None = None
                            ) -> tuple[list[tuple[uuid.UUID, date, int]], dict[uuid.UUID, date]]:
    """(service_id, reported_at, count) newest first, and each service's most recent report date."""
    rows = conn.execute(sa.text("""
        SELECT service_id, reported_at, count(*)::int FROM returned_letters
        WHERE CAST(:service AS uuid) IS NULL OR service_id = CAST(:service AS uuid)
        GROUP BY service_id, reported_at
        ORDER BY reported_at DESC, service_id"""), {"service": service_id}).all()
    conn.commit()
    latest: dict[uuid.UUID, date] = {}
    for service, reported_at, _ in rows:
        latest.setdefault(service, reported_at)
    return [tuple(r) for r in rows], latest


def store_contact_list(conn: sa.Connection, s3, bucket: str, service_id: uuid.UUID, original_file_name: str,
                       template_type: str, rows: list[list[str]], list_id: uuid.UUID | None = None) -> uuid.UUID:
    """Upload the CSV (header + rows) first, then insert its metadata row: no row without its object."""
    list_id = list_id or uuid.uuid4()
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    key = contact_list_key(service_id, list_id)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue().encode(), ContentType="text/csv",
                  ServerSideEncryption=SSE)
    with conn.begin():
        conn.execute(sa.text("""
            INSERT INTO service_contact_list (id, service_id, original_file_name, row_count, template_type, s3_key)
            VALUES (:id, :service, :name, :rows, :type, :key) ON CONFLICT (id) DO NOTHING"""),
            {"id": list_id, "service": service_id, "name": original_file_name, "rows": max(len(rows) - 1, 0),
             "type": template_type, "key": key})
    return list_id


def archive_contact_list(conn: sa.Connection, s3, bucket: str, list_id: uuid.UUID) -> bool:
    """Archive a list: mark it archived, then delete its CSV (idempotent; False if no such list)."""
    with conn.begin():
        key = conn.execute(sa.text(
            "UPDATE service_contact_list SET archived = true WHERE id = :id RETURNING s3_key"), {"id": list_id}).scalar()
    if key is None:
        return False
    s3.delete_object(Bucket=bucket, Key=key)
    return True


def sweep_archived_contact_lists(conn: sa.Connection, s3, bucket: str) -> tuple[int, list[uuid.UUID]]:
    """Delete the CSV of every archived list (finishing archives interrupted before the delete) and
    report live lists whose CSV is missing. Returns (objects deleted, live list ids without object)."""
    rows = conn.execute(sa.text("SELECT id, s3_key, archived FROM service_contact_list ORDER BY id")).all()
    conn.commit()
    deleted, orphaned = 0, []
    for list_id, key, archived in rows:
        exists = object_exists(s3, bucket, key)
        if archived and exists:
            s3.delete_object(Bucket=bucket, Key=key)
            deleted += 1
        elif not archived and not exists:
            orphaned.append(list_id)
    return deleted, orphaned

