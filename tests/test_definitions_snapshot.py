"""A snapshot of the definitions, as plain sorted data (tests/__snapshots__/test_definitions_snapshot/),
so any change to an asset, check, partitioning, schedule, sensor, job, pool or backfill policy shows in
review as a diff of that file (issue 17, item 8).

After an intended change, regenerate it and commit the new file with the change:

    .venv/bin/python -m pytest tests/test_definitions_snapshot.py --snapshot-update
"""

from __future__ import annotations

import pytest
from dagster import (
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    TimeWindowPartitionsDefinition,
)
from syrupy.extensions.json import JSONSnapshotExtension

from orchestration.definitions import defs
from orchestration.instance import POOL_LIMITS, instance_config


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


def partitions(pdef) -> dict | None:
    if pdef is None:
        return None
    described: dict = {"type": type(pdef).__name__}
    if isinstance(pdef, DynamicPartitionsDefinition):
        described["name"] = pdef.name
    elif isinstance(pdef, TimeWindowPartitionsDefinition):
        described.update(start=pdef.start.isoformat(), cron=pdef.cron_schedule, timezone=pdef.timezone,
                         fmt=pdef.fmt, end_offset=pdef.end_offset)
    elif isinstance(pdef, StaticPartitionsDefinition):
        described["keys"] = list(pdef.get_partition_keys())
    elif isinstance(pdef, MultiPartitionsDefinition):
        described["dimensions"] = {d.name: partitions(d.partitions_def) for d in pdef.partitions_defs}
    return described


def text(value) -> str | None:
    """A stable one-line form of a policy or condition (None when unset)."""
    if value is None:
        return None
    label = getattr(value, "get_label", lambda: None)()
    return label or str(value)


def assets_snapshot(graph) -> dict:
    assets = {}
    for node in graph.asset_nodes:
        kind = "materializable" if node.is_materializable else "observable" if node.is_observable else "source"
        entry = {"kind": kind, "group": node.group_name, "deps": sorted(k.to_user_string() for k in node.parent_keys),
                 "kinds": sorted(node.kinds), "owners": sorted(node.owners)}
        if node.is_executable:
            own_checks = set(node.assets_def.check_keys)
            entry.update(
                partitions=partitions(node.partitions_def),
                backfill_policy=text(node.backfill_policy),
                pools=sorted(p for p in node.pools if p),
                automation_condition=text(node.automation_condition),
                freshness_policy=text(node.freshness_policy),
                # "in its step": a check spec the asset's own step evaluates; "own step": an @asset_check.
                checks={ck.name: {"blocking": graph.get_check_spec(ck).blocking,
                                  "runs": "in its step" if ck in own_checks else "own step"}
                        for ck in sorted(node.check_keys, key=lambda c: c.name)},
            )
        assets[node.key.to_user_string()] = entry
    return assets


def jobs_snapshot(repo) -> dict:
    jobs = {}
    for job in repo.get_all_jobs():
        if job.name.startswith("__"):  # Dagster's implicit asset job
            continue
        entry = {"partitions": partitions(job.partitions_def), "executor": job.executor_def.name,
                 "tags": {k: str(v) for k, v in sorted((job.tags or {}).items())},
                 # One entry per step: what a run of the job costs in processes on the default executor.
                 "steps": [node.name for node in job.nodes_in_topological_order]}
        if job.is_asset_job:
            entry["assets"] = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
        jobs[job.name] = entry
    return jobs


def pools_snapshot(repo) -> dict:
    used: dict[str, set[str]] = {}
    for job in repo.get_all_jobs():
        if job.name.startswith("__"):
            continue
        for node in job.nodes_in_topological_order:
            pool = getattr(node.definition, "pool", None)
            if pool:
                used.setdefault(pool, set()).add(job.name)
    default = instance_config()["concurrency"]["pools"]["default_limit"]
    return {pool: {"limit": POOL_LIMITS.get(pool, default), "jobs": sorted(used.get(pool, ()))}
            for pool in sorted(set(POOL_LIMITS) | set(used))}


def definitions_snapshot() -> dict:
    repo = defs.get_repository_def()
    return {
        "assets": assets_snapshot(repo.asset_graph),
        "jobs": jobs_snapshot(repo),
        "pools": pools_snapshot(repo),
        "schedules": {s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name,
                               "default_status": s.default_status.value} for s in repo.schedule_defs},
        "sensors": {s.name: {"minimum_interval_seconds": s.minimum_interval_seconds, "type": type(s).__name__,
                             "jobs": sorted(t.job_name for t in s.targets), "default_status": s.default_status.value}
                    for s in repo.sensor_defs},
        "resources": sorted(defs.resources or {}),
    }


def test_definitions_match_the_committed_snapshot(snapshot_json):
    assert definitions_snapshot() == snapshot_json
