"""COPY rows into a table: the fastest way to load many rows from Python (restores, generators,
benchmarks), through a raw psycopg connection."""

from __future__ import annotations

from typing import Iterable

import psycopg


def copy_rows(conn: psycopg.Connection, table: str, columns: list[str], rows: Iterable[tuple]) -> int:
    """COPY `rows` into `table` (a schema-qualified name is allowed); returns the row count."""
    ident = psycopg.sql.SQL(".").join(psycopg.sql.Identifier(part) for part in table.split("."))
    statement = psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
        ident, psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c in columns))
    count = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count
