"""Whether the schedules and sensors start running: one switch for all of them.

Every `@schedule` and `@sensor` of the project takes its `default_status` from here. By default all
automation is on (RUNNING as soon as the daemon loads the code location); `PSO_AUTOMATION=paused`
starts every one of them STOPPED, for a cautious first deployment. A default status only applies
while nobody has toggled that schedule or sensor: a start or stop in the UI is stored in the instance
and wins over it.
"""

from __future__ import annotations

from dagster import DefaultScheduleStatus, DefaultSensorStatus

from orchestration.settings import get_settings


def automation_paused() -> bool:
    return get_settings().automation_paused


def schedule_status() -> DefaultScheduleStatus:
    """The `default_status` of every schedule."""
    return DefaultScheduleStatus.STOPPED if automation_paused() else DefaultScheduleStatus.RUNNING


def sensor_status() -> DefaultSensorStatus:
    """The `default_status` of every sensor."""
    return DefaultSensorStatus.STOPPED if automation_paused() else DefaultSensorStatus.RUNNING
