"""Least-privilege role for runs: `pso_runner`.

Runs (asset steps, sensors) should connect as a login role that is a member of `pso_runner`,
never as the owner of the schema. The role can

- read the source (operational) tables;
- read and write the derived tables this project maintains;
- do the four operational writes of domain.md §0 and nothing more:
  DELETE archived `notifications` / `inbound_sms` rows; UPDATE only `notification_status`,
  `sent_by`, `sent_at`, `updated_at` of `notifications` (letters created → sending; also what
  makes the archive's row locks possible); UPDATE of `inbound_sms.provider_reference` only
  because Postgres requires UPDATE on one column for `SELECT … FOR UPDATE`;
  INSERT into `result`; DELETE from the replica schemas' tables;
- use the sequences of the tables it inserts into.

It cannot TRUNCATE, DROP or ALTER anything (it owns nothing and has no CREATE on a schema),
cannot edit consents, triages, vaccination records, orders or events, and cannot read a table
that is not listed here (a table created outside the project gets no grant).

Roles are cluster-wide, grants are per database: the role is created only if missing (a DBA
may create it beforehand when the migrating user lacks CREATEROLE), and the grants are made in
the database being migrated.

Replica schemas (`replica_<id>`) are created at run time by `create_replica_schema`. The
function `pso_grant_replica_privileges(schema)` grants SELECT, DELETE on a replica schema's
tables; an event trigger calls it after every CREATE TABLE in a `replica_%` schema when the
migrating user may create event triggers (superuser); otherwise call the function after
creating a replica schema. Existing replica schemas are granted here.

Downgrade revokes everything granted here and drops the function and event trigger; it drops
the role only when no other database still holds a grant to it and no login role is a member
of it (pg_shdepend / pg_auth_members are cluster-wide), otherwise the role is left in place.

The table lists below are frozen with this revision (migrations do not import
orchestration.schema); tests/test_security.py checks that every table of the declared schema
is classified here, so a new table forces a decision in a new revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ROLE = "pso_runner"

# Written by the service's own applications: read only.
SOURCE_TABLES = (
    # §1 Mavis
    "programmes", "patients", "parents", "sessions", "session_programmes", "session_dates",
    "patient_sessions", "session_attendances", "consents", "triages", "vaccination_records",
    # §2 UKRDC
    "patientrecord", "patient", "treatment", "dialysissession", "facility", "stats_settings",
    # §3/§4 Notify
    "services", "inbound_numbers", "service_data_retention", "returned_letters", "service_contact_list",
    # shared / §5 SimpleReport
    "sync_runs", "supported_disease", "test_order", "test_event",
)

# Maintained by this project: read and write (no TRUNCATE: every write is a bounded DELETE/UPSERT).
DERIVED_TABLES = (
    # §1
    "patient_consent_statuses", "patient_triage_statuses", "patient_vaccination_statuses",
    "patient_session_session_statuses", "patient_session_registration_statuses",
    "status_refresh_requests",  # the refresh queue: triggers fill it, runs mark/delete what they processed
    # §2
    "facility_stats", "facility_record_counts",
    # §3/§4
    "notification_history", "inbound_sms_history", "ft_notification_status", "deep_archive_manifests",
    "letter_batches", "letter_batch_items", "letter_print_volumes",
    # §3.5
    "replica_state", "prune_runs",
    # alerting
    "alerts",
)

# The operational writes of domain.md §0, column by column where the statement allows it.
OPERATIONAL_GRANTS = (
    ("notifications", "SELECT, DELETE, UPDATE (notification_status, sent_by, sent_at, updated_at)"),
    # Postgres lets a role lock rows (the archive's SELECT … FOR UPDATE of its batch) only with
    # UPDATE on at least one column: one non-personal provider column, a smaller power than the
    # DELETE the archive needs anyway.
    ("inbound_sms", "SELECT, DELETE, UPDATE (provider_reference)"),
    ("result", "SELECT, INSERT"),
)

VIEWS = ("notifications_all_time_view",)

REPLICA_PRIVILEGES = "SELECT, DELETE"


def _quoted_list(names) -> str:
    return ", ".join(f"'{name}'" for name in names)


def upgrade() -> None:
    # CREATE ROLE only if missing; a concurrent migration of another database may win the race.
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                CREATE ROLE {ROLE} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
            END IF;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END $$
    """)
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(SOURCE_TABLES)} TO {ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(DERIVED_TABLES)} TO {ROLE}")
    for table, privileges in OPERATIONAL_GRANTS:
        op.execute(f"GRANT {privileges} ON {table} TO {ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {ROLE}")
    # Identity sequences of the tables the role inserts into.
    insert_tables = DERIVED_TABLES + tuple(t for t, p in OPERATIONAL_GRANTS if "INSERT" in p)
    op.execute(f"""
        DO $$
        DECLARE seq regclass;
        BEGIN
            FOR seq IN
                SELECT s.oid::regclass
                FROM pg_class s
                JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                                 AND d.refclassid = 'pg_class'::regclass
                JOIN pg_class t ON t.oid = d.refobjid
                WHERE s.relkind = 'S' AND t.relnamespace = 'public'::regnamespace
                  AND t.relname IN ({_quoted_list(insert_tables)})
            LOOP
                EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO {ROLE}', seq);
            END LOOP;
        END $$
    """)

    # Replica schemas: a grant function, an event trigger where allowed, and the existing schemas.
    op.execute(f"""
        CREATE OR REPLACE FUNCTION pso_grant_replica_privileges(schema_name text) RETURNS void
        LANGUAGE plpgsql AS $fn$
        BEGIN
            IF schema_name !~ '^replica_[a-z0-9_]{{1,40}}$' THEN
                RAISE EXCEPTION 'not a replica schema: %', schema_name;
            END IF;
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {ROLE}', schema_name);
            EXECUTE format('GRANT {REPLICA_PRIVILEGES} ON ALL TABLES IN SCHEMA %I TO {ROLE}', schema_name);
        END
        $fn$
    """)
    op.execute("""
        DO $$
        DECLARE name text;
        BEGIN
            FOR name IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^replica_[a-z0-9_]{1,40}$' LOOP
                PERFORM pso_grant_replica_privileges(name);
            END LOOP;
        END $$
    """)
    op.execute("""
        CREATE OR REPLACE FUNCTION pso_replica_grants_on_create() RETURNS event_trigger
        LANGUAGE plpgsql AS $fn$
        DECLARE command record;
        BEGIN
            FOR command IN SELECT * FROM pg_event_trigger_ddl_commands()
                           WHERE command_tag = 'CREATE TABLE'
                             AND schema_name ~ '^replica_[a-z0-9_]{1,40}$'
            LOOP
                PERFORM pso_grant_replica_privileges(command.schema_name);
            END LOOP;
        END
        $fn$
    """)
    op.execute("""
        DO $$
        BEGIN
            IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                CREATE EVENT TRIGGER pso_replica_grants ON ddl_command_end
                    WHEN TAG IN ('CREATE TABLE')
                    EXECUTE FUNCTION pso_replica_grants_on_create();
            ELSE
                RAISE NOTICE 'not superuser: no event trigger; call pso_grant_replica_privileges(schema) '
                             'after creating a replica schema';
            END IF;
        END $$
    """)
    # Nobody but the owner may run the grant functions.
    op.execute("REVOKE ALL ON FUNCTION pso_grant_replica_privileges(text) FROM PUBLIC")


