"""The *archive* pattern: move rows past a retention rule to a history table and/or Parquet in S3.

A declaration is SQL plus a little configuration:

    ArchiveRule(
        name="inbound_sms",
        source="inbound_sms",
        history="inbound_sms_history",          # None: delete without archiving (e.g. test keys)
        columns=("id", "created_at", "service_id", …),   # copied columns: never personal data
        eligible_sql="service_id = :service_id AND created_at < :cutoff",
    )

The mechanism (`move_batch`), per batch and in ONE transaction, so that no row is ever deleted
by a transaction that did not also copy it:
1. optionally `pg_advisory_xact_lock(lock_sql)` — two runs never interleave on the same unit;
2. `CREATE TEMP TABLE archive_batch ON COMMIT DROP AS SELECT key FROM source WHERE <eligible>
   [AND key = ANY(:ids)] ORDER BY created_at, id LIMIT n` — the conditions are re-checked inside
   the transaction (the ids of a select-first batch are only a candidate list);
3. `WITH moved AS (DELETE FROM source USING archive_batch WHERE <eligible> RETURNING cols)
   INSERT INTO history (cols) SELECT cols FROM moved ON CONFLICT (id) DO NOTHING` — the copy and
   the delete of the same ids in one statement; the DELETE re-checks the conditions on rows the
   application changed meanwhile, and history gets exactly the version that was deleted;
4. commit.

Within a run, batches follow a keyset cursor on `order_by` (the last row of the previous batch),
so each batch starts where the last ended rather than re-walking the index entries of rows just
deleted; a row that becomes eligible behind the cursor mid-run waits for the next run.

`run_archive` repeats until a batch moves nothing. A `before_batch` hook (e.g. delete the S3
objects of the selected rows first) switches to select-then-move: the ids are selected in a
short read, handed to the hook, then moved with the conditions re-checked.

Deep archives (`ParquetExport`) page a range of a table by keyset into one Parquet object in S3,
record a manifest (row count, SHA-256 of the object), delete the range only if the number
deleted equals the number exported, and can be restored (`restore_parquet`, deduplicating by id).

Conservation: `count_where` gives the counts that asset checks compare before and after.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Sequence

import sqlalchemy as sa


DEFAULT_BATCH_SIZE = 50_000


@dataclass(frozen=True)
class ArchiveRule:
    """One archive: rows of `source` matching `eligible_sql` move to `history` (or are deleted)."""

    name: str
    source: str
    history: str | None
    columns: tuple[str, ...]
    eligible_sql: str  # boolean SQL over the source's columns, with :params
    order_by: tuple[str, ...] = ("created_at", "id")
    key: str = "id"
    lock_sql: str | None = None  # bigint SQL expression for pg_advisory_xact_lock, with :params

    def _where(self, with_ids: bool, after: bool) -> str:
        where = f"({self.eligible_sql})"
        if with_ids:
            where += f" AND {self.key} = ANY(CAST(:batch_ids AS uuid[]))"
        if after:
            # Keyset: start after the previous batch instead of re-walking its deleted index entries.
            placeholders = ", ".join(f":after_{i}" for i in range(len(self.order_by)))
            where += (f" AND {self.order_by[0]} >= :after_0"
                      f" AND ({', '.join(self.order_by)}) > ({placeholders})")
        return where

    def _columns(self) -> str:
        return ", ".join(dict.fromkeys((self.key, *self.order_by)))

    def select_statement(self, after: bool) -> sa.TextClause:
        return sa.text(f"SELECT {self._columns()} FROM {self.source} WHERE {self._where(False, after)} "
                       f"ORDER BY {', '.join(self.order_by)} LIMIT :batch_limit")

    def batch_statement(self, with_ids: bool, after: bool) -> sa.TextClause:
        return sa.text(
            f"CREATE TEMP TABLE archive_batch ON COMMIT DROP AS "
            f"SELECT {self._columns()} FROM {self.source} WHERE {self._where(with_ids, after)} "
            f"ORDER BY {', '.join(self.order_by)} LIMIT :batch_limit")

    def last_statement(self) -> sa.TextClause:
        desc = ", ".join(f"{c} DESC" for c in self.order_by)
        return sa.text(f"SELECT {', '.join(self.order_by)} FROM archive_batch ORDER BY {desc} LIMIT 1")

    def move_statement(self) -> sa.TextClause:
        """Delete the batch's rows (re-checking the conditions) and copy exactly the deleted versions.

        One statement: a row updated by the application since the batch was chosen is re-checked
        by the DELETE (Postgres re-evaluates the WHERE on the new version), so history receives the
        version that left the live table, or the row stays. Returns (deleted, inserted).
        """
        cols = ", ".join(f'"{c}"' for c in self.columns)
        returning = ", ".join(f's."{c}"' for c in self.columns)
        # `= ANY(ARRAY(…))` probes the primary key once per id (measured faster here than the hash join
        # the planner picks for `USING archive_batch`, which re-reads the whole unit on every batch).
        delete = (f"DELETE FROM {self.source} s WHERE s.{self.key} = ANY(ARRAY(SELECT {self.key} FROM archive_batch)) "
                  f"AND ({self.eligible_sql})")
        if not self.history:
            return sa.text(f"WITH moved AS ({delete} RETURNING 1) SELECT count(*), 0 FROM moved")
        return sa.text(
            f"WITH moved AS ({delete} RETURNING {returning}), "
            f"inserted AS (INSERT INTO {self.history} ({cols}) SELECT {cols} FROM moved "
            f"ON CONFLICT ({self.key}) DO NOTHING RETURNING 1) "
            f"SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM inserted)")


@dataclass
class ArchiveResult:
    batches: int = 0
    deleted: int = 0  # rows removed from the source
    inserted: int = 0  # rows added to history (deleted - inserted already had a history row)
    seconds: float = 0.0

    def add(self, other: "ArchiveResult") -> None:
        self.batches += other.batches
        self.deleted += other.deleted
        self.inserted += other.inserted
        self.seconds += other.seconds

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}batches": self.batches, f"{prefix}deleted": self.deleted,
                f"{prefix}inserted": self.inserted, f"{prefix}seconds": round(self.seconds, 3)}


def _idle(conn: sa.Connection) -> None:
    if conn.in_transaction():
        conn.commit()  # e.g. autobegun by an earlier read


def _after(cursor: tuple | None) -> dict[str, Any]:
    return {f"after_{i}": v for i, v in enumerate(cursor)} if cursor else {}


def select_batch(conn: sa.Connection, rule: ArchiveRule, params: dict[str, Any], limit: int,
                 cursor: tuple | None = None) -> list[tuple]:
    """The next batch's rows (key, order columns), in a short read of its own."""
    _idle(conn)
    with conn.begin():
        return [tuple(r) for r in conn.execute(rule.select_statement(cursor is not None),
                                               {**params, **_after(cursor), "batch_limit": limit})]


