"""Every schedule and sensor runs by default, on its documented cron, timezone and interval;
PSO_AUTOMATION=paused starts all of them stopped (issue 17, item 1)."""

from __future__ import annotations

import json
import subprocess
import sys

from dagster import DefaultScheduleStatus, DefaultSensorStatus

from orchestration.definitions import defs
from orchestration.settings import PROJECT_ROOT

# name: (cron, execution timezone) — README, "What runs when".
SCHEDULES = {
    "status_refresh_nightly": ("0 3 * * *", "Europe/London"),
    "status_checks_daily": ("0 5 * * *", "Europe/London"),
    "facility_stats_aot_schedule": ("0 0,8,16 * * *", "UTC"),
    "ft_notification_status_nightly": ("30 0 * * *", "UTC"),
    "notification_history_deep_archive_nightly": ("35 1 * * *", "UTC"),
    "inbound_sms_archive_nightly": ("40 1 * * *", "UTC"),
    "notification_archive_nightly": ("0 3 * * *", "UTC"),
    "replica_maintenance_check": ("0 4 * * *", "Europe/London"),
    "letter_collation_daily": ("50 17 * * *", "Europe/London"),
    "letters_still_created_alert_weekdays": ("0 7 * * 1-5", "UTC"),
}

# name: minimum interval between ticks, in seconds.
SENSORS = {
    "programme_added": 30,
    "day_change": 60,
    "status_refresh_requests": 3,  # PSO_STATUS_EVENTS_INTERVAL
    "status_refresh_deadline": 300,
    "sync_complete": 30,
    "renal_units_registry": 300,
    "replica_registry": 60,
    "run_failure_alert": 30,
}

# Load the definitions in a fresh interpreter (the statuses are decided when the decorators run)
# and print what each schedule and sensor would start as.
STATUSES_SCRIPT = """
import json
from orchestration.definitions import defs
repo = defs.get_repository_def()
print(json.dumps({
    "schedules": {s.name: s.default_status.value for s in repo.schedule_defs},
    "sensors": {s.name: s.default_status.value for s in repo.sensor_defs},
}))
"""


def test_every_schedule_runs_by_default_on_its_cron_and_timezone():
    schedules = {s.name: s for s in defs.get_repository_def().schedule_defs}
    assert set(schedules) == set(SCHEDULES)
    for name, (cron, timezone) in SCHEDULES.items():
        schedule = schedules[name]
        assert (schedule.cron_schedule, schedule.execution_timezone) == (cron, timezone), name
        assert schedule.default_status == DefaultScheduleStatus.RUNNING, name


def test_every_sensor_runs_by_default_at_its_interval():
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    assert set(sensors) == set(SENSORS)
    for name, interval in SENSORS.items():
        assert sensors[name].minimum_interval_seconds == interval, name
        assert sensors[name].default_status == DefaultSensorStatus.RUNNING, name


def _statuses_when_loaded_with(env_value: str | None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k != "PSO_AUTOMATION"}
    if env_value is not None:
        env["PSO_AUTOMATION"] = env_value
    result = subprocess.run([sys.executable, "-c", STATUSES_SCRIPT], env=env, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pso_automation_paused_starts_every_schedule_and_sensor_stopped():
    paused = _statuses_when_loaded_with("paused")
    assert paused["schedules"] == {name: "STOPPED" for name in SCHEDULES}
    assert paused["sensors"] == {name: "STOPPED" for name in SENSORS}

    running = _statuses_when_loaded_with("on")
    assert running["schedules"] == {name: "RUNNING" for name in SCHEDULES}
    assert running["sensors"] == {name: "RUNNING" for name in SENSORS}

