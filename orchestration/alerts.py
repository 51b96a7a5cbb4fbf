"""Alerts, the one way to raise one: a row in `alerts`, a log line, and (when PSO_ALERT_WEBHOOK_URL
is set) a JSON POST to that URL. Used by assets (letters still `created` after the cut-off) and
sensors (failed runs, a late nightly refresh) alike.

What an alert holds is operational only: ids, counts, job and step names, exception *classes*.
Error messages and stack traces are left out on purpose: a message can quote a row (a name, a
phone number), and alerts leave the system.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Mapping

import sqlalchemy as sa

from orchestration.schema import alerts
from orchestration.settings import get_settings

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 10.0


def record_alert(conn: sa.Connection, kind: str, message: str, details: Mapping[str, Any] | None,
                 run_id: str | None = None) -> int:
    """Insert one alert row (in the caller's transaction) and log it; returns the alert id.

    `message` and `details` must not contain personal data: ids, counts, names of jobs.
    """
    alert_id = conn.execute(
        sa.insert(alerts).values(kind=kind, message=message, details=dict(details) if details else None,
                                 run_id=run_id).returning(alerts.c.id)
    ).scalar_one()
    log.warning("alert %s [%s] %s", alert_id, kind, message)
    return alert_id


def post_webhook(url: str, payload: Mapping[str, Any], timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> bool:
    """POST `payload` as JSON. A failing webhook is logged, never raised: the alert row is
    already committed and the sensor must keep running."""
    try:
        request = urllib.request.Request(
            url, data=json.dumps(payload, default=str).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "public-service-orchestration-alerts"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            ok = 200 <= response.status < 300
            if not ok:
                log.warning("alert webhook answered HTTP %s", response.status)
            return ok
    except (urllib.error.URLError, OSError, ValueError) as error:
        # The URL may carry a token: log only the error class and reason, not the URL.
        log.warning("alert webhook failed: %s: %s", type(error).__name__, getattr(error, "reason", error))
        return False


def post_alert_webhook(kind: str, alert_id: int, message: str, details: Mapping[str, Any] | None) -> None:
    """POST a recorded alert to the configured webhook (PSO_ALERT_WEBHOOK_URL), if any; never raises."""
    url = get_settings().alert_webhook_url
    if url:
        post_webhook(url, {"kind": kind, "alert_id": alert_id, "message": message, **(details or {})})


def raise_alert(conn: sa.Connection, kind: str, message: str, details: Mapping[str, Any] | None,
                run_id: str | None = None) -> int:
    """Record an alert in its own transaction on `conn` (which must have none open), then post the
    webhook: the row is committed before anything leaves the system. Returns the alert id."""
    with conn.begin():
        alert_id = record_alert(conn, kind, message, details, run_id=run_id)
    post_alert_webhook(kind, alert_id, message, details)
    return alert_id