def move_batch(conn: sa.Connection, rule: ArchiveRule, params: dict[str, Any], limit: int,
               ids: Sequence | None = None, cursor: tuple | None = None) -> tuple[ArchiveResult, tuple | None]:
    """Copy (if the rule has a history table) and delete one batch, in one transaction.

    Returns the counts and the batch's last order-by values (the next batch's cursor)."""
    _idle(conn)
    started = time.perf_counter()
    bound = {**params, **_after(cursor), "batch_limit": limit}
    if ids is not None:
        bound["batch_ids"] = [str(i) for i in ids]
    with conn.begin():
        if rule.lock_sql:
            conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({rule.lock_sql})"), bound)
        conn.execute(rule.batch_statement(ids is not None, cursor is not None), bound)
        last = conn.execute(rule.last_statement()).first()
        deleted, inserted = conn.execute(rule.move_statement(), bound).one()
    result = ArchiveResult(batches=1 if deleted else 0, deleted=deleted, inserted=inserted,
                           seconds=time.perf_counter() - started)
    return result, (tuple(last) if last is not None else None)


def run_archive(conn: sa.Connection, rule: ArchiveRule, params: dict[str, Any],
                batch_size: int = DEFAULT_BATCH_SIZE,
                before_batch: Callable[[list], None] | None = None,
                max_batches: int | None = None) -> ArchiveResult:
    """Move batches until none is left. Each batch commits on its own, so a crash loses nothing."""
    total = ArchiveResult()
    cursor = None
    order_at = [list(dict.fromkeys((rule.key, *rule.order_by))).index(c) for c in rule.order_by]
    while max_batches is None or total.batches < max_batches:
        if before_batch is not None:
            rows = select_batch(conn, rule, params, batch_size, cursor)
            if not rows:
                break
            ids = [r[0] for r in rows]  # the select returns the key first
            before_batch(ids)
            result, _ = move_batch(conn, rule, params, batch_size, ids=ids)
            cursor = tuple(rows[-1][i] for i in order_at)
        else:
            result, cursor = move_batch(conn, rule, params, batch_size, cursor=cursor)
            if cursor is None:
                break
        total.add(result)
    return total


