"""Dagster's own metadata, built in one place: what a table or an S3 object is, who owns it, and
what a run did to it, under the keys the UI knows (`dagster/table_name`, `dagster/column_schema`,
`dagster/row_count`, `dagster/uri`), with tables as `MetadataValue.table` rather than markdown.

Families call `family_spec(family, table)` for the definition side of an asset (owners, tags, and the
table's name and column schema from the schema declaration, so it is written once), `source_spec(...)`
for a source (the same, plus a code reference to its declaration; `orchestration/definitions.py` adds the
code references of assets with a function), and `table_result(...)`/`s3_objects(...)`/`records_table(...)`/
`counts_table(...)` for the materialization side.
"""

from __future__ import annotations

import inspect
import warnings
import os
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from dagster import (
    BetaWarning,
    AssetKey,
    AssetObservation,
    AssetSpec,
    CodeReferencesMetadataValue,
    LocalFileCodeReference,
    MetadataValue,
    TableColumn,
    TableColumnConstraints,
    TableRecord,
    TableSchema,
)

# Who answers for each family (Dagster shows owners on every asset of the family).
FAMILY_OWNERS = {
    "statuses": ["team:vaccinations"],
    "cohort_stats": ["team:renal-registry"],
    "history": ["team:notify"],
    "letters": ["team:notify"],
    "pruning": ["team:simple"],
    "results": ["team:simplereport"],
}
# The upstream system each family reimplements (a tag, so the catalog can filter by it).
FAMILY_UPSTREAM = {
    "statuses": "manage-vaccinations-in-schools",
    "cohort_stats": "ukrdc",
    "history": "govuk-notify",
    "letters": "govuk-notify",
    "pruning": "simple",
    "results": "simplereport",
}

_TYPE_NAMES = {
    sa.BigInteger: "bigint", sa.SmallInteger: "smallint", sa.Integer: "integer", sa.Boolean: "boolean",
    sa.Date: "date", sa.Text: "text", sa.String: "text", sa.Float: "double", sa.Numeric: "numeric",
}


def _type_name(column: sa.Column) -> str:
    if isinstance(column.type, sa.DateTime):
        return "timestamptz" if column.type.timezone else "timestamp"
    for sa_type, name in _TYPE_NAMES.items():
        if isinstance(column.type, sa_type):
            return name
    return column.type.__class__.__name__.lower()


def column_schema(table: sa.Table) -> TableSchema:
    """The table's columns as the schema declaration has them (personal-data columns are flagged)."""
    columns = []
    for column in table.columns:
        notes = []
        if column.primary_key:
            notes.append("primary key")
        if column.info.get("pii"):
            notes.append("personal data")
        columns.append(TableColumn(name=column.name, type=_type_name(column), description="; ".join(notes) or None,
                                   constraints=TableColumnConstraints(nullable=bool(column.nullable),
                                                                      unique=bool(column.unique))))
    return TableSchema(columns=columns)


def table_definition(table: sa.Table) -> dict[str, Any]:
    """Definition metadata of an asset that is one Postgres table."""
    return {"dagster/table_name": f"public.{table.name}", "dagster/column_schema": column_schema(table)}


def family_spec(family: str, table: sa.Table | None = None, **metadata: Any) -> dict[str, Any]:
    """Owners and tags shared by every asset of a family (keyword arguments of `@asset`/`AssetSpec`); with
    `table`, the definition metadata of the Postgres table the asset is (name and column schema); any
    other definition metadata as keywords (e.g. `{"dagster/uri": …}` given as `**{…}`)."""
    spec: dict[str, Any] = {"owners": FAMILY_OWNERS[family],
                            "tags": {"family": family, "upstream": FAMILY_UPSTREAM[family]}}
    described = {**(table_definition(table) if table is not None else {}), **metadata}
    if described:
        spec["metadata"] = described
    return spec


def source_spec(key: AssetKey | str | Sequence[str], family: str, description: str, table: sa.Table | None = None,
                kinds: Iterable[str] = ("postgres",), **kwargs: Any) -> AssetSpec:
    """A source asset of a family (a table or bucket other applications write): owners, tags, the table's
    definition metadata, and a code reference to the line that declares it (`with_source_code_references`
    only reaches assets with a function body)."""
    caller = inspect.currentframe().f_back  # the family module's declaration
    spec = family_spec(family, table)
    with warnings.catch_warnings():  # code references are a beta API, used on purpose
        warnings.simplefilter("ignore", BetaWarning)
        reference = LocalFileCodeReference(file_path=os.path.abspath(caller.f_code.co_filename),
                                           line_number=caller.f_lineno, label="declared here")
        references = CodeReferencesMetadataValue(code_references=[reference])
    spec["metadata"] = {**spec.get("metadata", {}), "dagster/code_references": references}
    return AssetSpec(key=key, description=description, kinds=set(kinds), **spec, **kwargs)


def row_count(conn: sa.Connection, table: sa.Table, *where: Any) -> int:
    """Exact rows in the table, or in the part `where` selects (a partition): the `dagster/row_count`."""
    return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()


def table_result(table: sa.Table, rows: int | None = None, **figures: Any) -> dict[str, Any]:
    """Materialization metadata of a table: its name, its row count when known, and the run's figures."""
    metadata: dict[str, Any] = {"dagster/table_name": f"public.{table.name}"}
    if rows is not None:
        metadata["dagster/row_count"] = MetadataValue.int(rows)
    metadata.update(figures)
    return metadata


# Dagster compares a source's observed data version with the one its dependents were built from.
DATA_VERSION_TAG = "dagster/data_version"


def source_observation(key: AssetKey | Sequence[str], data_version: str | int, partition: str | None = None,
                       **figures: Any) -> AssetObservation:
    """An observation of a source asset that a sensor saw change (e.g. the newest request id, a sync run
    id): the UI shows it on the source, and dependents built from an older version show as stale."""
    return AssetObservation(asset_key=key if isinstance(key, AssetKey) else AssetKey(list(key)),
                            partition=partition, tags={DATA_VERSION_TAG: str(data_version)}, metadata=figures)


def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


def s3_objects(bucket: str, prefix: str, keys: Sequence[str] = (), shown: int = 20) -> dict[str, Any]:
    """Materialization metadata of objects written under a prefix: `dagster/uri` of the prefix, and the
    first keys as a table (keys name objects, never a person)."""
    metadata: dict[str, Any] = {"dagster/uri": MetadataValue.path(s3_uri(bucket, prefix)), "objects": len(keys)}
    if keys:
        metadata["keys"] = records_table(["key"], [[k] for k in keys[:shown]])
    return metadata


def records_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> MetadataValue:
    """A small table for the UI (`MetadataValue.table`), e.g. counts per table or per postage."""
    records = [TableRecord({name: _plain(value) for name, value in zip(header, row)}) for row in rows]
    return MetadataValue.table(records=records, schema=TableSchema(columns=[
        TableColumn(name=name, type=_column_type([r.data[name] for r in records])) for name in header]))


def counts_table(counts: Mapping[str, Mapping[str, Any]], key_name: str = "table") -> MetadataValue:
    """`{"patients": {"inserted": 3, "updated": 1}, …}` as a table with one row per key."""
    fields = sorted({f for values in counts.values() for f in values})
    return records_table([key_name, *fields], [[name, *(values.get(f, 0) for f in fields)]
                                                for name, values in counts.items()])


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _column_type(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"
