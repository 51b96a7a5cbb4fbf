"""Initial schema: every table of orchestration/schema.py, plus what SQLAlchemy cannot declare.

Tables were generated with `alembic revision --autogenerate` against an empty database and
then edited by hand to add:
- the view `notifications_all_time_view` (§3.2);
- the status-refresh trigger functions and statement-level triggers (§1.8);
- seed rows: the three `supported_disease` rows (§5.2) and the single `stats_settings` row (§2.2);
- the foreign key test_order.test_event_id, added after test_event exists (the two tables
  refer to each other).

Migrations are frozen: this file does not import orchestration.schema, so later changes to the
declarations need a new revision.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# The 23 non-PII columns shared by notifications and notification_history (domain.md §3.2).
NOTIFICATION_HISTORY_COLUMNS = (
    "id", "job_id", "job_row_number", "service_id", "template_id", "template_version", "api_key_id",
    "key_type", "notification_type", "created_at", "sent_at", "sent_by", "updated_at", "reference",
    "billable_units", "client_reference", "international", "phone_prefix", "rate_multiplier",
    "notification_status", "created_by_id", "postage", "document_download_count",
)

# --- Status refresh requests (domain.md §1.8) -------------------------------------------------
#
# Statement-level triggers with transition tables: a bulk INSERT/COPY/UPDATE of a million rows
# writes one request per distinct patient (or session) it touched, not one per row. Postgres
# allows transition tables only on single-event triggers without column lists, hence one trigger
# per event, and the patients trigger compares old and new birth_academic_year itself.
#
# Bulk loaders that refresh statuses themselves can switch the triggers off for their
# transaction (safe under PgBouncer transaction pooling):
#     SET LOCAL pso.skip_refresh_triggers = 'on';
SKIP_CHECK = "IF current_setting('pso.skip_refresh_triggers', true) = 'on' THEN RETURN NULL; END IF;"

TRIGGER_FUNCTIONS = {
    # Tables with a patient_id column: consents, triages, vaccination_records, patient_sessions.
    "pso_request_patient_refresh": f"""
        BEGIN
            {SKIP_CHECK}
            IF TG_OP = 'INSERT' THEN
                INSERT INTO status_refresh_requests (scope, patient_id, reason)
                SELECT DISTINCT 0, patient_id, TG_TABLE_NAME || ' insert' FROM new_rows;
            ELSIF TG_OP = 'UPDATE' THEN
                -- Both sides: a merge or correction can move a row to another patient.
                INSERT INTO status_refresh_requests (scope, patient_id, reason)
                SELECT 0, patient_id, TG_TABLE_NAME || ' update'
                FROM (SELECT patient_id FROM new_rows UNION SELECT patient_id FROM old_rows) AS touched;
            ELSE
                INSERT INTO status_refresh_requests (scope, patient_id, reason)
                SELECT DISTINCT 0, patient_id, TG_TABLE_NAME || ' delete' FROM old_rows;
            END IF;
            RETURN NULL;
        END
    """,
    # session_attendances: the patient is found through its patient_session. A cascade from a
    # deleted patient_session finds none here; the patient_sessions trigger covers that case.
    "pso_request_attendance_refresh": f"""
        BEGIN
            {SKIP_CHECK}
            IF TG_OP = 'INSERT' THEN
                INSERT INTO status_refresh_requests (scope, patient_id, reason)
                SELECT DISTINCT 0, ps.patient_id, 'session_attendances insert'
                FROM new_rows AS a JOIN patient_sessions AS ps ON ps.id = a.patient_session_id;
            ELSIF TG_OP = 'UPDATE' THEN
                INSERT INTO status_refresh_requests (scope, patient_id, reason)
                SELECT DISTINCT 0, ps.patient_id, 'session_attendances update'
                FROM (SELECT patient_session_id FROM new_rows
                      UNION SELECT patient_session_id FROM old_rows) AS a
                JOIN patient_sessions AS ps ON ps.id = a.patient_session_id;
            ELSE
                INSERT INTO status_refresh_requests (scope, patient_id, reason)
                SELECT DISTINCT 0, ps.patient_id, 'session_attendances delete'
                FROM old_rows AS a JOIN patient_sessions AS ps ON ps.id = a.patient_session_id;
            END IF;
            RETURN NULL;
        END
    """,
    # patients: only a changed birth_academic_year changes eligibility.
    "pso_request_birth_year_refresh": f"""
        BEGIN
            {SKIP_CHECK}
            INSERT INTO status_refresh_requests (scope, patient_id, reason)
            SELECT 0, n.id, 'patients birth_academic_year'
            FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
            WHERE n.birth_academic_year IS DISTINCT FROM o.birth_academic_year;
            RETURN NULL;
        END
    """,
    # session_programmes, session_dates: a session-scoped refresh.
    "pso_request_session_refresh": f"""
        BEGIN
            {SKIP_CHECK}
            IF TG_OP = 'INSERT' THEN
                INSERT INTO status_refresh_requests (scope, session_id, reason)
                SELECT DISTINCT 1, session_id, TG_TABLE_NAME || ' insert' FROM new_rows;
            ELSIF TG_OP = 'UPDATE' THEN
                INSERT INTO status_refresh_requests (scope, session_id, reason)
                SELECT 1, session_id, TG_TABLE_NAME || ' update'
                FROM (SELECT session_id FROM new_rows UNION SELECT session_id FROM old_rows) AS touched;
            ELSE
                INSERT INTO status_refresh_requests (scope, session_id, reason)
                SELECT DISTINCT 1, session_id, TG_TABLE_NAME || ' delete' FROM old_rows;
            END IF;
            RETURN NULL;
        END
    """,
}

# (table, event, function): one statement-level trigger each.
TRIGGERS = (
    ("consents", "INSERT", "pso_request_patient_refresh"),
    ("consents", "UPDATE", "pso_request_patient_refresh"),
    ("consents", "DELETE", "pso_request_patient_refresh"),
    ("triages", "INSERT", "pso_request_patient_refresh"),
    ("triages", "UPDATE", "pso_request_patient_refresh"),
    ("triages", "DELETE", "pso_request_patient_refresh"),
    ("vaccination_records", "INSERT", "pso_request_patient_refresh"),
    ("vaccination_records", "UPDATE", "pso_request_patient_refresh"),
    ("vaccination_records", "DELETE", "pso_request_patient_refresh"),
    ("patient_sessions", "INSERT", "pso_request_patient_refresh"),
    ("patient_sessions", "DELETE", "pso_request_patient_refresh"),
    ("session_attendances", "INSERT", "pso_request_attendance_refresh"),
    ("session_attendances", "UPDATE", "pso_request_attendance_refresh"),
    ("session_attendances", "DELETE", "pso_request_attendance_refresh"),
    ("patients", "UPDATE", "pso_request_birth_year_refresh"),
    ("session_programmes", "INSERT", "pso_request_session_refresh"),
    ("session_programmes", "DELETE", "pso_request_session_refresh"),
    ("session_dates", "INSERT", "pso_request_session_refresh"),
    ("session_dates", "UPDATE", "pso_request_session_refresh"),
    ("session_dates", "DELETE", "pso_request_session_refresh"),
)


def _create_refresh_triggers() -> None:
    for name, body in TRIGGER_FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n{body}\n$fn$")
    for table, event, function in TRIGGERS:
        referencing = {
            "INSERT": "NEW TABLE AS new_rows",
            "UPDATE": "NEW TABLE AS new_rows OLD TABLE AS old_rows",
            "DELETE": "OLD TABLE AS old_rows",
        }[event]
        op.execute(
            f"CREATE TRIGGER pso_refresh_{table}_{event.lower()} AFTER {event} ON {table} "
            f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )


def _create_views() -> None:
    columns = ", ".join(NOTIFICATION_HISTORY_COLUMNS)
    op.execute(
        "CREATE VIEW notifications_all_time_view AS "
        f"SELECT {columns} FROM notifications UNION ALL SELECT {columns} FROM notification_history"
    )


def _seed() -> None:
    # Fixed ids (as orchestration.schema.SUPPORTED_DISEASES) keep every database identical.
    op.execute(
        "INSERT INTO supported_disease (internal_id, name, loinc) VALUES "
        "('6d7f5a1e-3c55-4a4b-9f4e-000000000001', 'COVID-19', '96741-4'), "
        "('6d7f5a1e-3c55-4a4b-9f4e-000000000002', 'Flu A', 'LP14239-5'), "
        "('6d7f5a1e-3c55-4a4b-9f4e-000000000003', 'Flu B', 'LP14240-3')"
    )
    # The single settings row, with the column defaults (5000 records, dialysis, 1 hour).
    op.execute("INSERT INTO stats_settings DEFAULT VALUES")


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_index(op.f('ix_alerts_kind_created_at'), 'alerts', ['kind', 'created_at'], unique=False)

    op.create_table('deep_archive_manifests',
    sa.Column('hour_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('s3_key', sa.Text(), nullable=False),
    sa.Column('row_count', sa.BigInteger(), nullable=False),
    sa.Column('checksum', sa.Text(), nullable=False),
    sa.Column('exported_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('hour_start', 's3_key', name=op.f('pk_deep_archive_manifests'))
    )

    op.create_table('facility',
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_facility'))
    )

    op.create_table('facility_record_counts',
    sa.Column('facility_code', sa.Text(), nullable=False),
    sa.Column('ukrdc_record_count', sa.Integer(), nullable=False),
    sa.Column('counted_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('facility_code', name=op.f('pk_facility_record_counts'))
    )

    op.create_table('facility_stats',
    sa.Column('facility_code', sa.Text(), nullable=False),
    sa.Column('stats_kind', sa.Text(), nullable=False),
    sa.Column('window_start', sa.Date(), nullable=False),
    sa.Column('window_end', sa.Date(), nullable=False),
    sa.Column('outcome', sa.SmallInteger(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('population', sa.Integer(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('calculator_version', sa.Text(), nullable=False),
    sa.CheckConstraint("stats_kind IN ('dialysis', 'demographics')", name=op.f('ck_facility_stats_stats_kind')),
    sa.CheckConstraint('outcome IN (0, 1)', name=op.f('ck_facility_stats_outcome')),
    sa.PrimaryKeyConstraint('facility_code', 'stats_kind', 'window_start', 'window_end', name=op.f('pk_facility_stats'))
    )
    op.create_index(op.f('ix_facility_stats_expires_at'), 'facility_stats', ['expires_at'], unique=False)

    op.create_table('ft_notification_status',
    sa.Column('bst_date', sa.Date(), nullable=False),
    sa.Column('template_id', sa.UUID(), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('notification_type', sa.Text(), nullable=False),
    sa.Column('key_type', sa.Text(), nullable=False),
    sa.Column('notification_status', sa.Text(), nullable=False),
    sa.Column('notification_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('bst_date', 'template_id', 'service_id', 'job_id', 'notification_type', 'key_type', 'notification_status', name=op.f('pk_ft_notification_status'))
    )
    op.create_index(op.f('ix_ft_notification_status_bst_date_notification_type_service_id'), 'ft_notification_status', ['bst_date', 'notification_type', 'service_id'], unique=False)

    op.create_table('inbound_sms_history',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('notify_number', sa.Text(), nullable=False),
    sa.Column('provider_date', sa.DateTime(timezone=True), nullable=True),
    sa.Column('provider_reference', sa.Text(), nullable=True),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_sms_history'))
    )
    op.create_index(op.f('ix_inbound_sms_history_service_id_created_at'), 'inbound_sms_history', ['service_id', 'created_at'], unique=False)

    op.create_table('letter_batches',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('print_date', sa.Date(), nullable=False),
    sa.Column('postage', sa.Text(), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('zip_name', sa.Text(), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('organisation_id', sa.UUID(), nullable=True),
    sa.Column('letter_count', sa.Integer(), nullable=False),
    sa.Column('total_bytes', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.SmallInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('uploaded_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("postage IN ('first', 'second', 'economy', 'europe', 'rest-of-world')", name=op.f('ck_letter_batches_postage')),
    sa.CheckConstraint('sequence >= 1', name=op.f('ck_letter_batches_sequence')),
    sa.CheckConstraint('state IN (0, 1)', name=op.f('ck_letter_batches_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_letter_batches')),
    sa.UniqueConstraint('print_date', 'postage', 'sequence', name=op.f('uq_letter_batches_print_date_postage_sequence')),
    sa.UniqueConstraint('zip_name', name=op.f('uq_letter_batches_zip_name'))
    )

    op.create_table('letter_print_volumes',
    sa.Column('print_date', sa.Date(), nullable=False),
    sa.Column('postage', sa.Text(), nullable=False),
    sa.Column('letters', sa.Integer(), nullable=False),
    sa.Column('sheets', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("postage IN ('first', 'second', 'economy', 'europe', 'rest-of-world')", name=op.f('ck_letter_print_volumes_postage')),
    sa.PrimaryKeyConstraint('print_date', 'postage', name=op.f('pk_letter_print_volumes'))
    )

    op.create_table('notification_history',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=True),
    sa.Column('job_row_number', sa.Integer(), nullable=True),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('template_id', sa.UUID(), nullable=False),
    sa.Column('template_version', sa.Integer(), nullable=False),
    sa.Column('api_key_id', sa.UUID(), nullable=True),
    sa.Column('key_type', sa.Text(), nullable=False),
    sa.Column('notification_type', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_by', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('billable_units', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('client_reference', sa.Text(), nullable=True),
    sa.Column('international', sa.Boolean(), nullable=True),
    sa.Column('phone_prefix', sa.Text(), nullable=True),
    sa.Column('rate_multiplier', sa.Numeric(), nullable=True),
    sa.Column('notification_status', sa.Text(), server_default=sa.text("'created'"), nullable=False),
    sa.Column('created_by_id', sa.UUID(), nullable=True),
    sa.Column('postage', sa.Text(), nullable=True),
    sa.Column('document_download_count', sa.Integer(), nullable=True),
    sa.CheckConstraint("key_type IN ('normal', 'team', 'test')", name=op.f('ck_notification_history_key_type')),
    sa.CheckConstraint("notification_status IN ('created', 'sending', 'sent', 'delivered', 'pending', 'failed', 'technical-failure', 'temporary-failure', 'permanent-failure', 'pending-virus-check', 'validation-failed', 'virus-scan-failed', 'returned-letter', 'cancelled')", name=op.f('ck_notification_history_notification_status')),
    sa.CheckConstraint("notification_type IN ('email', 'sms', 'letter')", name=op.f('ck_notification_history_notification_type')),
    sa.CheckConstraint("postage IS NULL OR postage IN ('first', 'second', 'economy', 'europe', 'rest-of-world')", name=op.f('ck_notification_history_postage')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_history'))
    )
    op.create_index(op.f('ix_notification_history_created_at_id'), 'notification_history', ['created_at', 'id'], unique=False)
    op.create_index(op.f('ix_notification_history_service_id_notification_type_created_at'), 'notification_history', ['service_id', 'notification_type', 'created_at'], unique=False)

    op.create_table('parents',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('full_name', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_parents'))
    )

    op.create_table('patientrecord',
    sa.Column('pid', sa.Text(), nullable=False),
    sa.Column('ukrdcid', sa.Text(), nullable=False),
    sa.Column('sendingfacility', sa.Text(), nullable=False),
    sa.Column('sendingextract', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('pid', name=op.f('pk_patientrecord'))
    )
    op.create_index(op.f('ix_patientrecord_sendingfacility_sendingextract'), 'patientrecord', ['sendingfacility', 'sendingextract'], unique=False)
    op.create_index(op.f('ix_patientrecord_ukrdcid'), 'patientrecord', ['ukrdcid'], unique=False)

    op.create_table('patients',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('given_name', sa.Text(), nullable=False),
    sa.Column('family_name', sa.Text(), nullable=False),
    sa.Column('date_of_birth', sa.Date(), nullable=False),
    sa.Column('birth_academic_year', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients'))
    )

    op.create_table('programmes',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.CheckConstraint("type IN ('flu', 'hpv', 'menacwy', 'td_ipv')", name=op.f('ck_programmes_type')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_programmes')),
    sa.UniqueConstraint('type', name=op.f('uq_programmes_type'))
    )

    op.create_table('prune_runs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('replica_id', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('sync_run_id', sa.BigInteger(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deleted', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('skipped_reason', sa.Text(), nullable=True),
    sa.CheckConstraint("kind IN ('sync_group', 'maintenance')", name=op.f('ck_prune_runs_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prune_runs'))
    )
    op.create_index(op.f('ix_prune_runs_replica_id_started_at'), 'prune_runs', ['replica_id', 'started_at'], unique=False)

    op.create_table('replica_state',
    sa.Column('replica_id', sa.Text(), nullable=False),
    sa.Column('current_facility_uuid', sa.UUID(), nullable=True),
    sa.Column('sync_group_switched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_maintenance_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("replica_id ~ '^[a-z0-9_]{1,40}$'", name=op.f('ck_replica_state_replica_id')),
    sa.PrimaryKeyConstraint('replica_id', name=op.f('pk_replica_state'))
    )

    op.create_table('services',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('organisation_id', sa.UUID(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_services'))
    )

    op.create_table('sessions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sessions'))
    )

    op.create_table('stats_settings',
    sa.Column('id', sa.SmallInteger(), server_default=sa.text('1'), nullable=False),
    sa.Column('aot_min_records', sa.Integer(), server_default=sa.text('5000'), nullable=False),
    sa.Column('aot_kinds', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{dialysis}'::text[]"), nullable=False),
    sa.Column('skip_if_fresher_than', sa.Interval(), server_default=sa.text("'01:00:00'::interval"), nullable=False),
    sa.Column('ttl', sa.Interval(), server_default=sa.text("'08:00:00'::interval"), nullable=False),
    sa.CheckConstraint("ttl > '00:00:00'::interval", name=op.f('ck_stats_settings_ttl')),
    sa.CheckConstraint("aot_kinds <@ ARRAY['dialysis', 'demographics']::text[]", name=op.f('ck_stats_settings_aot_kinds')),
    sa.CheckConstraint('id = 1', name=op.f('ck_stats_settings_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stats_settings'))
    )

    op.create_table('status_refresh_requests',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('scope', sa.SmallInteger(), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=True),
    sa.Column('session_id', sa.BigInteger(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('requested_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('(scope = 0 AND patient_id IS NOT NULL) OR (scope = 1 AND session_id IS NOT NULL) OR scope = 2', name=op.f('ck_status_refresh_requests_scope_target')),
    sa.CheckConstraint('scope IN (0, 1, 2)', name=op.f('ck_status_refresh_requests_scope')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_status_refresh_requests'))
    )
    op.create_index('ix_status_refresh_requests_pending', 'status_refresh_requests', ['id'], unique=False, postgresql_where=sa.text('processed_at IS NULL'))

    op.create_table('supported_disease',
    sa.Column('internal_id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('loinc', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('internal_id', name=op.f('pk_supported_disease')),
    sa.UniqueConstraint('loinc', name=op.f('uq_supported_disease_loinc')),
    sa.UniqueConstraint('name', name=op.f('uq_supported_disease_name'))
    )

    op.create_table('sync_runs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('replica_id', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('all_succeeded', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('touched', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.CheckConstraint("source <> 'replica' OR replica_id IS NOT NULL", name=op.f('ck_sync_runs_replica_id')),
    sa.CheckConstraint("source IN ('replica', 'immunisation_import', 'renal_feed')", name=op.f('ck_sync_runs_source')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_runs'))
    )
    op.create_index(op.f('ix_sync_runs_finished_at_id'), 'sync_runs', ['finished_at', 'id'], unique=False)

    op.create_table('test_order',
    sa.Column('internal_id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_by', sa.UUID(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_by', sa.UUID(), nullable=True),
    sa.Column('result', sa.Text(), nullable=True),
    sa.Column('test_event_id', sa.UUID(), nullable=True),
    sa.CheckConstraint("result IS NULL OR result IN ('POSITIVE', 'NEGATIVE', 'UNDETERMINED')", name=op.f('ck_test_order_result')),
    sa.PrimaryKeyConstraint('internal_id', name=op.f('pk_test_order')),
    sa.UniqueConstraint('test_event_id', name=op.f('uq_test_order_test_event_id'))
    )
    op.create_index(op.f('ix_test_order_created_at'), 'test_order', ['created_at'], unique=False)

    op.create_table('consents',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('programme_id', sa.BigInteger(), nullable=False),
    sa.Column('parent_id', sa.BigInteger(), nullable=True),
    sa.Column('response', sa.SmallInteger(), nullable=False),
    sa.Column('route', sa.SmallInteger(), nullable=False),
    sa.Column('health_answers', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('invalidated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('submitted_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('response IN (0, 1, 2)', name=op.f('ck_consents_response')),
    sa.CheckConstraint('route IN (0, 1, 2, 3, 4)', name=op.f('ck_consents_route')),
    sa.ForeignKeyConstraint(['parent_id'], ['parents.id'], name=op.f('fk_consents_parent_id')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_consents_patient_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['programme_id'], ['programmes.id'], name=op.f('fk_consents_programme_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consents'))
    )
    op.create_index(op.f('ix_consents_patient_id_programme_id'), 'consents', ['patient_id', 'programme_id'], unique=False)

    op.create_table('dialysissession',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('pid', sa.Text(), nullable=False),
    sa.Column('proceduretypecode', sa.Text(), nullable=True),
    sa.Column('proceduretime', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['pid'], ['patientrecord.pid'], name=op.f('fk_dialysissession_pid'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dialysissession'))
    )
    op.create_index(op.f('ix_dialysissession_pid'), 'dialysissession', ['pid'], unique=False)
    op.create_index(op.f('ix_dialysissession_pid_proceduretime'), 'dialysissession', ['pid', 'proceduretime'], unique=False, postgresql_include=['proceduretypecode'])

    op.create_table('inbound_numbers',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('number', sa.Text(), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=True),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_inbound_numbers_service_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_numbers')),
    sa.UniqueConstraint('number', name=op.f('uq_inbound_numbers_number'))
    )
    op.create_index(op.f('ix_inbound_numbers_service_id'), 'inbound_numbers', ['service_id'], unique=False)

    op.create_table('inbound_sms',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('notify_number', sa.Text(), nullable=False),
    sa.Column('user_number', sa.Text(), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('provider_date', sa.DateTime(timezone=True), nullable=True),
    sa.Column('provider_reference', sa.Text(), nullable=True),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_inbound_sms_service_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_sms'))
    )
    op.create_index(op.f('ix_inbound_sms_service_id_created_at'), 'inbound_sms', ['service_id', 'created_at'], unique=False)

    op.create_table('letter_batch_items',
    sa.Column('batch_id', sa.UUID(), nullable=False),
    sa.Column('notification_id', sa.UUID(), nullable=False),
    sa.Column('pdf_key', sa.Text(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['letter_batches.id'], name=op.f('fk_letter_batch_items_batch_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('notification_id', name=op.f('pk_letter_batch_items'))
    )
    op.create_index(op.f('ix_letter_batch_items_batch_id'), 'letter_batch_items', ['batch_id'], unique=False)

    op.create_table('notifications',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=True),
    sa.Column('job_row_number', sa.Integer(), nullable=True),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('template_id', sa.UUID(), nullable=False),
    sa.Column('template_version', sa.Integer(), nullable=False),
    sa.Column('api_key_id', sa.UUID(), nullable=True),
    sa.Column('key_type', sa.Text(), nullable=False),
    sa.Column('notification_type', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_by', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('billable_units', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('client_reference', sa.Text(), nullable=True),
    sa.Column('international', sa.Boolean(), nullable=True),
    sa.Column('phone_prefix', sa.Text(), nullable=True),
    sa.Column('rate_multiplier', sa.Numeric(), nullable=True),
    sa.Column('notification_status', sa.Text(), server_default=sa.text("'created'"), nullable=False),
    sa.Column('created_by_id', sa.UUID(), nullable=True),
    sa.Column('postage', sa.Text(), nullable=True),
    sa.Column('document_download_count', sa.Integer(), nullable=True),
    sa.Column('to', sa.Text(), nullable=False),
    sa.Column('normalised_to', sa.Text(), nullable=True),
    sa.Column('personalisation', sa.Text(), nullable=True),
    sa.Column('reply_to_text', sa.Text(), nullable=True),
    sa.Column('unsubscribe_link', sa.Text(), nullable=True),
    sa.CheckConstraint("key_type IN ('normal', 'team', 'test')", name=op.f('ck_notifications_key_type')),
    sa.CheckConstraint("notification_status IN ('created', 'sending', 'sent', 'delivered', 'pending', 'failed', 'technical-failure', 'temporary-failure', 'permanent-failure', 'pending-virus-check', 'validation-failed', 'virus-scan-failed', 'returned-letter', 'cancelled')", name=op.f('ck_notifications_notification_status')),
    sa.CheckConstraint("notification_type IN ('email', 'sms', 'letter')", name=op.f('ck_notifications_notification_type')),
    sa.CheckConstraint("postage IS NULL OR postage IN ('first', 'second', 'economy', 'europe', 'rest-of-world')", name=op.f('ck_notifications_postage')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_notifications_service_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications'))
    )
    op.create_index(op.f('ix_notifications_service_id_notification_type_created_at'), 'notifications', ['service_id', 'notification_type', 'created_at'], unique=False)
    op.create_index('ix_notifications_type_status_created_at', 'notifications', ['notification_type', 'notification_status', 'created_at'], unique=False)

    op.create_table('patient',
    sa.Column('pid', sa.Text(), nullable=False),
    sa.Column('birthtime', sa.DateTime(), nullable=True),
    sa.Column('deathtime', sa.DateTime(), nullable=True),
    sa.Column('gender', sa.Text(), nullable=True),
    sa.Column('ethnicgroupcode', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['pid'], ['patientrecord.pid'], name=op.f('fk_patient_pid'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pid', name=op.f('pk_patient'))
    )

    op.create_table('patient_consent_statuses',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('programme_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('status IN (0, 1, 2, 3)', name=op.f('ck_patient_consent_statuses_status')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_patient_consent_statuses_patient_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['programme_id'], ['programmes.id'], name=op.f('fk_patient_consent_statuses_programme_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_consent_statuses')),
    sa.UniqueConstraint('patient_id', 'programme_id', name=op.f('uq_patient_consent_statuses_patient_id_programme_id'))
    )
    op.create_index(op.f('ix_patient_consent_statuses_status'), 'patient_consent_statuses', ['status'], unique=False)

    op.create_table('patient_sessions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('session_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_patient_sessions_patient_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_patient_sessions_session_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_sessions')),
    sa.UniqueConstraint('patient_id', 'session_id', name=op.f('uq_patient_sessions_patient_id_session_id'))
    )
    op.create_index(op.f('ix_patient_sessions_session_id'), 'patient_sessions', ['session_id'], unique=False)

    op.create_table('patient_triage_statuses',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('programme_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('status IN (0, 1, 2, 3, 4)', name=op.f('ck_patient_triage_statuses_status')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_patient_triage_statuses_patient_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['programme_id'], ['programmes.id'], name=op.f('fk_patient_triage_statuses_programme_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_triage_statuses')),
    sa.UniqueConstraint('patient_id', 'programme_id', name=op.f('uq_patient_triage_statuses_patient_id_programme_id'))
    )
    op.create_index(op.f('ix_patient_triage_statuses_status'), 'patient_triage_statuses', ['status'], unique=False)

    op.create_table('patient_vaccination_statuses',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('programme_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('status IN (0, 1, 2)', name=op.f('ck_patient_vaccination_statuses_status')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_patient_vaccination_statuses_patient_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['programme_id'], ['programmes.id'], name=op.f('fk_patient_vaccination_statuses_programme_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_vaccination_statuses')),
    sa.UniqueConstraint('patient_id', 'programme_id', name=op.f('uq_patient_vaccination_statuses_patient_id_programme_id'))
    )
    op.create_index(op.f('ix_patient_vaccination_statuses_status'), 'patient_vaccination_statuses', ['status'], unique=False)

    op.create_table('returned_letters',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('notification_id', sa.UUID(), nullable=False),
    sa.Column('reported_at', sa.Date(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_returned_letters_service_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_returned_letters')),
    sa.UniqueConstraint('notification_id', name=op.f('uq_returned_letters_notification_id'))
    )
    op.create_index(op.f('ix_returned_letters_service_id'), 'returned_letters', ['service_id'], unique=False)

    op.create_table('service_contact_list',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('original_file_name', sa.Text(), nullable=False),
    sa.Column('row_count', sa.Integer(), nullable=False),
    sa.Column('template_type', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('archived', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('s3_key', sa.Text(), nullable=False),
    sa.CheckConstraint("template_type IN ('email', 'sms', 'letter')", name=op.f('ck_service_contact_list_template_type')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_service_contact_list_service_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_service_contact_list'))
    )
    op.create_index(op.f('ix_service_contact_list_service_id'), 'service_contact_list', ['service_id'], unique=False)

    op.create_table('service_data_retention',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=False),
    sa.Column('notification_type', sa.Text(), nullable=False),
    sa.Column('days_of_retention', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("notification_type IN ('email', 'sms', 'letter')", name=op.f('ck_service_data_retention_notification_type')),
    sa.CheckConstraint('days_of_retention > 0', name=op.f('ck_service_data_retention_days_of_retention')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_service_data_retention_service_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_service_data_retention')),
    sa.UniqueConstraint('service_id', 'notification_type', name=op.f('uq_service_data_retention_service_id_notification_type'))
    )

    op.create_table('session_dates',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('session_id', sa.BigInteger(), nullable=False),
    sa.Column('value', sa.Date(), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_session_dates_session_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_session_dates')),
    sa.UniqueConstraint('session_id', 'value', name=op.f('uq_session_dates_session_id_value'))
    )
    op.create_index(op.f('ix_session_dates_value'), 'session_dates', ['value'], unique=False)

    op.create_table('session_programmes',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('session_id', sa.BigInteger(), nullable=False),
    sa.Column('programme_id', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['programme_id'], ['programmes.id'], name=op.f('fk_session_programmes_programme_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_session_programmes_session_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_session_programmes')),
    sa.UniqueConstraint('session_id', 'programme_id', name=op.f('uq_session_programmes_session_id_programme_id'))
    )

    op.create_table('test_event',
    sa.Column('internal_id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_by', sa.UUID(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_by', sa.UUID(), nullable=True),
    sa.Column('test_order_id', sa.UUID(), nullable=False),
    sa.Column('result', sa.Text(), nullable=True),
    sa.Column('correction_status', sa.Text(), server_default=sa.text("'ORIGINAL'"), nullable=False),
    sa.Column('prior_corrected_test_event_id', sa.UUID(), nullable=True),
    sa.CheckConstraint("correction_status IN ('ORIGINAL', 'CORRECTED', 'REMOVED')", name=op.f('ck_test_event_correction_status')),
    sa.CheckConstraint("result IS NULL OR result IN ('POSITIVE', 'NEGATIVE', 'UNDETERMINED')", name=op.f('ck_test_event_result')),
    sa.ForeignKeyConstraint(['prior_corrected_test_event_id'], ['test_event.internal_id'], name=op.f('fk_test_event_prior_corrected_test_event_id')),
    sa.ForeignKeyConstraint(['test_order_id'], ['test_order.internal_id'], name=op.f('fk_test_event_test_order_id')),
    sa.PrimaryKeyConstraint('internal_id', name=op.f('pk_test_event'))
    )
    op.create_index(op.f('ix_test_event_created_at'), 'test_event', ['created_at'], unique=False)
    op.create_index(op.f('ix_test_event_test_order_id'), 'test_event', ['test_order_id'], unique=False)

    op.create_table('treatment',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('pid', sa.Text(), nullable=False),
    sa.Column('healthcarefacilitycode', sa.Text(), nullable=True),
    sa.Column('fromtime', sa.DateTime(), nullable=True),
    sa.Column('totime', sa.DateTime(), nullable=True),
    sa.Column('admitreasoncode', sa.Text(), nullable=True),
    sa.Column('qbl05', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['pid'], ['patientrecord.pid'], name=op.f('fk_treatment_pid'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_treatment'))
    )
    op.create_index(op.f('ix_treatment_healthcarefacilitycode'), 'treatment', ['healthcarefacilitycode'], unique=False)
    op.create_index(op.f('ix_treatment_pid'), 'treatment', ['pid'], unique=False)

    op.create_table('triages',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('programme_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('invalidated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('status IN (0, 1, 2, 3)', name=op.f('ck_triages_status')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_triages_patient_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['programme_id'], ['programmes.id'], name=op.f('fk_triages_programme_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_triages'))
    )
    op.create_index(op.f('ix_triages_patient_id_programme_id'), 'triages', ['patient_id', 'programme_id'], unique=False)

    op.create_table('vaccination_records',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('programme_id', sa.BigInteger(), nullable=False),
    sa.Column('session_id', sa.BigInteger(), nullable=True),
    sa.Column('outcome', sa.SmallInteger(), nullable=False),
    sa.Column('performed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dose_sequence', sa.SmallInteger(), nullable=True),
    sa.Column('discarded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('outcome IN (0, 1, 2, 3, 4, 5, 6)', name=op.f('ck_vaccination_records_outcome')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_vaccination_records_patient_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['programme_id'], ['programmes.id'], name=op.f('fk_vaccination_records_programme_id')),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_vaccination_records_session_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vaccination_records'))
    )
    op.create_index(op.f('ix_vaccination_records_patient_id_programme_id'), 'vaccination_records', ['patient_id', 'programme_id'], unique=False)
    op.create_index(op.f('ix_vaccination_records_session_id'), 'vaccination_records', ['session_id'], unique=False)

    op.create_table('patient_session_registration_statuses',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_session_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('status IN (0, 1, 2, 3)', name=op.f('ck_patient_session_registration_statuses_status')),
    sa.ForeignKeyConstraint(['patient_session_id'], ['patient_sessions.id'], name=op.f('fk_patient_session_registration_statuses_patient_session_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_session_registration_statuses')),
    sa.UniqueConstraint('patient_session_id', name=op.f('uq_patient_session_registration_statuses_patient_session_id'))
    )
    op.create_index(op.f('ix_patient_session_registration_statuses_status'), 'patient_session_registration_statuses', ['status'], unique=False)

    op.create_table('patient_session_session_statuses',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_session_id', sa.BigInteger(), nullable=False),
    sa.Column('programme_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('status IN (0, 1, 2, 3, 4, 5, 6, 7)', name=op.f('ck_patient_session_session_statuses_status')),
    sa.ForeignKeyConstraint(['patient_session_id'], ['patient_sessions.id'], name=op.f('fk_patient_session_session_statuses_patient_session_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['programme_id'], ['programmes.id'], name=op.f('fk_patient_session_session_statuses_programme_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_session_session_statuses')),
    sa.UniqueConstraint('patient_session_id', 'programme_id', name='uq_patient_session_session_statuses_key')
    )
    op.create_index(op.f('ix_patient_session_session_statuses_status'), 'patient_session_session_statuses', ['status'], unique=False)

    op.create_table('result',
    sa.Column('internal_id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_by', sa.UUID(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_by', sa.UUID(), nullable=True),
    sa.Column('is_deleted', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('test_event_id', sa.UUID(), nullable=True),
    sa.Column('test_order_id', sa.UUID(), nullable=True),
    sa.Column('disease_id', sa.UUID(), nullable=False),
    sa.Column('result', sa.Text(), nullable=False),
    sa.Column('test_result', sa.Text(), nullable=False),
    sa.CheckConstraint("test_result IN ('POSITIVE', 'NEGATIVE', 'UNDETERMINED')", name=op.f('ck_result_test_result')),
    sa.ForeignKeyConstraint(['disease_id'], ['supported_disease.internal_id'], name=op.f('fk_result_disease_id')),
    sa.ForeignKeyConstraint(['test_event_id'], ['test_event.internal_id'], name=op.f('fk_result_test_event_id')),
    sa.ForeignKeyConstraint(['test_order_id'], ['test_order.internal_id'], name=op.f('fk_result_test_order_id')),
    sa.PrimaryKeyConstraint('internal_id', name=op.f('pk_result')),
    sa.UniqueConstraint('test_event_id', 'test_order_id', 'disease_id', name=op.f('uq_result_test_event_id_test_order_id_disease_id'))
    )
    op.create_index(op.f('ix_result_disease_id'), 'result', ['disease_id'], unique=False)
    op.create_index(op.f('ix_result_test_event_id'), 'result', ['test_event_id'], unique=False)
    op.create_index(op.f('ix_result_test_order_id'), 'result', ['test_order_id'], unique=False)

    op.create_table('session_attendances',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('patient_session_id', sa.BigInteger(), nullable=False),
    sa.Column('session_date_id', sa.BigInteger(), nullable=False),
    sa.Column('attending', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['patient_session_id'], ['patient_sessions.id'], name=op.f('fk_session_attendances_patient_session_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['session_date_id'], ['session_dates.id'], name=op.f('fk_session_attendances_session_date_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_session_attendances')),
    sa.UniqueConstraint('patient_session_id', 'session_date_id', name=op.f('uq_session_attendances_patient_session_id_session_date_id'))
    )
    op.create_index(op.f('ix_session_attendances_session_date_id'), 'session_attendances', ['session_date_id'], unique=False)

    # test_order and test_event refer to each other: this key is added once both exist.
    op.create_foreign_key(
        "fk_test_order_test_event_id", "test_order", "test_event", ["test_event_id"], ["internal_id"]
    )

    _create_views()
    _create_refresh_triggers()
    _seed()


def downgrade() -> None:
    op.execute("DROP VIEW notifications_all_time_view")
    op.drop_constraint("fk_test_order_test_event_id", "test_order", type_="foreignkey")

    # Dropping a table also drops its indexes and triggers.
    op.drop_table('session_attendances')
    op.drop_table('result')
    op.drop_table('patient_session_session_statuses')
    op.drop_table('patient_session_registration_statuses')
    op.drop_table('vaccination_records')
    op.drop_table('triages')
    op.drop_table('treatment')
    op.drop_table('test_event')
    op.drop_table('session_programmes')
    op.drop_table('session_dates')
    op.drop_table('service_data_retention')
    op.drop_table('service_contact_list')
    op.drop_table('returned_letters')
    op.drop_table('patient_vaccination_statuses')
    op.drop_table('patient_triage_statuses')
    op.drop_table('patient_sessions')
    op.drop_table('patient_consent_statuses')
    op.drop_table('patient')
    op.drop_table('notifications')
    op.drop_table('letter_batch_items')
    op.drop_table('inbound_sms')
    op.drop_table('inbound_numbers')
    op.drop_table('dialysissession')
    op.drop_table('consents')
    op.drop_table('test_order')
    op.drop_table('sync_runs')
    op.drop_table('supported_disease')
    op.drop_table('status_refresh_requests')
    op.drop_table('stats_settings')
    op.drop_table('sessions')
    op.drop_table('services')
    op.drop_table('replica_state')
    op.drop_table('prune_runs')
    op.drop_table('programmes')
    op.drop_table('patients')
    op.drop_table('patientrecord')
    op.drop_table('parents')
    op.drop_table('notification_history')
    op.drop_table('letter_print_volumes')
    op.drop_table('letter_batches')
    op.drop_table('inbound_sms_history')
    op.drop_table('ft_notification_status')
    op.drop_table('facility_stats')
    op.drop_table('facility_record_counts')
    op.drop_table('facility')
    op.drop_table('deep_archive_manifests')
    op.drop_table('alerts')

    for name in TRIGGER_FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
