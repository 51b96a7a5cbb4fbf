"""The Dagster UI in a real browser (Playwright + Debian's Chromium, headless).

Starts `dagster dev` (webserver + daemon) on the seeded embedded stack with Postgres instance
storage, then: the global asset lineage shows every family's group; a partitioned asset's
page opens; a backfill of 3 partitions launched from the UI succeeds. Screenshots go to
test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BACKFILL_PARTITIONS = 3

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright is not installed (test extras)")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (scripts/install-test-deps.sh installs it as root)",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_until_loaded(base: str, process: subprocess.Popen, log: Path, timeout: float = 150) -> None:
    """Until the webserver answers and the code location has loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster dev exited:\n{log.read_text()[-4000:]}")
        try:
            data = graphql(base, "{ workspaceOrError { ... on Workspace { locationEntries { name "
                                 "locationOrLoadError { __typename } } } } }")
            entries = data["data"]["workspaceOrError"]["locationEntries"]
            if entries and all(e["locationOrLoadError"] for e in entries):
                kinds = {e["locationOrLoadError"]["__typename"] for e in entries}
                assert kinds == {"RepositoryLocation"}, f"code location failed to load: {data}\n{log.read_text()[-3000:]}"
                return
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            pass
        time.sleep(1)
    pytest.fail(f"dagster dev not ready in {timeout}s:\n{log.read_text()[-4000:]}")


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (dagster dev's code server runs in a process group of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def stop_group(process: subprocess.Popen) -> None:
    """SIGINT first (dagster dev then stops its daemon and code server), then SIGTERM/SIGKILL."""
    tree = descendants(process.pid)
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in tree:  # anything that outlived its parent
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def dagster_ui(settings, s3, database_url, pg_admin_url, tmp_path):
    """`dagster dev` on the seeded test database, with Postgres instance storage; yields the base URL."""
    from orchestration.instance import write_instance_yaml
    from orchestration.synthetic import seed_all

    seed_all(database_url, scale="tiny", s3=s3, settings=settings, echo=lambda *_: None)
    storage_db = f"pso_ui_dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{storage_db}"')
    storage_url = pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1) + f"/{storage_db}"
    home = tmp_path / "dagster_home"
    write_instance_yaml(home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PSO_DAGSTER_STORAGE_URL": storage_url,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance; from orchestration.instance import "
                    "apply_pool_limits; apply_pool_limits(DagsterInstance.get())"], env=env, cwd=ROOT, check=True)
    port = free_port()
    log = tmp_path / "dagster-dev.log"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(ROOT / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_loaded(base, process, log)
        yield base
    finally:
        stop_group(process)
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{storage_db}" WITH (FORCE)')


@pytest.fixture
def page():
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        # A fresh profile shows the "Join the Dagster community" pop-up over the graph.
        context.add_init_script("window.localStorage.setItem('communityNux', '1')")
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=False)


def backfill_asset():
    """A cheap daily-partitioned asset (same choice as the celery test)."""
    from test_celery import chosen_asset

    from orchestration.definitions import defs

    return chosen_asset(defs)


def backfill_statuses(base: str) -> list[dict]:
    data = graphql(base, "{ partitionBackfillsOrError(limit: 5) { ... on PartitionBackfills { results { id status "
                         "partitionNames numPartitions } } } }")
    return data["data"]["partitionBackfillsOrError"]["results"]


@pytest.mark.timeout(400)
def test_lineage_partitions_and_backfill_in_the_ui(dagster_ui, page):
    from orchestration.definitions import defs

    node = backfill_asset()
    if node is None:
        pytest.skip("no daily-partitioned asset is defined yet")
    groups = sorted({n.group_name for n in defs.resolve_asset_graph().asset_nodes if n.group_name})
    assert groups

    # 1. Global asset lineage: every family's group is drawn.
    page.goto(f"{dagster_ui}/asset-groups")
    for group in groups:
        page.get_by_text(group, exact=True).first.wait_for(state="attached", timeout=60_000)
    shot(page, "1-lineage")

    # 2. A partitioned asset's page, partitions tab.
    path = "/".join(node.key.path)
    page.goto(f"{dagster_ui}/assets/{path}?view=partitions")
    page.get_by_text(re.compile(r"\d+ Partitions?", re.I)).first.wait_for()
    shot(page, "2-partitions")

    # 3. Launch a backfill of 3 partitions from the UI.
    keys = node.partitions_def.get_partition_keys()[-1 - BACKFILL_PARTITIONS:-1]
    page.goto(f"{dagster_ui}/assets/{path}")
    page.locator("button", has_text="Materialize").first.click()
    # Upstream assets never materialized here: the UI asks for confirmation first.
    confirm = page.get_by_role("button", name="Confirm")
    try:
        confirm.wait_for(timeout=5_000)
        confirm.click()
    except playwright_api.TimeoutError:
        pass
    dialog = page.get_by_role("dialog").filter(has_text=re.compile("artition"))
    dialog.wait_for()
    selection = dialog.locator("input[placeholder*='artition']").first
    selection.fill(f"[{keys[0]}...{keys[-1]}]")
    # Enter goes to the focused field: the UI may re-render the field once it holds a value, so a
    # locator resolved again here (by its placeholder) can match nothing for the whole timeout.
    page.keyboard.press("Enter")
    dialog.get_by_text(re.compile(rf"{BACKFILL_PARTITIONS} partitions", re.I)).first.wait_for()
    shot(page, "3-launch-backfill")
    dialog.get_by_role("button", name=re.compile(r"Launch.*backfill", re.I)).click()

    # 4. The backfill completes (the daemon launches its runs); its page shows the outcome.
    deadline = time.monotonic() + 280  # the seeded sensors queue runs of their own too
    backfills = []
    while time.monotonic() < deadline:
        backfills = backfill_statuses(dagster_ui)
        if backfills and backfills[0]["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
            break
        time.sleep(2)
    assert backfills, "no backfill was launched from the UI"
    backfill = backfills[0]
    page.goto(f"{dagster_ui}/runs/b/{backfill['id']}")
    page.get_by_text(re.compile(r"Completed|Succeeded|Success", re.I)).first.wait_for()
    shot(page, "4-backfill-done")
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfill
    assert sorted(backfill["partitionNames"] or []) == sorted(keys)