def count_where(conn: sa.Connection, table: str, where_sql: str, params: dict[str, Any]) -> int:
    return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where_sql}"), params).scalar_one()


# ---------------------------------------------------------------------------------------------
# Deep archive: a range of a table → one Parquet object in S3 → manifest → delete → restore
# ---------------------------------------------------------------------------------------------


def _arrow_type(column: sa.Column):
    import pyarrow as pa

    t = column.type
    if isinstance(t, sa.Uuid) or t.__class__.__name__ == "UUID":
        return pa.string()
    if isinstance(t, sa.BigInteger):
        return pa.int64()
    if isinstance(t, (sa.Integer, sa.SmallInteger)):
        return pa.int32()
    if isinstance(t, sa.Boolean):
        return pa.bool_()
    if isinstance(t, sa.DateTime):
        return pa.timestamp("us", tz="UTC") if t.timezone else pa.timestamp("us")
    if isinstance(t, sa.Date):
        return pa.date32()
    # Numeric is kept as its exact decimal text; Text stays text.
    return pa.string()


def _to_arrow_value(value):
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    return value


@dataclass(frozen=True)
class ParquetExport:
    """A table whose rows are exported by range (e.g. one hour of created_at) to Parquet."""

    table: sa.Table
    columns: tuple[str, ...]
    range_sql: str = "created_at >= :range_start AND created_at < :range_end"
    key: str = "id"
    page_size: int = 50_000

    def schema(self):
        import pyarrow as pa

        return pa.schema([pa.field(c, _arrow_type(self.table.c[c])) for c in self.columns])


@dataclass
class ExportResult:
    s3_key: str
    row_count: int
    checksum: str  # SHA-256 of the Parquet object
    pages: int = 0


