"""Run-failure alerting: a real failed run → an alerts row, a log line, a webhook POST."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, build_run_status_sensor_context, job, op

from orchestration.schema import alerts
from resources.postgres import PostgresResource
from orchestration.alerts import post_webhook, record_alert
from sensors.alerts import run_failure_alert, sensors

WEBHOOK_ENV = "PSO_ALERT_WEBHOOK_URL"

# Looks like personal data; it is in the exception message and must not reach the alert.
SECRET_VALUE = "Jane Doe 07700 900123"


class ParseError(ValueError):
    pass


@op
def load_rows() -> int:
    return 3


@op
def parse_rows(rows: int) -> int:
    raise ParseError(f"bad row for {SECRET_VALUE}")


@job
def failing_job():
    parse_rows(load_rows())


@pytest.fixture
def webhook():
    """A real HTTP server on loopback that records POSTed JSON bodies."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"content_type": self.headers["Content-Type"], "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def failure_context(instance, database_url):
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return build_run_status_sensor_context(
        sensor_name="run_failure_alert",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"postgres": PostgresResource(database_url=database_url)},
    ).for_run_failure(), result.run_id


def alert_rows(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(alerts).order_by(alerts.c.id)).mappings().all()


def test_failed_run_records_alert_and_posts_webhook(engine, database_url, webhook, set_env, caplog):
    url, received = webhook
    set_env(WEBHOOK_ENV, url)
    with DagsterInstance.ephemeral() as instance:
        context, run_id = failure_context(instance, database_url)
        with caplog.at_level(logging.WARNING, logger="orchestration.alerts"):
            run_failure_alert(context)

    [row] = alert_rows(engine)
    assert row["kind"] == "run_failure" and row["run_id"] == run_id
    assert row["details"]["job_name"] == "failing_job"
    assert row["details"]["failed_steps"] == ["parse_rows"]
    assert "ParseError" in row["details"]["error_classes"]
    assert "parse_rows" in row["message"]
    assert any(f"alert {row['id']} [run_failure]" in r.getMessage() for r in caplog.records)

    [post] = received
    assert post["content_type"] == "application/json"
    assert post["body"]["kind"] == "run_failure" and post["body"]["run_id"] == run_id
    assert post["body"]["alert_id"] == row["id"] and post["body"]["failed_steps"] == ["parse_rows"]
    # The exception message (which quotes a "row") reaches neither the table nor the webhook.
    assert SECRET_VALUE not in json.dumps(post["body"])
    assert SECRET_VALUE not in json.dumps(dict(row), default=str)


def test_without_webhook_only_the_row(engine, database_url, webhook, set_env):
    url, received = webhook
    set_env(WEBHOOK_ENV, None)
    with DagsterInstance.ephemeral() as instance:
        context, _ = failure_context(instance, database_url)
        run_failure_alert(context)
    assert len(alert_rows(engine)) == 1
    assert received == []


def test_unreachable_webhook_is_logged_not_raised(engine, database_url, set_env, caplog):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    set_env(WEBHOOK_ENV, f"http://127.0.0.1:{port}/hook")
    with DagsterInstance.ephemeral() as instance:
        context, _ = failure_context(instance, database_url)
        with caplog.at_level(logging.WARNING, logger="orchestration.alerts"):
            run_failure_alert(context)
    assert len(alert_rows(engine)) == 1
    assert any("alert webhook failed" in r.getMessage() for r in caplog.records)
    assert post_webhook("not a url", {"x": 1}) is False


def test_record_alert_is_usable_by_other_families(engine):
    with engine.begin() as conn:
        alert_id = record_alert(conn, "letters_still_created", "3 letters still created after 17:30",
                                {"notification_ids": ["a", "b", "c"]})
    [row] = alert_rows(engine)
    assert row["id"] == alert_id and row["run_id"] is None
    assert row["details"] == {"notification_ids": ["a", "b", "c"]}


def test_sensor_is_exported_and_in_definitions():
    from orchestration.definitions import defs

    assert [s.name for s in sensors] == ["run_failure_alert"]
    assert defs.resolve_sensor_def("run_failure_alert") is not None
