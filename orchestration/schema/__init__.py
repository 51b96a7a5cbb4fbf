"""The whole database schema, declared once with SQLAlchemy Core, one module per family.

`metadata` (in `base`) holds every table in the `public` schema: the operational (source) tables
that the service's own applications write, and the derived tables this project maintains. Each
family module adds its tables to it:

- `base`: the shared `metadata`, naming convention and column helpers;
- `statuses`: Mavis (§1) source tables, cached statuses, status codes, refresh requests;
- `renal`: UKRDC (§2) tables and cohort statistics;
- `notify`: GOV.UK Notify (§3.1–§3.4, §4) tables, letters, the deep archive manifests;
- `simple`: Simple (§3.5) replica pruning bookkeeping, `replica_metadata` and the replica tables;
- `results`: SimpleReport (§5) multiplex results;
- `operations`: what every domain shares (sync runs, alerts).

Importing this package imports every family, so `metadata` is complete. The Alembic migrations in
`orchestration/migrations/` create exactly these tables, plus what SQLAlchemy cannot declare: the
view `notifications_all_time_view`, the refresh-request trigger functions and triggers, and the
seed rows.

Table, column and enum names follow docs/domain.md §1–§5. Columns that hold personal data
carry `info={"pii": True}` so that tests and tooling can find them (`PII_COLUMNS`).
"""

from __future__ import annotations

from orchestration.schema.base import (
    NAIVE_TIMESTAMP,
    NAMING_CONVENTION,
    PII,
    TIMESTAMPTZ,
    metadata,
)
from orchestration.schema.notify import (
    COMPLETED_NOTIFICATION_STATUSES,
    KEY_TYPES,
    NO_JOB_ID,
    NOTIFICATION_HISTORY_COLUMNS,
    NOTIFICATION_STATUSES,
    NOTIFICATION_TYPES,
    POSTAGES,
    LetterBatchState,
    deep_archive_manifests,
    ft_notification_status,
    inbound_numbers,
    inbound_sms,
    inbound_sms_history,
    letter_batch_items,
    letter_batches,
    letter_print_volumes,
    notification_history,
    notifications,
    returned_letters,
    service_contact_list,
    service_data_retention,
    services,
)
from orchestration.schema.operations import (
    SYNC_SOURCES,
    alerts,
    sync_runs,
)
from orchestration.schema.renal import (
    STATS_KINDS,
    StatsOutcome,
    dialysissession,
    facility,
    facility_record_counts,
    facility_stats,
    patient,
    patientrecord,
    stats_settings,
    treatment,
)
from orchestration.schema.results import (
    CORRECTION_STATUSES,
    COVID19_DISEASE_ID,
    FLU_A_DISEASE_ID,
    FLU_B_DISEASE_ID,
    SNOMED_BY_TEST_RESULT,
    SUPPORTED_DISEASES,
    TEST_RESULTS,
    result,
    supported_disease,
    test_event,
    test_order,
)
from orchestration.schema.simple import (
    APPOINTMENT_STATUSES,
    PRUNE_KINDS,
    REPLICA_ID_PATTERN,
    SYNC_STATUSES,
    create_replica_schema,
    drop_replica_schema,
    prune_runs,
    replica_appointment,
    replica_blood_pressure_measurement,
    replica_blood_sugar_measurement,
    replica_business_id,
    replica_call_result,
    replica_connection,
    replica_facility,
    replica_medical_history,
    replica_metadata,
    replica_patient,
    replica_patient_address,
    replica_patient_phone_number,
    replica_prescribed_drug,
    replica_schema_name,
    replica_state,
)
from orchestration.schema.statuses import (
    PROGRAMME_TYPES,
    STATUS_ID_CACHE,
    ConsentResponse,
    ConsentRoute,
    ConsentStatus,
    RefreshScope,
    RegistrationStatus,
    SessionStatus,
    TriageStatus,
    TriageStatusInput,
    VaccinationOutcome,
    VaccinationStatus,
    consents,
    parents,
    patient_consent_statuses,
    patient_session_registration_statuses,
    patient_session_session_statuses,
    patient_sessions,
    patient_triage_statuses,
    patient_vaccination_statuses,
    patients,
    programmes,
    session_attendances,
    session_dates,
    session_programmes,
    sessions,
    status_refresh_requests,
    status_rules,
    triages,
    vaccination_records,
)

# Every column that holds personal data, as "table.column" (public tables and replica tables).
PII_COLUMNS = tuple(
    f"{table.name}.{column.name}"
    for md in (metadata, replica_metadata)
    for table in md.sorted_tables
    for column in table.columns
    if column.info.get("pii")
)

__all__ = [
    "APPOINTMENT_STATUSES",
    "COMPLETED_NOTIFICATION_STATUSES",
    "CORRECTION_STATUSES",
    "COVID19_DISEASE_ID",
    "FLU_A_DISEASE_ID",
    "FLU_B_DISEASE_ID",
    "KEY_TYPES",
    "NAIVE_TIMESTAMP",
    "NAMING_CONVENTION",
    "NOTIFICATION_HISTORY_COLUMNS",
    "NOTIFICATION_STATUSES",
    "NOTIFICATION_TYPES",
    "NO_JOB_ID",
    "PII",
    "PII_COLUMNS",
    "POSTAGES",
    "PROGRAMME_TYPES",
    "PRUNE_KINDS",
    "REPLICA_ID_PATTERN",
    "SNOMED_BY_TEST_RESULT",
    "STATS_KINDS",
    "STATUS_ID_CACHE",
    "SUPPORTED_DISEASES",
    "SYNC_SOURCES",
    "SYNC_STATUSES",
    "TEST_RESULTS",
    "TIMESTAMPTZ",
    "ConsentResponse",
    "ConsentRoute",
    "ConsentStatus",
    "LetterBatchState",
    "RefreshScope",
    "RegistrationStatus",
    "SessionStatus",
    "StatsOutcome",
    "TriageStatus",
    "TriageStatusInput",
    "VaccinationOutcome",
    "VaccinationStatus",
    "alerts",
    "consents",
    "create_replica_schema",
    "deep_archive_manifests",
    "dialysissession",
    "drop_replica_schema",
    "facility",
    "facility_record_counts",
    "facility_stats",
    "ft_notification_status",
    "inbound_numbers",
    "inbound_sms",
    "inbound_sms_history",
    "letter_batch_items",
    "letter_batches",
    "letter_print_volumes",
    "metadata",
    "notification_history",
    "notifications",
    "parents",
    "patient",
    "patient_consent_statuses",
    "patient_session_registration_statuses",
    "patient_session_session_statuses",
    "patient_sessions",
    "patient_triage_statuses",
    "patient_vaccination_statuses",
    "patientrecord",
    "patients",
    "programmes",
    "prune_runs",
    "replica_appointment",
    "replica_blood_pressure_measurement",
    "replica_blood_sugar_measurement",
    "replica_business_id",
    "replica_call_result",
    "replica_connection",
    "replica_facility",
    "replica_medical_history",
    "replica_metadata",
    "replica_patient",
    "replica_patient_address",
    "replica_patient_phone_number",
    "replica_prescribed_drug",
    "replica_schema_name",
    "replica_state",
    "result",
    "returned_letters",
    "service_contact_list",
    "service_data_retention",
    "services",
    "session_attendances",
    "session_dates",
    "session_programmes",
    "sessions",
    "stats_settings",
    "status_refresh_requests",
    "status_rules",
    "supported_disease",
    "sync_runs",
    "test_event",
    "test_order",
    "treatment",
    "triages",
    "vaccination_records",
]
