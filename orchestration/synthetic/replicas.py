"""Synthetic Simple replicas (domain.md §3.5): three replica schemas, replica_state, sync_runs.

Every keep/delete rule of the sync-group prune and the weekly maintenance has rows to act on:
facilities in three sync groups; patients registered/assigned inside and outside the current
group, PENDING/DONE/INVALID, soft-deleted, past and future `retain_until`; several appointments
per patient (scheduled/cancelled/visited/unknown, some soft-deleted); measurements, drugs,
medical history and call results, including orphans (PENDING and DONE). Fake data only: the
replica tables hold ids and statuses, no names or numbers.

replica_state:
- north: never switched sync group, maintained 3 days ago (maintenance not due);
- south: switched sync group 6 h ago (sync-group prune inside the 24 h grace), maintained 10 days ago;
- east:  switched 5 days ago, never maintained.
sync_runs per replica: finished successful syncs, a failed one, and (south) one still running.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from orchestration.schema import replica_metadata, replica_schema_name
from orchestration.synthetic import SynthContext

REPLICAS = ("north", "south", "east")
SYNC_GROUPS = ("group_1", "group_2", "group_3")
FACILITIES_PER_GROUP = 3
BASE_PATIENTS = 400  # per replica at demo scale


def _uuid(rng) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _sync_status(rng, pending: float = 0.1, invalid: float = 0.03) -> str:
    roll = rng.random()
    return "PENDING" if roll < pending else "INVALID" if roll < pending + invalid else "DONE"


def _create_schemas(ctx: SynthContext) -> None:
    """The DDL of create_replica_schema, compiled from replica_metadata and run on ctx.conn.

    create_replica_schema needs a SQLAlchemy connection, and wrapping ctx.conn in one would make
    SQLAlchemy roll back seed_all's transaction on first connect; the compiled DDL is the same.
    """
    dialect = postgresql.psycopg.dialect()
    for replica_id in REPLICAS:
        schema = replica_schema_name(replica_id)
        ctx.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        for table in replica_metadata.sorted_tables:
            for ddl in [CreateTable(table, if_not_exists=True)] + [CreateIndex(i, if_not_exists=True)
                                                                    for i in table.indexes]:
                sql = str(ddl.compile(dialect=dialect, schema_translate_map={None: schema}))
                ctx.conn.execute(sql.replace("__[SCHEMA__none]", f'"{schema}"'))


def _generate_replica(ctx: SynthContext, replica_id: str, index: int) -> dict:
    rng, now = ctx.rng, ctx.now
    schema = replica_schema_name(replica_id)
    t = lambda name: f"{schema}.{name}"  # noqa: E731

    facilities = {group: [_uuid(rng) for _ in range(FACILITIES_PER_GROUP)] for group in SYNC_GROUPS}
    ctx.copy(t("facility"), ["uuid", "sync_group"],
             [(f, group) for group, ids in facilities.items() for f in ids])
    own_group = SYNC_GROUPS[index % len(SYNC_GROUPS)]
    inside = facilities[own_group]
    every = [f for ids in facilities.values() for f in ids]
    outside = [f for f in every if f not in inside]

    patients = []  # (uuid, address, registered, assigned, sync_status, deleted_at, retain_until)
    for _ in range(ctx.n(BASE_PATIENTS)):
        roll = rng.random()
        if roll < 0.35:  # registered inside the group
            registered, assigned = rng.choice(inside), rng.choice(every + [None])
        elif roll < 0.45:  # registered outside, assigned inside
            registered, assigned = rng.choice(outside), rng.choice(inside)
        elif roll < 0.50:  # no facility ids at all
            registered, assigned = None, None
        else:  # outside the group (kept only if PENDING or scheduled inside)
            registered, assigned = rng.choice(outside), rng.choice(outside + [None])
        deleted_at = now - timedelta(days=rng.randint(1, 60)) if rng.random() < 0.05 else None
        r = rng.random()
        retain_until = (now - timedelta(days=rng.randint(1, 30)) if r < 0.04
                        else now + timedelta(days=rng.randint(1, 30)) if r < 0.08 else None)
        patients.append([_uuid(rng), _uuid(rng), registered, assigned, _sync_status(rng), deleted_at, retain_until])
    # Whatever the scale, one patient of each kind the rules single out (outside the group, so that
    # the sync-group prune sees them; maintenance applies wherever they are).
    specimens = [("PENDING", None, None), ("DONE", now - timedelta(days=2), None), ("DONE", None, now - timedelta(days=1)),
                 ("DONE", None, now + timedelta(days=5)), ("PENDING", now - timedelta(days=2), now - timedelta(days=1)),
                 ("INVALID", None, None), ("DONE", None, None)]
    for patient, (status, deleted_at, retain_until) in zip(patients, specimens):
        patient[2:7] = [rng.choice(outside), None, status, deleted_at, retain_until]

    orphan_addresses = [(_uuid(rng),) for _ in range(ctx.n(10))]
    ctx.copy(t("patient_address"), ["uuid"], [(p[1],) for p in patients] + orphan_addresses)
    ctx.copy(t("patient"), ["uuid", "address_uuid", "registered_facility_id", "assigned_facility_id", "sync_status",
                            "deleted_at", "retain_until"], patients)

    def soft_deleted(share: float = 0.06):
        return now - timedelta(days=rng.randint(1, 90)) if rng.random() < share else None

    ctx.copy(t("patient_phone_number"), ["uuid", "patient_uuid", "deleted_at"],
             [(_uuid(rng), p[0], soft_deleted(0.1)) for p in patients for _ in range(rng.randint(0, 2))])
    ctx.copy(t("business_id"), ["uuid", "patient_uuid", "deleted_at"],
             [(_uuid(rng), p[0], soft_deleted(0.05)) for p in patients])

    patient_ids = [p[0] for p in patients]
    orphan_ids = [_uuid(rng) for _ in range(ctx.n(12))]  # rows whose patient never existed here

    def owners(per_patient_max: int):
        for pid in patient_ids:
            for _ in range(rng.randint(0, per_patient_max)):
                yield pid
        for pid in orphan_ids:
            yield pid

    appointments = []
    for pid in owners(4):
        status = rng.choices(("scheduled", "cancelled", "visited", "unknown"), (4, 2, 3, 1))[0]
        # Scheduled appointments inside the group keep outside patients (incl. soft-deleted ones: the quirk).
        facility = rng.choice(inside if rng.random() < 0.3 else every)
        appointments.append((_uuid(rng), pid, facility, status, now - timedelta(days=rng.randint(0, 400),
                             minutes=rng.randint(0, 1440)), soft_deleted(0.08), _sync_status(rng)))
    ctx.copy(t("appointment"), ["uuid", "patient_uuid", "facility_uuid", "status", "created_at", "deleted_at",
                                "sync_status"], appointments)

    for table, per_patient in (("blood_pressure_measurement", 5), ("blood_sugar_measurement", 2),
                               ("medical_history", 1), ("call_result", 2)):
        ctx.copy(t(table), ["uuid", "patient_uuid", "deleted_at", "sync_status"],
                 [(_uuid(rng), pid, soft_deleted(), _sync_status(rng)) for pid in owners(per_patient)])
    ctx.copy(t("prescribed_drug"), ["uuid", "patient_uuid", "is_deleted", "sync_status"],
             [(_uuid(rng), pid, rng.random() < 0.07, _sync_status(rng)) for pid in owners(3)])
    return {"current_facility": inside[0]}


def generate(ctx: SynthContext) -> None:
    _create_schemas(ctx)
    now = ctx.now
    states = []
    for index, replica_id in enumerate(REPLICAS):
        info = _generate_replica(ctx, replica_id, index)
        switched, maintained = {
            "north": (None, now - timedelta(days=3)),
            "south": (now - timedelta(hours=6), now - timedelta(days=10)),
            "east": (now - timedelta(days=5), None),
        }[replica_id]
        states.append((replica_id, info["current_facility"], switched, maintained))
    ctx.copy("replica_state", ["replica_id", "current_facility_uuid", "sync_group_switched_at", "last_maintenance_at"],
             states)

    runs = []
    for replica_id in REPLICAS:
        for hours_ago, succeeded in ((30, True), (20, False), (8, True), (2, True)):
            started = now - timedelta(hours=hours_ago)
            runs.append(("replica", replica_id, started, started + timedelta(minutes=ctx.rng.randint(1, 20)),
                         succeeded, json.dumps([]) if succeeded else None))
    runs.append(("replica", "south", now - timedelta(minutes=15), None, False, None))  # still running
    ctx.copy("sync_runs", ["source", "replica_id", "started_at", "finished_at", "all_succeeded", "touched"], runs)
