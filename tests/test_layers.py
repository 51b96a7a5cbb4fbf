"""The layering of the code (README, "Where things are") holds: the import-linter contracts in
pyproject.toml are kept, and no module imports another module's private name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_PACKAGES = ("orchestration", "assets", "sensors", "schedules", "resources", "bench")


def production_files() -> list[Path]:
    return sorted(p for package in PRODUCTION_PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in production_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PRODUCTION_PACKAGES:
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert offenders == []


def test_no_module_or_function_is_too_long_to_read():
    """No production module over 600 lines (migrations and the data generators aside) and no function over
    80: a newcomer reads one idea at a time."""
    long_modules, long_functions = [], []
    for path in production_files():
        if "migrations" in path.parts or "synthetic" in path.parts:
            continue
        text = path.read_text()
        if len(text.splitlines()) > 600:
            long_modules.append(str(path.relative_to(ROOT)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long_modules == [] and long_functions == []
