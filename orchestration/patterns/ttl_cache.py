"""The TTL cache pattern: values computed ahead of time above a cutoff, read-through below it,
never a cold reader.

A cache is a table with key columns, value columns, `computed_at` and `expires_at`. Declaring one
takes a few lines:

    my_cache = TTLCache(name="unit_totals", table=schema.unit_totals,
                        key_columns=("unit_code", "day"), value_columns=("payload", "population"))

and gives:

- `read_through(conn, key, compute, ttl=…)`: the stored value when fresh; otherwise compute, store
  and return it. Concurrent misses for one key are serialised on `pg_advisory_xact_lock(hash(key))`,
  so they store (and return) one consistent value. With `serve_stale=True` (keys the ahead-of-time
  refresh owns) an expired value is returned as it is: the refresh replaces it, the reader never waits.
- `refresh(conn, key, compute, ttl=…)`: the ahead-of-time write, under the same lock.
- every write is `INSERT … ON CONFLICT (key) DO UPDATE … WHERE cached.computed_at < EXCLUDED.computed_at`:
  an older value never overwrites a newer one, and the old row stays readable until the new one commits
  (the update is one statement in one transaction, so readers see either the old or the new row).
- `delete_expired(conn, now)`: rows whose `expires_at` is more than `expiry_retention` (7 days) past
  (keys that rolled off, e.g. old windows); a live key is always overwritten, never deleted first.
- `expired(conn, keys, now, grace)`: which of the keys an asset check expects fresh are expired or missing.

A cache may name a `version_column` (the version of the code that computed a value). Callers then
pass the current `version` to `read_through`, `refresh` and `expired`: a value stored under another
version is never served as fresh nor skipped as recent, and counts as expired whatever its age, so
changing the version recomputes every value (with `serve_stale`, readers get the old value until
the refresh replaces it: they still never wait).

`compute(conn)` returns a mapping of value-column → value; a `duration_ms` value column is filled
in by the cache. The cache stamps `computed_at` (the `now` of the read or refresh: when computation
started, injectable for tests) and `expires_at = computed_at + ttl`.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from orchestration.clock import now_utc

EXPIRY_RETENTION = timedelta(days=7)

Compute = Callable[[sa.Connection], Mapping[str, Any]]


@dataclass(frozen=True)
class CacheEntry:
    key: dict[str, Any]
    values: dict[str, Any]
    computed_at: datetime
    expires_at: datetime
    version: Any = None  # the version column's value, when the cache has one

    def is_fresh(self, now: datetime) -> bool:
        return self.expires_at > now

    def is_current(self, now: datetime, version: Any = None) -> bool:
        """Fresh, and computed by `version` (when one is given)."""
        return self.is_fresh(now) and (version is None or self.version == version)


@dataclass(frozen=True)
class CacheRead:
    entry: CacheEntry
    source: str  # "fresh" (cached, unexpired) | "stale" (cached, expired, served anyway) | "computed"


@dataclass(frozen=True)
class RefreshOutcome:
    key: dict[str, Any]
    status: str  # "stored" | "skipped_fresh" (a recent value exists) | "superseded" (a newer value won)
    duration_ms: int
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TTLCache:
    """One cache table. See the module docstring."""

    name: str
    table: sa.Table
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    computed_at_column: str = "computed_at"
    expires_at_column: str = "expires_at"
    version_column: str | None = None  # a value column holding the version that computed the value
    expiry_retention: timedelta = EXPIRY_RETENTION
    clock: Callable[[], datetime] = now_utc

    # -- keys and locks ------------------------------------------------------------------------

    def _key(self, key: Mapping[str, Any]) -> dict[str, Any]:
        missing = [c for c in self.key_columns if c not in key]
        if missing:
            raise ValueError(f"cache {self.name}: key lacks {missing}")
        return {c: key[c] for c in self.key_columns}

    def lock_name(self, key: Mapping[str, Any]) -> str:
        parts = [str(self._key(key)[c]) for c in self.key_columns]
        return json.dumps([self.name, *parts])

    def lock(self, conn: sa.Connection, key: Mapping[str, Any]) -> None:
        """Serialise work on one key until the caller's transaction ends (PgBouncer-safe)."""
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
                     {"name": self.lock_name(key)})

    def _where(self, key: Mapping[str, Any]):
        k = self._key(key)
        return sa.and_(*(self.table.c[c] == k[c] for c in self.key_columns))

    # -- reads ---------------------------------------------------------------------------------

    def lookup(self, conn: sa.Connection, key: Mapping[str, Any]) -> CacheEntry | None:
        t = self.table
        columns = [t.c[c] for c in (*self.value_columns, self.computed_at_column, self.expires_at_column)]
        row = conn.execute(sa.select(*columns).where(self._where(key))).mappings().first()
        if row is None:
            return None
        return CacheEntry(self._key(key), {c: row[c] for c in self.value_columns},
                          row[self.computed_at_column], row[self.expires_at_column],
                          row[self.version_column] if self.version_column else None)

    # -- writes --------------------------------------------------------------------------------

    def store(self, conn: sa.Connection, key: Mapping[str, Any], values: Mapping[str, Any],
              computed_at: datetime, ttl: timedelta) -> bool:
        """Upsert one value; False when the stored value is as new or newer (nothing written)."""
        t = self.table
        row = {**self._key(key), **{c: values.get(c) for c in self.value_columns},
               self.computed_at_column: computed_at, self.expires_at_column: computed_at + ttl}
        statement = pg_insert(t).values(**row)
        excluded = statement.excluded
        updated = (*self.value_columns, self.computed_at_column, self.expires_at_column)
        statement = statement.on_conflict_do_update(
            index_elements=[t.c[c] for c in self.key_columns],
            set_={c: excluded[c] for c in updated},
            where=t.c[self.computed_at_column] < excluded[self.computed_at_column],
        )
        # RETURNING gives a row only when the insert or the guarded update happened.
        return conn.execute(statement.returning(t.c[self.computed_at_column])).first() is not None

    def _compute_and_store(self, conn: sa.Connection, key, compute: Compute, ttl: timedelta, computed_at: datetime,
                           version: Any = None):
        started = time.perf_counter()
        values = dict(compute(conn))
        duration_ms = int(round((time.perf_counter() - started) * 1000))
        if "duration_ms" in self.value_columns:
            values.setdefault("duration_ms", duration_ms)
        if self.version_column and version is not None:
            values.setdefault(self.version_column, version)
        stored = self.store(conn, key, values, computed_at, ttl)
        return values, computed_at, duration_ms, stored

    def _in_transaction(self, conn: sa.Connection):
        return transaction(conn)

    def read_through(self, conn: sa.Connection, key: Mapping[str, Any], compute: Compute, *, ttl: timedelta,
                     serve_stale: bool = False, now: datetime | None = None, version: Any = None) -> CacheRead:
        """Cached value when current (or, with serve_stale, when present); else compute, store, return.

        Current = unexpired and, when `version` is given, computed by that version.
        """
        now = now or self.clock()
        with self._in_transaction(conn):
            entry = self.lookup(conn, key)
            if entry is not None and (entry.is_current(now, version) or serve_stale):
                return CacheRead(entry, "fresh" if entry.is_current(now, version) else "stale")
            self.lock(conn, key)
            # Read again: a concurrent reader may have stored the value while we waited for the lock
            # (READ COMMITTED: this statement sees what committed before it started).
            entry = self.lookup(conn, key)
            if entry is not None and entry.is_current(now, version):
                return CacheRead(entry, "fresh")
            self._compute_and_store(conn, key, compute, ttl, now, version)
            # What is stored now (ours, or a newer value that won the guard) is what everyone reads.
            return CacheRead(self.lookup(conn, key), "computed")

    def refresh(self, conn: sa.Connection, key: Mapping[str, Any], compute: Compute, *, ttl: timedelta,
                skip_if_computed_after: datetime | None = None, now: datetime | None = None,
                version: Any = None) -> RefreshOutcome:
        """Ahead-of-time write of one key in its own transaction (the caller's, if it has one).

        `now` (default: the clock) is the value's computed_at: the instant its computation began.
        A value computed after `skip_if_computed_after` is kept, unless another version computed it.
        """
        now = now or self.clock()
        with self._in_transaction(conn):
            self.lock(conn, key)
            if skip_if_computed_after is not None:
                entry = self.lookup(conn, key)
                if (entry is not None and entry.computed_at > skip_if_computed_after
                        and (version is None or entry.version == version)):
                    return RefreshOutcome(self._key(key), "skipped_fresh", 0, entry.values)
            values, _, duration_ms, stored = self._compute_and_store(conn, key, compute, ttl, now, version)
            return RefreshOutcome(self._key(key), "stored" if stored else "superseded", duration_ms, values)

    def delete_expired(self, conn: sa.Connection, now: datetime | None = None) -> int:
        """Delete rows whose expires_at is more than `expiry_retention` in the past (rolled-off keys)."""
        now = now or self.clock()
        t = self.table
        result = conn.execute(sa.delete(t).where(t.c[self.expires_at_column] < now - self.expiry_retention))
        return result.rowcount

    def expired(self, conn: sa.Connection, keys: Iterable[Mapping[str, Any]], now: datetime,
                grace: timedelta = timedelta(0), version: Any = None) -> tuple[list[dict], list[dict]]:
        """(expired, missing) among `keys`: expired = expires_at before now − grace, or (with `version`)
        computed by another version. One statement."""
        wanted = [self._key(k) for k in keys]
        if not wanted:
            return [], []
        t = self.table
        keys_table = sa.values(*(sa.column(c, t.c[c].type) for c in self.key_columns), name="wanted").data(
            [tuple(k[c] for c in self.key_columns) for k in wanted])
        on = sa.and_(*(t.c[c] == keys_table.c[c] for c in self.key_columns))
        due = [t.c[self.expires_at_column].is_(None), t.c[self.expires_at_column] < now - grace]
        if self.version_column and version is not None:
            due.append(t.c[self.version_column].is_distinct_from(version))
        rows = conn.execute(
            sa.select(*(keys_table.c[c] for c in self.key_columns), t.c[self.expires_at_column].label("expires_at"))
            .select_from(keys_table.outerjoin(t, on))
            .where(sa.or_(*due))
        ).mappings().all()
        expired = [{c: r[c] for c in self.key_columns} for r in rows if r["expires_at"] is not None]
        missing = [{c: r[c] for c in self.key_columns} for r in rows if r["expires_at"] is None]
        return expired, missing


def transaction(conn: sa.Connection):
    """`conn.begin()` when the caller has no transaction open (then it commits here and the
    advisory lock ends with it); otherwise the caller's transaction, which the caller commits."""
    return conn.begin() if not conn.in_transaction() else nullcontext()
