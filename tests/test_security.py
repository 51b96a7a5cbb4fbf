"""Security: the least-privilege run role, no personal data in Dagster's event log, SSE on S3 writes."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from orchestration import schema

ROOT = Path(__file__).resolve().parent.parent
MIGRATION = ROOT / "orchestration" / "migrations" / "versions" / "0002_run_role.py"
ROLE = "pso_runner"
INSUFFICIENT_PRIVILEGE = "42501"


def load_migration(path: Path = MIGRATION):
    spec = importlib.util.spec_from_file_location(f"migration_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def later_runner_grants() -> set[str]:
    """Tables a later revision classified with a grant of its own (`RUNNER_GRANTS`)."""
    return {table for path in sorted(MIGRATION.parent.glob("0*.py")) if path != MIGRATION
            for table, _ in getattr(load_migration(path), "RUNNER_GRANTS", ())}


def sqlstate(error: sa.exc.DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


def assert_forbidden(conn: sa.Connection, statement: str, params: dict | None = None) -> None:
    """`statement` fails with insufficient_privilege (in a savepoint, so the test goes on)."""
    savepoint = conn.begin_nested()
    with pytest.raises(sa.exc.DBAPIError) as caught:
        conn.execute(sa.text(statement), params or {})
    savepoint.rollback()
    assert sqlstate(caught.value) == INSUFFICIENT_PRIVILEGE, f"{statement}: {caught.value.orig}"


@pytest.fixture
def as_runner(engine):
    """A transaction on the test database running as `pso_runner` (rolled back at the end)."""
    with engine.connect() as conn:
        transaction = conn.begin()
        conn.execute(sa.text(f"SET LOCAL ROLE {ROLE}"))
        yield conn
        transaction.rollback()


def test_every_declared_table_is_classified():
    migration = load_migration()
    classified = set(migration.SOURCE_TABLES) | set(migration.DERIVED_TABLES) | {
        t for t, _ in migration.OPERATIONAL_GRANTS} | later_runner_grants()
    declared = {t.name for t in schema.metadata.sorted_tables}
    assert declared - classified == set(), "new tables need a privilege decision in a new revision"
    assert classified - declared == set()
    assert not set(migration.SOURCE_TABLES) & set(migration.DERIVED_TABLES)


def test_role_is_nologin_and_owns_nothing(engine):
    with engine.connect() as conn:
        role = conn.execute(sa.text("SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls "
                                    "FROM pg_roles WHERE rolname = :r"), {"r": ROLE}).one()
        owned = conn.execute(sa.text("SELECT count(*) FROM pg_class WHERE relowner = "
                                     "(SELECT oid FROM pg_roles WHERE rolname = :r)"), {"r": ROLE}).scalar()
    assert tuple(role) == (False, False, False, False, False)
    assert owned == 0


def test_forbidden_statements_fail_under_the_run_role(engine, as_runner):
    with engine.begin() as owner:  # a table created outside the project's list
        owner.execute(sa.text("CREATE TABLE unrelated_secrets (id int, secret text)"))
        owner.execute(sa.text("INSERT INTO unrelated_secrets VALUES (1, 'x')"))
    conn = as_runner
    assert conn.execute(sa.text("SELECT current_user")).scalar() == ROLE
    assert_forbidden(conn, "DROP TABLE consents")
    assert_forbidden(conn, "DROP TABLE patient_consent_statuses")
    assert_forbidden(conn, "TRUNCATE notifications")
    assert_forbidden(conn, "TRUNCATE patient_consent_statuses")
    assert_forbidden(conn, "ALTER TABLE patient_consent_statuses ADD COLUMN note text")
    assert_forbidden(conn, "UPDATE consents SET response = 1")
    assert_forbidden(conn, "DELETE FROM vaccination_records")
    assert_forbidden(conn, "INSERT INTO test_event DEFAULT VALUES")
    assert_forbidden(conn, "DELETE FROM result")
    # Only the status columns of notifications may change, never the recipient or content.
    assert_forbidden(conn, 'UPDATE notifications SET "to" = \'x\'')
    assert_forbidden(conn, "UPDATE notifications SET personalisation = NULL")
    assert_forbidden(conn, "SELECT * FROM unrelated_secrets")
    assert_forbidden(conn, "CREATE TABLE public.runner_table (id int)")
    assert_forbidden(conn, "SELECT pso_grant_replica_privileges('replica_x')")


def test_allowed_statements_succeed_under_the_run_role(as_runner):
    conn = as_runner
    # Sources: read.
    conn.execute(sa.text("SELECT count(*) FROM consents")).scalar()
    conn.execute(sa.text("SELECT count(*) FROM notifications_all_time_view")).scalar()
    # Derived: read and write, identity sequences included.
    alert_id = conn.execute(sa.text("INSERT INTO alerts (kind, message) VALUES ('test', 'ok') RETURNING id")).scalar()
    assert conn.execute(sa.text("UPDATE alerts SET message = 'ok2' WHERE id = :i"), {"i": alert_id}).rowcount == 1
    assert conn.execute(sa.text("DELETE FROM alerts WHERE id = :i"), {"i": alert_id}).rowcount == 1
    conn.execute(sa.text("DELETE FROM patient_consent_statuses WHERE false"))
    # The operational writes of domain.md §0.
    conn.execute(sa.text("UPDATE notifications SET notification_status = 'sending', sent_by = 'dvla', "
                         "sent_at = now(), updated_at = now() WHERE notification_status = 'created' AND false"))
    conn.execute(sa.text("DELETE FROM notifications WHERE false"))
    conn.execute(sa.text("DELETE FROM inbound_sms WHERE false"))
    # Temp tables (ON COMMIT DROP) and transaction-scoped advisory locks are part of every family.
    conn.execute(sa.text("CREATE TEMP TABLE scratch (id int) ON COMMIT DROP"))
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(42)"))


def test_replica_schemas_created_at_run_time_are_prunable_not_droppable(engine):
    replica = f"sec{uuid.uuid4().hex[:6]}"
    with engine.begin() as owner:
        name = schema.create_replica_schema(owner, replica)
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text(f"SET LOCAL ROLE {ROLE}"))
        assert conn.execute(sa.text(f'SELECT count(*) FROM "{name}".patient')).scalar() == 0
        conn.execute(sa.text(f'DELETE FROM "{name}".appointment WHERE sync_status = \'DONE\''))
        assert_forbidden(conn, f'DROP TABLE "{name}".appointment')
        assert_forbidden(conn, f'DROP SCHEMA "{name}" CASCADE')
        assert_forbidden(conn, f'TRUNCATE "{name}".patient CASCADE')
        assert_forbidden(conn, f'UPDATE "{name}".patient SET sync_status = \'DONE\'')
        assert_forbidden(conn, f'INSERT INTO "{name}".facility (uuid) VALUES (gen_random_uuid())')


def test_downgrade_revokes_and_upgrade_restores(empty_database_url):
    from orchestration.migrate import downgrade, upgrade

    upgrade(empty_database_url)
    engine = sa.create_engine(empty_database_url, poolclass=sa.pool.NullPool, connect_args={"prepare_threshold": None})

    def can_read_consents() -> bool:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT has_table_privilege(:r, 'consents', 'SELECT')"), {"r": ROLE}).scalar()

    try:
        assert can_read_consents()
        downgrade(empty_database_url, "0001")
        with engine.connect() as conn:
            # Other databases (the template, other tests) still use the role: it is kept, with no grant here.
            assert conn.execute(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": ROLE}).scalar() == 1
            assert not can_read_consents()
            assert conn.execute(sa.text("SELECT count(*) FROM pg_proc WHERE proname = 'pso_grant_replica_privileges'"
                                        )).scalar() == 0
        upgrade(empty_database_url)
        assert can_read_consents()
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# No personal data in Dagster's event log: materialize everything on synthetic data.
# ---------------------------------------------------------------------------------------------

MIN_VALUE_LENGTH = 5  # shorter values ("Amy", "yes") would match ordinary words in log text

# Fallback keys for dynamic partitions when no sensor registers them on the first tick.
DYNAMIC_KEY_QUERIES = {
    "programmes": "SELECT type FROM programmes ORDER BY id",
    "renal_units": "SELECT code FROM facility ORDER BY code",
    "replicas": "SELECT replica_id FROM replica_state ORDER BY replica_id",
}


def _leaf_strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaf_strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _leaf_strings(v)]
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, dt.datetime):
        return [value.date().isoformat()]
    if isinstance(value, dt.date):
        return [value.isoformat()]
    return [str(value)]


def personal_values(conn: sa.Connection) -> set[str]:
    """Every value of every PII column (schema.PII_COLUMNS) in the public tables and replica schemas."""
    schemas = ["public"] + list(conn.execute(sa.text(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'replica\\_%' ORDER BY 1")).scalars())
    values: set[str] = set()
    for qualified in schema.PII_COLUMNS:
        table, column = qualified.split(".")
        for namespace in schemas:
            exists = conn.execute(sa.text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = :s AND table_name = :t "
                "AND column_name = :c"), {"s": namespace, "t": table, "c": column}).first()
            if not exists:
                continue
            rows = conn.execute(sa.text(
                f'SELECT DISTINCT "{column}" FROM "{namespace}"."{table}" WHERE "{column}" IS NOT NULL'))
            for (value,) in rows:
                if table == "consents" and column == "health_answers":
                    # Only the free-text answers are personal; the questions are the form's own text.
                    value = [a.get("notes") for a in value if isinstance(a, dict)]
                values.update(s.strip() for s in _leaf_strings(value))
    return {v for v in values if len(v) >= MIN_VALUE_LENGTH}


def register_dynamic_partitions(defs, instance, engine, resources) -> None:
    """Register dynamic partition keys the way the deployment does (sensor ticks), with a DB fallback."""
    from dagster import AddDynamicPartitionsRequest, DynamicPartitionsDefinition, build_sensor_context

    for sensor_def in defs.sensors or []:
        if getattr(sensor_def, "sensor_type", None) is not None and sensor_def.sensor_type.value != "STANDARD":
            continue
        try:
            context = build_sensor_context(instance=instance, resources=resources, definitions=defs)
            result = sensor_def.evaluate_tick(context)
        except Exception:  # a sensor that needs more state than a first tick; the fallback covers it
            continue
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    names = {node.partitions_def.name for node in defs.resolve_asset_graph().asset_nodes
             if isinstance(node.partitions_def, DynamicPartitionsDefinition)}
    with engine.connect() as conn:
        for name in names:
            if instance.get_dynamic_partitions(name) or name not in DYNAMIC_KEY_QUERIES:
                continue
            try:
                keys = [str(k) for k in conn.execute(sa.text(DYNAMIC_KEY_QUERIES[name])).scalars()]
            except sa.exc.DBAPIError:
                conn.rollback()
                continue
            instance.add_dynamic_partitions(name, keys[:2])


def one_partition_key(partitions_def, instance) -> str | None:
    """A partition that has data on freshly seeded synthetic data: the latest one."""
    if partitions_def is None:
        return None
    keys = partitions_def.get_partition_keys(dynamic_partitions_store=instance)
    # A partition that exists ahead of time (end_offset, e.g. today's print day) is not complete yet.
    ahead = max(0, getattr(partitions_def, "end_offset", 0) or 0)
    return keys[-1 - ahead] if len(keys) > ahead else None


def materialize_everything(defs, instance, resources):
    """Materialize every materializable assets definition once (one partition each), upstream first.

    Returns (results by asset label, failures as "label[key]: error" strings, labels skipped for
    want of a partition key)."""
    from dagster import materialize

    asset_graph = defs.resolve_asset_graph()
    assets_defs = [a for a in asset_graph.assets_defs if a.is_materializable and a.keys]
    order = {key: i for i, key in enumerate(asset_graph.toposorted_asset_keys)}
    assets_defs.sort(key=lambda a: min(order.get(k, 0) for k in a.keys))
    # The unbound definitions: the resolved graph's carry the Definitions' resources already.
    everything = [*(defs.assets or []), *(defs.asset_checks or [])]
    results, failures, skipped = {}, [], []
    for assets_def in assets_defs:
        label = ",".join(sorted(k.to_user_string() for k in assets_def.keys))
        partitions_def = assets_def.partitions_def
        key = one_partition_key(partitions_def, instance)
        if partitions_def is not None and key is None:
            skipped.append(label)  # e.g. a dynamic registry whose family has no synthetic rows yet
            continue
        try:
            result = materialize(everything, selection=list(assets_def.keys), partition_key=key,
                                 instance=instance, resources=resources, raise_on_error=False)
        except Exception as error:  # e.g. config a scheduled run would supply
            failures.append(f"{label}: {type(error).__name__}")
            continue
        results[label] = result
        if not result.success:
            errors = []
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
                    error = event.step_failure_data.error
                    while error.cause is not None:
                        error = error.cause
                    errors.append(f"{error.cls_name}: {error.message.strip()[:300]}")
            failures.append(f"{label}[{key}]: {'; '.join(errors) or 'run failed'}")
    return results, failures, skipped


def event_log_text(instance) -> str:
    """Everything Dagster stored about the runs: event records (messages, metadata, errors), tags, config."""
    from dagster._serdes import serialize_value

    parts = []
    for run in instance.get_runs():
        parts.append(json.dumps({"tags": dict(run.tags), "config": run.run_config}, default=str))
        parts.extend(serialize_value(entry) for entry in instance.all_logs(run.run_id))
    return "\n".join(parts)


def _log_value_asset(value: str):
    from dagster import asset

    @asset(name="pii_scan_control")
    def pii_scan_control(context) -> None:
        context.log.info(f"control value {value}")

    return pii_scan_control


@pytest.fixture
def runner_database_url(database_url, engine):
    """A URL that logs in as a member of pso_runner: runs get exactly the role's privileges."""
    login = f"pso_runner_test_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {login} LOGIN IN ROLE {ROLE}"))
    url = make_url(database_url).set(username=login, password=None).render_as_string(hide_password=False)
    yield url
    from resources.postgres import _engines

    for key, cached in list(_engines.items()):
        if f"//{login}@" in key[0]:
            cached.dispose()
            _engines.pop(key, None)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP OWNED BY {login}"))
        conn.execute(sa.text(f"DROP ROLE {login}"))


