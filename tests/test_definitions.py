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
