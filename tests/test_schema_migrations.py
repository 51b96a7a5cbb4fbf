"""The schema (orchestration/schema.py) and its Alembic migrations, against a real Postgres.

Uses the `empty_database_url` fixture (tests/conftest.py): a fresh, empty database per test.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestration import schema
from orchestration.migrate import current_revision, downgrade, head_revision, upgrade


@pytest.fixture
def migrated_engine(empty_database_url):
    upgrade(empty_database_url)
    engine = sa.create_engine(empty_database_url, connect_args={"prepare_threshold": None})
    yield engine
    engine.dispose()


def _public_objects(conn: sa.Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(conn)
    functions = conn.execute(sa.text(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public'"
    )).scalars()
    return {
        "tables": set(inspector.get_table_names()),
        "views": set(inspector.get_view_names()),
        "functions": set(functions),
    }


def _columns(conn: sa.Connection, table: str, schema_name: str | None = None) -> list[str]:
    return [c["name"] for c in sa.inspect(conn).get_columns(table, schema=schema_name)]


# --- migrations -------------------------------------------------------------------------------


def test_upgrade_then_downgrade_leaves_public_empty(empty_database_url):
    assert current_revision(empty_database_url) is None
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()

    downgrade(empty_database_url)

    assert current_revision(empty_database_url) is None
    engine = sa.create_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            objects = _public_objects(conn)
    finally:
        engine.dispose()
    assert objects["tables"] <= {"alembic_version"}  # Alembic keeps its (empty) bookkeeping table
    assert objects["views"] == set()
    assert objects["functions"] == set()


def test_upgrade_twice_is_a_no_op_and_matches_the_declared_schema(migrated_engine):
    url = migrated_engine.url.render_as_string(hide_password=False)
    with migrated_engine.connect() as conn:
        before = _public_objects(conn)

    upgrade(url)

    with migrated_engine.connect() as conn:
        assert _public_objects(conn) == before
        assert conn.execute(sa.text("SELECT count(*) FROM supported_disease")).scalar_one() == 3
        assert conn.execute(sa.text("SELECT count(*) FROM stats_settings")).scalar_one() == 1
        # The migration creates exactly what schema.metadata declares.
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), schema.metadata)
    assert diff == []
    assert current_revision(url) == head_revision()


def _identity_caches(conn: sa.Connection) -> dict[str, int]:
    """Per table: the cache of its identity column's sequence (Alembic's compare_metadata ignores it)."""
    return dict(conn.execute(sa.text(
        "SELECT c.relname, s.seqcache FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public' "
        "JOIN pg_sequence s ON s.seqrelid = pg_get_serial_sequence(quote_ident(c.relname), a.attname)::regclass "
        "WHERE a.attidentity <> '' AND c.relkind = 'r'")).all())


def test_identity_caches_match_the_declared_schema_and_downgrade(migrated_engine):
    url = migrated_engine.url.render_as_string(hide_password=False)
    declared = {table.name: column.identity.cache or 1 for table in schema.metadata.sorted_tables
                for column in table.columns if column.identity is not None}
    with migrated_engine.connect() as conn:
        assert _identity_caches(conn) == declared
    status_tables = {name for name, cache in declared.items() if cache == schema.STATUS_ID_CACHE}
    assert status_tables == {"patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses",
                             "patient_session_session_statuses", "patient_session_registration_statuses"}
    downgrade(url, "0003")
    with migrated_engine.connect() as conn:
        assert set(_identity_caches(conn).values()) == {1}


# --- names from domain.md -----------------------------------------------------------------------

EXPECTED_COLUMNS = {
    # §1 Mavis
    "programmes": {"id", "type"},
    "patients": {"id", "given_name", "family_name", "date_of_birth", "birth_academic_year"},
    "parents": {"id", "full_name"},
    "sessions": {"id"},
    "session_programmes": {"session_id", "programme_id"},
    "session_dates": {"id", "session_id", "value"},
    "patient_sessions": {"id", "patient_id", "session_id"},
    "session_attendances": {"patient_session_id", "session_date_id", "attending"},
    "consents": {"id", "patient_id", "programme_id", "parent_id", "response", "route", "health_answers",
                 "invalidated_at", "withdrawn_at", "submitted_at", "created_at"},
    "triages": {"id", "patient_id", "programme_id", "status", "invalidated_at", "created_at"},
    "vaccination_records": {"id", "patient_id", "programme_id", "session_id", "outcome", "performed_at",
                            "dose_sequence", "discarded_at"},
    "patient_consent_statuses": {"id", "patient_id", "programme_id", "status"},
    "patient_triage_statuses": {"id", "patient_id", "programme_id", "status"},
    "patient_vaccination_statuses": {"id", "patient_id", "programme_id", "status"},
    "patient_session_session_statuses": {"id", "patient_session_id", "programme_id", "status"},
    "patient_session_registration_statuses": {"id", "patient_session_id", "status"},
    "status_refresh_requests": {"id", "scope", "patient_id", "session_id", "reason", "requested_at",
                                "processed_at"},
    # §2 UKRDC
    "patientrecord": {"pid", "ukrdcid", "sendingfacility", "sendingextract"},
    "patient": {"pid", "birthtime", "deathtime", "gender", "ethnicgroupcode"},
    "treatment": {"pid", "healthcarefacilitycode", "fromtime", "totime", "admitreasoncode", "qbl05"},
    "dialysissession": {"pid", "proceduretypecode", "proceduretime"},
    "facility": {"code"},
    "stats_settings": {"aot_min_records", "aot_kinds", "skip_if_fresher_than"},
    "facility_stats": {"facility_code", "stats_kind", "window_start", "window_end", "outcome", "payload",
                       "population", "computed_at", "expires_at", "duration_ms", "calculator_version"},
    "facility_record_counts": {"facility_code", "ukrdc_record_count", "counted_at"},
    # §3 Notify
    "services": {"id", "organisation_id"},
    "inbound_numbers": {"number", "service_id", "active"},
    "service_data_retention": {"service_id", "notification_type", "days_of_retention"},
    "notifications": set(schema.NOTIFICATION_HISTORY_COLUMNS)
    | {"to", "normalised_to", "personalisation", "reply_to_text", "unsubscribe_link"},
    "inbound_sms": {"id", "service_id", "created_at", "notify_number", "provider_date", "provider_reference",
                    "provider", "user_number", "content"},
    "ft_notification_status": {"bst_date", "template_id", "service_id", "job_id", "notification_type",
                               "key_type", "notification_status", "notification_count", "created_at",
                               "updated_at"},
    "returned_letters": {"id", "service_id", "notification_id", "reported_at", "created_at"},
    "service_contact_list": {"id", "service_id", "original_file_name", "row_count", "template_type",
                             "created_at", "archived", "s3_key"},
    "deep_archive_manifests": {"hour_start", "s3_key", "row_count", "checksum", "exported_at", "deleted_at"},
    # §4 letters
    "letter_batches": {"id", "print_date", "postage", "sequence", "zip_name", "service_id", "organisation_id",
                       "letter_count", "total_bytes", "state", "uploaded_at"},
    "letter_batch_items": {"batch_id", "notification_id", "pdf_key", "size_bytes"},
    "letter_print_volumes": {"print_date", "postage", "letters", "sheets"},
    # §3.5 Simple (public bookkeeping)
    "replica_state": {"replica_id", "current_facility_uuid", "sync_group_switched_at", "last_maintenance_at"},
    "sync_runs": {"id", "source", "replica_id", "started_at", "finished_at", "all_succeeded", "touched"},
    "prune_runs": {"replica_id", "kind", "started_at", "finished_at", "deleted", "skipped_reason"},
    # §5 SimpleReport
    "supported_disease": {"internal_id", "name", "loinc"},
    "test_order": {"internal_id", "result", "test_event_id", "created_at", "created_by", "updated_at",
                   "updated_by"},
    "test_event": {"internal_id", "test_order_id", "result", "correction_status",
                   "prior_corrected_test_event_id", "created_at"},
    "result": {"internal_id", "is_deleted", "test_event_id", "test_order_id", "disease_id", "result",
               "test_result", "created_at", "created_by", "updated_at", "updated_by"},
    "alerts": {"id", "kind", "created_at", "run_id", "message", "details"},
}

NOTIFICATION_HISTORY_23 = [
    "id", "job_id", "job_row_number", "service_id", "template_id", "template_version", "api_key_id",
    "key_type", "notification_type", "created_at", "sent_at", "sent_by", "updated_at", "reference",
    "billable_units", "client_reference", "international", "phone_prefix", "rate_multiplier",
    "notification_status", "created_by_id", "postage", "document_download_count",
]


def test_domain_tables_and_columns_exist(migrated_engine):
    with migrated_engine.connect() as conn:
        inspector = sa.inspect(conn)
        tables = set(inspector.get_table_names())
        for table, columns in EXPECTED_COLUMNS.items():
            assert table in tables, table
            missing = columns - set(_columns(conn, table))
            assert not missing, f"{table} lacks {missing}"

        assert _columns(conn, "notification_history") == NOTIFICATION_HISTORY_23
        assert list(schema.NOTIFICATION_HISTORY_COLUMNS) == NOTIFICATION_HISTORY_23
        assert set(_columns(conn, "inbound_sms_history")) == {
            "id", "created_at", "service_id", "notify_number", "provider_date", "provider_reference", "provider"}
        assert _columns(conn, "notifications_all_time_view") == NOTIFICATION_HISTORY_23

        # Instants are timestamptz; UKRDC clinical times are naive.
        types = {c["name"]: c["type"] for c in inspector.get_columns("patient")}
        assert types["birthtime"].timezone is False
        types = {c["name"]: c["type"] for c in inspector.get_columns("notifications")}
        assert types["created_at"].timezone is True

        # The status tables cascade from their owners and index their status.
        for table, owner in [("patient_consent_statuses", "patients"),
                             ("patient_session_registration_statuses", "patient_sessions")]:
            fks = {fk["referred_table"]: fk["options"].get("ondelete") for fk in inspector.get_foreign_keys(table)}
            assert fks[owner] == "CASCADE"
            assert any(ix["column_names"] == ["status"] for ix in inspector.get_indexes(table))


def test_pii_columns_are_marked_and_never_in_history():
    assert set(schema.PII_COLUMNS) >= {
        "notifications.to", "notifications.normalised_to", "notifications.personalisation",
        "notifications.reply_to_text", "notifications.unsubscribe_link",
        "inbound_sms.user_number", "inbound_sms.content",
    }
    for table in ("notification_history", "inbound_sms_history"):
        assert not [c for c in schema.metadata.tables[table].columns if c.info.get("pii")]


def test_seeds(migrated_engine):
    with migrated_engine.connect() as conn:
        diseases = conn.execute(sa.text("SELECT internal_id, name, loinc FROM supported_disease")).all()
        settings = conn.execute(sa.text(
            "SELECT aot_min_records, aot_kinds, skip_if_fresher_than FROM stats_settings")).one()
    assert {(d.internal_id, d.name, d.loinc) for d in diseases} == set(schema.SUPPORTED_DISEASES)
    assert tuple(settings) == (5000, ["dialysis"], dt.timedelta(hours=1))


# --- refresh-request triggers (§1.8) ----------------------------------------------------------


def _mavis_fixture(conn: sa.Connection, patients: int = 3) -> tuple[list[int], int]:
    programme_id = conn.execute(sa.text("INSERT INTO programmes (type) VALUES ('hpv') RETURNING id")).scalar_one()
    patient_ids = conn.execute(sa.text(
        "INSERT INTO patients (given_name, family_name, date_of_birth, birth_academic_year) "
        "SELECT 'Given', 'Family ' || n, DATE '2012-01-01', 2011 FROM generate_series(1, :n) AS n RETURNING id"
    ), {"n": patients}).scalars().all()
    conn.execute(sa.text("DELETE FROM status_refresh_requests"))
    return patient_ids, programme_id


def _pending(conn: sa.Connection) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.text(
        "SELECT scope, patient_id, session_id FROM status_refresh_requests "
        "WHERE processed_at IS NULL ORDER BY scope, patient_id, session_id"))]


_BULK_CONSENTS = sa.text(
    # Four consents per patient in one statement: still one request per patient.
    "INSERT INTO consents (patient_id, programme_id, response, route) "
    "SELECT p.id, :programme_id, 0, 0 FROM patients AS p CROSS JOIN generate_series(1, 4)"
)


def test_bulk_consent_insert_requests_one_refresh_per_patient(migrated_engine):
    with migrated_engine.begin() as conn:
        patient_ids, programme_id = _mavis_fixture(conn)
        conn.execute(_BULK_CONSENTS, {"programme_id": programme_id})
        assert _pending(conn) == [(schema.RefreshScope.PATIENT, pid, None) for pid in sorted(patient_ids)]

        conn.execute(sa.text("DELETE FROM status_refresh_requests"))
        conn.execute(sa.text("UPDATE consents SET withdrawn_at = now(), response = 1 WHERE patient_id = :p"),
                     {"p": patient_ids[0]})
        assert _pending(conn) == [(0, patient_ids[0], None)]


def test_skip_switch_suppresses_requests_for_the_transaction_only(migrated_engine):
    with migrated_engine.begin() as conn:
        _, programme_id = _mavis_fixture(conn)
        conn.execute(sa.text("SET LOCAL pso.skip_refresh_triggers = 'on'"))
        conn.execute(_BULK_CONSENTS, {"programme_id": programme_id})
        assert _pending(conn) == []
    with migrated_engine.begin() as conn:  # a new transaction: the switch is off again
        conn.execute(sa.text("DELETE FROM consents"))
        assert len(_pending(conn)) == 3


def test_session_and_patient_triggers(migrated_engine):
    with migrated_engine.begin() as conn:
        patient_ids, programme_id = _mavis_fixture(conn, patients=2)
        session_id = conn.execute(sa.text("INSERT INTO sessions DEFAULT VALUES RETURNING id")).scalar_one()
        conn.execute(sa.text("INSERT INTO session_programmes (session_id, programme_id) VALUES (:s, :p)"),
                     {"s": session_id, "p": programme_id})
        conn.execute(sa.text(
            "INSERT INTO session_dates (session_id, value) VALUES (:s, DATE '2025-03-01'), (:s, DATE '2025-03-02')"
        ), {"s": session_id})
        assert _pending(conn) == [(1, None, session_id), (1, None, session_id)]  # one per statement

        conn.execute(sa.text("DELETE FROM status_refresh_requests"))
        # birth_academic_year: only a real change asks for a refresh.
        conn.execute(sa.text("UPDATE patients SET family_name = 'Renamed'"))
        conn.execute(sa.text("UPDATE patients SET birth_academic_year = 2012 WHERE id = :p"),
                     {"p": patient_ids[1]})
        assert _pending(conn) == [(0, patient_ids[1], None)]

        conn.execute(sa.text("DELETE FROM status_refresh_requests"))
        ps_id = conn.execute(sa.text(
            "INSERT INTO patient_sessions (patient_id, session_id) VALUES (:p, :s) RETURNING id"
        ), {"p": patient_ids[0], "s": session_id}).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO session_attendances (patient_session_id, session_date_id, attending) "
            "SELECT :ps, id, true FROM session_dates WHERE session_id = :s"
        ), {"ps": ps_id, "s": session_id})
        assert _pending(conn) == [(0, patient_ids[0], None), (0, patient_ids[0], None)]


# --- replica schemas (§3.5) ---------------------------------------------------------------------


def test_replica_schema_name_validation():
    assert schema.replica_schema_name("north_1") == "replica_north_1"
    for bad in ["", "North", "a-b", "a;drop", "x" * 41, None]:
        with pytest.raises(ValueError):
            schema.replica_schema_name(bad)


def test_create_replica_schema_is_idempotent(migrated_engine):
    with migrated_engine.begin() as conn:
        assert schema.create_replica_schema(conn, "north") == "replica_north"
    with migrated_engine.begin() as conn:
        schema.create_replica_schema(conn, "north")
        inspector = sa.inspect(conn)
        assert set(inspector.get_table_names(schema="replica_north")) == set(schema.replica_metadata.tables)
        assert {"uuid", "address_uuid", "registered_facility_id", "assigned_facility_id", "sync_status",
                "deleted_at", "retain_until"} <= set(_columns(conn, "patient", "replica_north"))
        # UKRDC's public patient table is untouched by the replica's own patient table.
        assert "pid" in _columns(conn, "patient")

        # The replica tables work through the schema translation; phone numbers cascade.
        address, patient = uuid.uuid4(), uuid.uuid4()
        with schema.replica_connection(conn, "north") as replica:
            replica.execute(schema.replica_patient_address.insert().values(uuid=address))
            replica.execute(schema.replica_patient.insert().values(
                uuid=patient, address_uuid=address, sync_status="DONE"))
            replica.execute(schema.replica_patient_phone_number.insert().values(
                uuid=uuid.uuid4(), patient_uuid=patient))
            replica.execute(schema.replica_patient.delete())
            phones = sa.select(sa.func.count()).select_from(schema.replica_patient_phone_number)
            assert replica.execute(phones).scalar_one() == 0
        # Outside the block the connection is back on public (UKRDC's patient has no uuid).
        assert not conn.get_execution_options().get("schema_translate_map")
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.patient)).scalar_one() == 0

        schema.drop_replica_schema(conn, "north")
        assert "replica_north" not in sa.inspect(conn).get_schema_names()
