"""What every family module of the schema shares: the one `MetaData` of the `public` schema,
its naming convention, and the column and CHECK-constraint helpers.

Columns that hold personal data carry `info=PII` so that tests and tooling can find them.
"""

from __future__ import annotations

import enum

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    MetaData,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

# Deterministic constraint names, so that migrations can refer to them and autogenerate
# produces stable diffs. Postgres truncates names at 63 characters; SQLAlchemy shortens
# longer generated names deterministically.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

PII = {"pii": True}

TIMESTAMPTZ = DateTime(timezone=True)
# UKRDC clinical timestamps are naive local time, as upstream stores them (§2.2).
NAIVE_TIMESTAMP = DateTime(timezone=False)


def now_default() -> sa.TextClause:
    return text("now()")


def sql_in(column: str, values) -> str:
    """SQL for `column IN (...)`, used in CHECK constraints."""
    if all(isinstance(v, int) for v in values):
        items = ", ".join(str(v) for v in values)
    else:
        items = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({items})"



def enum_codes(enum_class: type[enum.IntEnum]) -> list[int]:
    return [member.value for member in enum_class]



def id_column(cache: int = 1) -> Column:
    """A bigint identity primary key (Mavis-style ids). `cache` > 1 lets each connection take that many
    ids at once: for tables filled in bulk by several connections (migration 0004)."""
    return Column("id", BigInteger, Identity(always=False, cache=cache), primary_key=True)



def uuid_id_column(name: str = "id") -> Column:
    return Column(name, UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()"))

