"""§2 UKRDC: the clinical source tables and the ahead-of-time cohort statistics (UKRDC naming,
docs/domain.md §2).
"""

from __future__ import annotations

import enum

from sqlalchemy import (
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    Interval,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from orchestration.schema.base import (
    NAIVE_TIMESTAMP,
    PII,
    TIMESTAMPTZ,
    enum_codes,
    metadata,
    sql_in,
)


class StatsOutcome(enum.IntEnum):
    """`facility_stats.outcome`."""

    OK = 0
    EMPTY_COHORT = 1



STATS_KINDS = ("dialysis", "demographics")



patientrecord = Table(
    "patientrecord", metadata,
    Column("pid", Text, primary_key=True),
    Column("ukrdcid", Text, nullable=False, index=True),
    Column("sendingfacility", Text, nullable=False),
    Column("sendingextract", Text, nullable=False),
    Index(None, "sendingfacility", "sendingextract"),
)

patient = Table(
    "patient", metadata,
    Column("pid", Text, ForeignKey("patientrecord.pid", ondelete="CASCADE"), primary_key=True),
    Column("birthtime", NAIVE_TIMESTAMP, info=PII),
    Column("deathtime", NAIVE_TIMESTAMP, info=PII),
    Column("gender", Text),
    Column("ethnicgroupcode", Text),
)

treatment = Table(
    "treatment", metadata,
    Column("id", Text, primary_key=True),
    Column("pid", Text, ForeignKey("patientrecord.pid", ondelete="CASCADE"), nullable=False, index=True),
    Column("healthcarefacilitycode", Text, index=True),
    Column("fromtime", NAIVE_TIMESTAMP),
    Column("totime", NAIVE_TIMESTAMP),
    Column("admitreasoncode", Text),  # UKRDC stores the numeric code as a string
    Column("qbl05", Text),  # HOME / HOSP / SATL
)

dialysissession = Table(
    "dialysissession", metadata,
    Column("id", Text, primary_key=True),
    Column("pid", Text, ForeignKey("patientrecord.pid", ondelete="CASCADE"), nullable=False, index=True),
    Column("proceduretypecode", Text),
    Column("proceduretime", NAIVE_TIMESTAMP),
    # In-centre frequency reads a patient's sessions in a window: an index-only range scan.
    Index(None, "pid", "proceduretime", postgresql_include=["proceduretypecode"]),
)

facility = Table(
    "facility", metadata,
    Column("code", Text, primary_key=True),
    Column("description", Text),
)

# Exactly one row (id = 1), inserted by the migration; runs read it at start.
stats_settings = Table(
    "stats_settings", metadata,
    Column("id", SmallInteger, primary_key=True, server_default=text("1")),
    Column("aot_min_records", Integer, nullable=False, server_default=text("5000")),
    Column("aot_kinds", ARRAY(Text), nullable=False, server_default=text("'{dialysis}'::text[]")),
    Column("skip_if_fresher_than", Interval, nullable=False, server_default=text("'01:00:00'::interval")),
    # expires_at = computed_at + ttl (§2.3: 8 h); read at every run, so a change applies at the next tick.
    Column("ttl", Interval, nullable=False, server_default=text("'08:00:00'::interval")),
    CheckConstraint("id = 1", name="single_row"),
    CheckConstraint("ttl > '00:00:00'::interval", name="ttl"),
    CheckConstraint("aot_kinds <@ ARRAY['dialysis', 'demographics']::text[]", name="aot_kinds"),
)

facility_stats = Table(
    "facility_stats", metadata,
    Column("facility_code", Text, nullable=False),
    Column("stats_kind", Text, nullable=False),
    Column("window_start", Date, nullable=False),  # inclusive London dates
    Column("window_end", Date, nullable=False),
    Column("outcome", SmallInteger, nullable=False),
    Column("payload", JSONB, nullable=True),
    Column("population", Integer, nullable=False),
    Column("computed_at", TIMESTAMPTZ, nullable=False),
    Column("expires_at", TIMESTAMPTZ, nullable=False, index=True),
    Column("duration_ms", Integer, nullable=True),
    Column("calculator_version", Text, nullable=False),
    PrimaryKeyConstraint("facility_code", "stats_kind", "window_start", "window_end"),
    CheckConstraint(sql_in("stats_kind", STATS_KINDS), name="stats_kind"),
    CheckConstraint(sql_in("outcome", enum_codes(StatsOutcome)), name="outcome"),
)

facility_record_counts = Table(
    "facility_record_counts", metadata,
    Column("facility_code", Text, primary_key=True),
    Column("ukrdc_record_count", Integer, nullable=False),
    Column("counted_at", TIMESTAMPTZ, nullable=False),
)
