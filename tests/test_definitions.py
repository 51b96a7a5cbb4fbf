"""The one Definitions object loads, and holds what the architecture promises."""

import subprocess
import sys

from dagster import Definitions

from orchestration.definitions import defs
from orchestration.settings import PROJECT_ROOT


def test_definitions_are_loadable():
    Definitions.validate_loadable(defs)


def test_resources_are_bound():
    resources = defs.resources
    assert set(resources) >= {"postgres", "s3"}


def test_dagster_cli_validates_the_workspace(database_url):
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(PROJECT_ROOT / "workspace.yaml")],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_status_refreshes_never_overlap_and_retry_three_times():
    """§1.8: one status refresh at a time (a one-slot pool, counted per run), and a failed one retried 3 times."""
    from assets.statuses import status_tables
    from orchestration.instance import POOL_LIMITS, instance_config

    assert status_tables.op.pool == "status_refresh"
    assert POOL_LIMITS["status_refresh"] == 1
    assert instance_config()["concurrency"]["pools"]["granularity"] == "run"
    assert status_tables.op.retry_policy.max_retries == 3
