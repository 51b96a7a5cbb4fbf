"""Dagster's own metadata on the definitions (issue 17, item 6): owners and tags per family, table name and
column schema derived from the schema declaration, and code references to the line that defines each asset."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from dagster import AssetKey, LocalFileCodeReference, TableSchema

from assets import cohort_stats, history, letters, pruning, results
from orchestration import schema
from orchestration.definitions import defs
from orchestration.metadata import FAMILY_OWNERS, FAMILY_UPSTREAM, column_schema, family_spec
from orchestration.settings import PROJECT_ROOT

FAMILIES = {"cohort_stats": cohort_stats, "history": history, "letters": letters, "pruning": pruning,
            "results": results}
# The Postgres table each table asset is (definition metadata `dagster/table_name`).
TABLE_ASSETS = {
    "notification_history": schema.notification_history, "inbound_sms_history": schema.inbound_sms_history,
    "ft_notification_status": schema.ft_notification_status, "notify/notifications": schema.notifications,
    "notify/services": schema.services, "notify/inbound_sms": schema.inbound_sms,
    "letter_batches": schema.letter_batches, "notify/returned_letters": schema.returned_letters,
    "notify/service_contact_list": schema.service_contact_list,
    "facility_record_counts": schema.facility_record_counts, "facility_stats_dialysis": schema.facility_stats,
    "facility_stats_demographics": schema.facility_stats, "ukrdc/patient": schema.patient,
    "replica_state": schema.replica_state, "sync_runs": schema.sync_runs,
    "result": schema.result, "test_order": schema.test_order, "test_event": schema.test_event,
}


def graph_nodes():
    graph = defs.get_repository_def().asset_graph
    return {node.key.to_user_string(): node for node in graph.asset_nodes}


def family_keys(module) -> set[str]:
    keys = set()
    for item in module.assets:
        keys |= {k.to_user_string() for k in getattr(item, "keys", None) or [item.key]}
    return keys


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_asset_of_a_family_has_its_owners_and_tags(family):
    nodes = graph_nodes()
    keys = family_keys(FAMILIES[family])
    assert keys
    for key in keys:
        node = nodes[key]
        assert list(node.owners) == FAMILY_OWNERS[family], key
        assert node.tags["family"] == family and node.tags["upstream"] == FAMILY_UPSTREAM[family], key


def test_table_assets_carry_the_schema_declaration():
    nodes = graph_nodes()
    for key, table in TABLE_ASSETS.items():
        metadata = nodes[key].metadata
        assert metadata["dagster/table_name"] == f"public.{table.name}", key
        described: TableSchema = metadata["dagster/column_schema"]
        assert [c.name for c in described.columns] == [c.name for c in table.columns], key
        assert described == column_schema(table)
    # Personal-data columns are flagged by name only; the primary key is named.
    patient = {c.name: c for c in nodes["ukrdc/patient"].metadata["dagster/column_schema"].columns}
    pii = [c.name for c in schema.patient.columns if c.info.get("pii")]
    assert pii and all("personal data" in (patient[name].description or "") for name in pii)
    history_columns = nodes["notification_history"].metadata["dagster/column_schema"].columns
    types = {c.name: c.type for c in history_columns}
    assert types["created_at"] == "timestamptz" and "primary key" in next(
        c.description for c in history_columns if c.name == "id")


def test_family_spec_is_the_one_source_of_owners_tags_and_table_metadata():
    spec = family_spec("results", schema.result, **{"dagster/uri": "s3://b/p/"})
    assert spec["owners"] == FAMILY_OWNERS["results"]
    assert spec["tags"] == {"family": "results", "upstream": "simplereport"}
    assert spec["metadata"]["dagster/table_name"] == "public.result" and spec["metadata"]["dagster/uri"] == "s3://b/p/"
    assert "metadata" not in family_spec("letters")


def _references(node) -> list[LocalFileCodeReference]:
    value = node.metadata.get("dagster/code_references")
    assert value is not None, node.key
    return [r for r in value.code_references if isinstance(r, LocalFileCodeReference)]


def test_every_asset_has_a_code_reference_to_its_file_and_line():
    nodes = graph_nodes()
    for key, node in nodes.items():
        if not node.is_materializable and not any(key in family_keys(m) for m in FAMILIES.values()):
            continue  # another family's source spec: declared without the helper
        [reference] = _references(node)
        path = Path(reference.file_path)
        assert path.is_file() and PROJECT_ROOT in path.parents, (key, path)
        assert reference.line_number and reference.line_number <= len(path.read_text().splitlines())
    # The asset's own function: the file and line `inspect` gives.
    [reference] = _references(nodes["notification_history"])
    function = history.dagster.notification_history.op.compute_fn.decorated_fn
    assert Path(reference.file_path) == Path(inspect.getsourcefile(function)).resolve()
    assert Path(reference.file_path) == PROJECT_ROOT / "assets" / "history" / "dagster.py"
    assert reference.line_number == inspect.getsourcelines(function)[1]
    # A source spec: the line of its declaration in its family module.
    [reference] = _references(nodes["test_order"])
    assert Path(reference.file_path) == PROJECT_ROOT / "assets" / "results" / "dagster.py"
    assert "test_order" in Path(reference.file_path).read_text().splitlines()[reference.line_number - 1]


def test_checks_and_jobs_survive_the_code_references():
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assert graph.get_check_spec(next(k for k in graph.asset_check_keys if k.asset_key == AssetKey("notification_history")
                                     and k.name == "conservation"))
    jobs = {job.name for job in repo.get_all_jobs()}
    assert {"restore_notification_history_hour", "archive_contact_list", "letter_collation"} <= jobs