def downgrade() -> None:
    op.execute("DROP EVENT TRIGGER IF EXISTS pso_replica_grants")
    op.execute("DROP FUNCTION IF EXISTS pso_replica_grants_on_create()")
    op.execute("DROP FUNCTION IF EXISTS pso_grant_replica_privileges(text)")
    op.execute(f"""
        DO $$
        DECLARE name text;
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                RETURN;
            END IF;
            FOR name IN SELECT nspname FROM pg_namespace
                        WHERE nspname = 'public' OR nspname ~ '^replica_[a-z0-9_]{{1,40}}$' LOOP
                EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {ROLE}', name);
                EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM {ROLE}', name);
                EXECUTE format('REVOKE ALL ON SCHEMA %I FROM {ROLE}', name);
            END LOOP;
            -- Roles are cluster-wide: drop it only if no other database still grants it anything
            -- and no login role is a member of it.
            IF NOT EXISTS (SELECT FROM pg_shdepend
                           WHERE refclassid = 'pg_authid'::regclass
                             AND refobjid = (SELECT oid FROM pg_roles WHERE rolname = '{ROLE}'))
               AND NOT EXISTS (SELECT FROM pg_auth_members
                               WHERE roleid = (SELECT oid FROM pg_roles WHERE rolname = '{ROLE}')) THEN
                DROP ROLE {ROLE};
            END IF;
        END $$
    """)