def export_parquet(conn: sa.Connection, export: ParquetExport, params: dict[str, Any], s3, bucket: str,
                   s3_key: str, tags: dict[str, str] | None = None) -> ExportResult:
    """Page the range by keyset on (created_at, id) into one Parquet object and upload it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ", ".join(f'"{c}"' for c in export.columns)
    first = sa.text(f"SELECT {cols} FROM {export.table.name} WHERE {export.range_sql} "
                    f"ORDER BY created_at, {export.key} LIMIT :page_size")
    after = sa.text(f"SELECT {cols} FROM {export.table.name} WHERE {export.range_sql} "
                    f"AND (created_at, {export.key}) > (:after_created_at, :after_key) "
                    f"ORDER BY created_at, {export.key} LIMIT :page_size")
    schema = export.schema()
    buffer = io.BytesIO()
    rows_total = pages = 0
    created_index, key_index = export.columns.index("created_at"), export.columns.index(export.key)
    with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
        cursor_params: dict[str, Any] | None = None
        while True:
            bound = {**params, "page_size": export.page_size, **(cursor_params or {})}
            rows = conn.execute(after if cursor_params else first, bound).all()
            if not rows:
                break
            arrays = [pa.array([_to_arrow_value(r[i]) for r in rows], type=schema.field(i).type)
                      for i in range(len(export.columns))]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            rows_total += len(rows)
            pages += 1
            last = rows[-1]
            cursor_params = {"after_created_at": last[created_index], "after_key": last[key_index]}
            if len(rows) < export.page_size:
                break
    _idle(conn)
    body = buffer.getvalue()
    checksum = hashlib.sha256(body).hexdigest()
    extra = {}
    if tags:
        from urllib.parse import urlencode

        extra["Tagging"] = urlencode(tags)
    s3.put_object(Bucket=bucket, Key=s3_key, Body=body, ContentType="application/vnd.apache.parquet",
                  ServerSideEncryption="AES256",
                  Metadata={"row-count": str(rows_total), "sha256": checksum}, **extra)
    return ExportResult(s3_key=s3_key, row_count=rows_total, checksum=checksum, pages=pages)


class CountMismatch(RuntimeError):
    """The number of rows deleted differs from the number exported: the delete was rolled back."""


def delete_exported(conn: sa.Connection, export: ParquetExport, params: dict[str, Any], expected: int,
                    after_delete: Callable[[sa.Connection, int], None] | None = None) -> int:
    """Delete the exported range in one transaction; roll back unless exactly `expected` rows go."""
    _idle(conn)
    with conn.begin():
        deleted = conn.execute(sa.text(f"DELETE FROM {export.table.name} WHERE {export.range_sql}"), params).rowcount
        if deleted != expected:
            raise CountMismatch(f"{export.table.name}: {deleted} rows in range but {expected} exported; "
                                "nothing deleted")
        if after_delete is not None:
            after_delete(conn, deleted)  # e.g. mark the manifest, in the same transaction
    return deleted


def read_parquet_objects(s3, bucket: str, prefix: str):
    """Every Parquet object under `prefix`, concatenated (a pyarrow Table), with the keys read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, keys = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".parquet"):
                continue
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            tables.append(pq.read_table(io.BytesIO(body)))
            keys.append(obj["Key"])
    if not tables:
        return None, keys
    return pa.concat_tables(tables, promote_options="default"), keys


def restore_parquet(conn: sa.Connection, export: ParquetExport, s3, bucket: str, prefix: str) -> dict[str, int]:
    """Re-import every object under `prefix` into the table, deduplicating by key. One transaction."""
    from orchestration.bulk import copy_rows

    table, keys = read_parquet_objects(s3, bucket, prefix)
    if table is None:
        return {"objects": 0, "rows_read": 0, "inserted": 0}
    columns = list(export.columns)
    data = table.select(columns).to_pylist()
    seen: set = set()
    unique = []
    for row in data:  # objects of a re-run hour repeat ids: keep the first
        if row[export.key] not in seen:
            seen.add(row[export.key])
            unique.append(tuple(row[c] for c in columns))
    _idle(conn)
    cols = ", ".join(f'"{c}"' for c in columns)
    with conn.begin():
        conn.execute(sa.text(f"CREATE TEMP TABLE restore_rows ON COMMIT DROP AS "
                             f"SELECT {cols} FROM {export.table.name} WITH NO DATA"))
        raw = conn.connection.driver_connection
        copy_rows(raw, "restore_rows", columns, unique)
        inserted = conn.execute(sa.text(
            f"INSERT INTO {export.table.name} ({cols}) SELECT {cols} FROM restore_rows "
            f"ON CONFLICT ({export.key}) DO NOTHING")).rowcount
    return {"objects": len(keys), "rows_read": len(data), "inserted": inserted}
