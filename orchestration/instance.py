"""The local Dagster instance: `dagster.yaml` with Postgres storage, run queue limits, pools.

`deploy/dagster.yaml` is the production counterpart; both keep secrets in the environment.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Concurrency pools (`@asset(pool=...)`), with the limits of domain.md §6.
POOL_LIMITS = {
    "status_refresh": 1,  # full and event refreshes never overlap
    "facility_stats": 1,
    "ft_notification_status": 4,
    "notification_archive": 4,
    "inbound_sms_archive": 1,
    "deep_archive": 1,
    "replica_prune": 1,
    "letter_collation": 1,
    "multiplex_backfill": 1,
}


def instance_config(max_concurrent_runs: int = 4) -> dict:
    return {
        "storage": {"postgres": {"postgres_url": {"env": "PSO_DAGSTER_STORAGE_URL"}}},
        # The daemon looks at the queue every second (Dagster's default: 5 s, on average 2.5 s of every
        # launched run's wall time; `pso bench run_overhead` shows it as "queued").
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
                            "config": {"dequeue_interval_seconds": 1}},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": max_concurrent_runs,
                # A wide backfill must not starve the nightly jobs.
                "tag_concurrency_limits": [{"key": "dagster/backfill", "limit": max(1, max_concurrent_runs // 2)}],
            },
            # A run waiting for a pool slot stays queued instead of holding one of the run slots.
            "pools": {"default_limit": 1, "granularity": "run"},
        },
        "run_monitoring": {"enabled": True, "free_slots_after_run_end_seconds": 30, "max_runtime_seconds": 6 * 3600},
        "run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False},
        "telemetry": {"enabled": False},
        # Our own modules' log lines (e.g. "waiting for a free connection") show in the run's event log.
        "python_logs": {"managed_python_loggers": ["resources", "assets", "orchestration"]},
    }


def write_instance_yaml(dagster_home: Path, max_concurrent_runs: int = 4) -> Path:
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(yaml.safe_dump(instance_config(max_concurrent_runs), sort_keys=False))
    return path


def apply_pool_limits(instance) -> None:
    """Set the slot count of every named pool (idempotent)."""
    for pool, limit in POOL_LIMITS.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