def test_materialize_everything_as_runner_leaks_no_personal_data(settings, s3, engine, database_url,
                                                                 runner_database_url, monkeypatch):
    from dagster import DagsterInstance, materialize

    from orchestration.definitions import build_resources, defs
    from orchestration.synthetic import seed_all

    if not [node for node in defs.resolve_asset_graph().asset_nodes if node.is_materializable]:
        pytest.skip("no family defines a materializable asset yet")
    seed_all(database_url, scale="tiny", s3=s3, settings=settings, echo=lambda *_: None)
    with engine.connect() as conn:
        secrets = personal_values(conn)
    assert secrets, "synthetic data should contain personal values to look for"

    monkeypatch.setenv("PSO_DATABASE_URL", runner_database_url)  # runs connect as the run role
    resources = build_resources()
    with DagsterInstance.ephemeral() as instance:
        register_dynamic_partitions(defs, instance, engine, resources)
        results, failures, skipped = materialize_everything(defs, instance, resources)
        text = event_log_text(instance)

        # Control: the scan does find a personal value once something logs it.
        planted = sorted(secrets)[0]
        materialize([_log_value_asset(planted)], instance=instance)
        assert planted in event_log_text(instance)

    leaked = sorted(v for v in secrets if v in text)
    assert leaked == [], f"{len(leaked)} of {len(secrets)} personal values appear in Dagster's event log, e.g. {leaked[:3]}"
    assert results, f"nothing was materialized: {failures}"
    assert failures == [], f"assets that did not materialize as {ROLE}: {failures}"
    print(f"materialized {len(results)} assets definitions as {ROLE}, scanned for {len(secrets)} personal values; "
          f"no partition key for: {skipped}")


# ---------------------------------------------------------------------------------------------
# S3: every write requests server-side encryption.
# ---------------------------------------------------------------------------------------------

S3_WRITE = re.compile(r"\.(put_object|upload_file|upload_fileobj|create_multipart_upload|copy_object)\(")
SCANNED = ("assets", "sensors", "schedules", "resources", "orchestration", "bench")


def s3_writes_without_sse() -> list[str]:
    """`file:line` of every S3 write call whose argument list does not pass ServerSideEncryption."""
    missing = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = path.read_text()
            for match in S3_WRITE.finditer(source):
                # The call's argument text: up to the matching closing parenthesis.
                depth, end = 1, match.end()
                while depth and end < len(source):
                    depth += {"(": 1, ")": -1}.get(source[end], 0)
                    end += 1
                args = source[match.end():end]
                if "ServerSideEncryption" not in args and "SSE_ARGS" not in args and "sse" not in args.lower():
                    missing.append(f"{path.relative_to(ROOT)}:{source.count(chr(10), 0, match.start()) + 1}")
    return missing


def test_every_s3_write_requests_server_side_encryption():
    assert s3_writes_without_sse() == []
