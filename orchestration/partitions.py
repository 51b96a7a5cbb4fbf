"""Partitions of the architecture: dynamic entity registries and calendar partitions."""

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MonthlyPartitionsDefinition,
)

# Registries of entities, added by sensors as the entities appear.
programmes_partitions = DynamicPartitionsDefinition(name="programmes")
renal_units_partitions = DynamicPartitionsDefinition(name="renal_units")
replicas_partitions = DynamicPartitionsDefinition(name="replicas")

# London days (notification history, facts, archives). Start far enough back for backfills.
london_days_partitions = DailyPartitionsDefinition(start_date="2024-01-01", timezone="Europe/London")

# Print days: today's partition exists from midnight, so the 17:50 collation can target it.
print_days_partitions = DailyPartitionsDefinition(start_date="2024-01-01", timezone="Europe/London", end_offset=1)

# Results backfill: months of the source row's created_at.
months_partitions = MonthlyPartitionsDefinition(start_date="2020-01-01")
