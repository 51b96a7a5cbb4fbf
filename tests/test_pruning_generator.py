"""The synthetic replicas: schemas, every rule's input present, deterministic; prune runs on them."""

from datetime import datetime, timezone

import sqlalchemy as sa

from assets.pruning import replica_maintenance, sync_group_prune
from orchestration.synthetic import seed_all

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)


def _seed(database_url):
    seed_all(database_url, scale="tiny", now=NOW, families=["orchestration.synthetic.replicas"], echo=lambda *_: None)


def test_generator_covers_every_rule_and_prunes(database_url, engine):
    _seed(database_url)
    with engine.connect() as conn:
        states = conn.execute(sa.text("SELECT replica_id, current_facility_uuid IS NOT NULL AS has_facility, "
                                      "sync_group_switched_at, last_maintenance_at FROM replica_state "
                                      "ORDER BY replica_id")).mappings().all()
        assert [s["replica_id"] for s in states] == ["east", "north", "south"]
        assert all(s["has_facility"] for s in states)
        south = conn.execute(sa.text(
            "SELECT count(*) FILTER (WHERE sync_status = 'PENDING') AS pending, "
            "count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted, "
            "count(*) FILTER (WHERE retain_until < :now) AS expired FROM replica_south.patient"), {"now": NOW}).one()
        assert south.pending > 0 and south.deleted > 0 and south.expired > 0
        orphans = conn.execute(sa.text("SELECT count(*) FROM replica_north.blood_pressure_measurement m WHERE NOT EXISTS "
                                       "(SELECT 1 FROM replica_north.patient p WHERE p.uuid = m.patient_uuid)")).scalar()
        assert orphans > 0
        unfinished = conn.execute(sa.text("SELECT count(*) FROM sync_runs WHERE finished_at IS NULL")).scalar()
        assert unfinished == 1

    with engine.connect() as conn:
        north = sync_group_prune(conn, "north", NOW)
        south = sync_group_prune(conn, "south", NOW)  # switched 6 h ago: inside the grace
        east = replica_maintenance(conn, "east", NOW)  # never maintained: due
        north_maintenance = replica_maintenance(conn, "north", NOW)  # maintained 3 days ago
        south_maintenance = replica_maintenance(conn, "south", NOW)  # due, but a sync is running
    assert north.deleted["patient"] > 0 and not north.pending_rows_lost
    assert "grace" in south.skipped_reason
    assert east.deleted["appointment"] > 0 and not east.pending_rows_lost
    assert north_maintenance.skipped_reason.startswith("not due")
    assert south_maintenance.skipped_reason.startswith("sync run(s) in progress")


def test_generator_is_deterministic(database_url, engine):
    _seed(database_url)
    query = sa.text("SELECT md5(string_agg(uuid::text || sync_status, ',' ORDER BY uuid)) FROM replica_east.patient")
    with engine.connect() as conn:
        first = conn.execute(query).scalar()
        for replica_id in ("north", "south", "east"):
            conn.execute(sa.text(f'DROP SCHEMA "replica_{replica_id}" CASCADE'))
        conn.execute(sa.text("TRUNCATE replica_state, sync_runs"))
        conn.commit()
    _seed(database_url)
    with engine.connect() as conn:
        assert conn.execute(query).scalar() == first
