"""Sentry: beat crons arrive as cron monitor check-ins; events carry release and environment and no
payload or personal data. Everything goes through sentry-sdk's real transport to a local endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from project.celery import app
from project.sentry import FILTERED, TRACKED_TAG, before_send, scrub
from tests.helpers import ROOT, test_database_url, wait_for
from tests.ops.helpers import SentrySink
from tests.ops.sentry_drill import SECRETS

RELEASE = "terminus@9.9.9-ops"
ENVIRONMENT = "ops-drill"


def sentry_env(sink: SentrySink) -> dict[str, str]:
    return {"SENTRY_DSN": sink.dsn, "SENTRY_RELEASE": RELEASE, "SENTRY_ENVIRONMENT": ENVIRONMENT}


def drill(*argv: str, sink: SentrySink) -> None:
    env = {**os.environ, "DATABASE_URL": test_database_url(), **sentry_env(sink)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.ops.sentry_drill", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db(transaction=True)
def test_a_beat_entry_is_reported_as_a_sentry_cron_monitor(ops_worker, drill_queue, sentry_sink):
    # Given a worker reporting to Sentry
    ops_worker(drill_queue, **sentry_env(sentry_sink))
    # When beat's scheduler sends a periodic entry (every minute)
    drill("beat", "ops-drill-cron", drill_queue, sink=sentry_sink)
    # Then Sentry hears "in progress" from beat and "ok" from the worker, for the same check-in
    check_ins = wait_for(
        lambda: (
            (found := sentry_sink.of_type("check_in"))
            and {c["status"] for c in found} >= {"in_progress", "ok"}
            and found
        ),
        what="in_progress and ok check-ins",
    )
    started = next(c for c in check_ins if c["status"] == "in_progress")
    finished = next(c for c in check_ins if c["status"] == "ok")
    assert started["monitor_slug"] == finished["monitor_slug"] == "ops-drill-cron"
    assert started["check_in_id"] == finished["check_in_id"]
    assert started["monitor_config"]["schedule"] == {"type": "crontab", "value": "* * * * *"}
    assert finished["duration"] is not None and finished["duration"] >= 0
    assert finished["release"] == RELEASE and finished["environment"] == ENVIRONMENT


@pytest.mark.django_db(transaction=True)
def test_a_task_error_reaches_sentry_with_release_and_environment_but_without_its_arguments(
    ops_worker, drill_queue, sentry_sink
):
    # Given a worker reporting to Sentry
    ops_worker(drill_queue, **sentry_env(sentry_sink))
    # When a Celery-native task fails on arguments that carry personal data
    app.send_task("terminus.alerts.flush", kwargs={"card": SECRETS["body"]}, queue=drill_queue)
    (event,) = wait_for(lambda: sentry_sink.of_type("event"), what="the task's error event")
    # Then the event says what failed, where and in which release
    assert event["exception"]["values"][-1]["type"] == "TypeError"
    assert (event["release"], event["environment"]) == (RELEASE, ENVIRONMENT)
    assert event["extra"]["celery-job"]["task_name"] == "terminus.alerts.flush"
    # But not with what: the arguments are filtered, frames carry no local variables
    assert event["extra"]["celery-job"]["kwargs"] == FILTERED
    assert all("vars" not in frame for frame in event["exception"]["values"][-1]["stacktrace"]["frames"])
    assert SECRETS["body"] not in sentry_sink.raw_text()


@pytest.mark.django_db(transaction=True)
def test_a_web_error_reaches_sentry_without_body_token_cookie_or_query(sentry_sink):
    drill("web", sink=sentry_sink)
    (event,) = wait_for(lambda: sentry_sink.of_type("event"), what="the request's error event")
    assert event["exception"]["values"][-1]["value"] == "the drill view failed"
    assert (event["release"], event["environment"]) == (RELEASE, ENVIRONMENT)
    request = event["request"]
    assert request["method"] == "POST" and request["url"].endswith("/explode/")
    assert not {"data", "cookies", "query_string", "env"} & set(request)
    assert {name.lower() for name in request["headers"]} <= {
        "accept",
        "content-length",
        "content-type",
        "host",
        "user-agent",
        "x-correlation-id",
    }
    assert request["headers"].get("X-Correlation-Id", request["headers"].get("X-Correlation-ID")) == "drill-web-1"
    raw = sentry_sink.raw_text()
    leaked = [name for name, secret in SECRETS.items() if secret in raw]
    assert not leaked, f"sent to Sentry: {leaked}"


def test_scrub_keeps_what_happened_and_drops_data_and_noisy_breadcrumbs():
    event: dict[str, Any] = {
        "user": {"id": "7", "email": "a@example.com", "ip_address": "10.0.0.1"},
        "threads": {"values": [{"stacktrace": {"frames": [{"function": "run", "vars": {"payload": "x"}}]}}]},
        "breadcrumbs": {
            "values": [
                {"category": "celery.app.trace", "message": "Task x[1] succeeded in 0.1s: {'card': '4111'}"},
                {"category": "httplib", "type": "http", "data": {"url": "https://h/?token=abc", "method": "POST"}},
                {"category": "terminus.alerts", "message": "alert sent", "data": {"payload": {"card": "4111"}}},
            ]
        },
    }
    scrubbed = scrub(event)
    assert scrubbed["user"] == {"id": "7"}
    assert "vars" not in scrubbed["threads"]["values"][0]["stacktrace"]["frames"][0]
    assert scrubbed["breadcrumbs"]["values"] == [
        {"category": "httplib", "type": "http", "data": {"method": "POST"}},
        {"category": "terminus.alerts", "message": "alert sent"},
    ]


def test_before_send_still_drops_the_celery_reports_of_tracked_jobs():
    tracked = {"tags": {TRACKED_TAG: "1"}, "exception": {"values": [{"mechanism": {"type": "celery"}}]}}
    assert before_send(tracked, {}) is None
    message = {"tags": {TRACKED_TAG: "1"}, "message": "diagnostics.fail failed for good"}
    assert before_send(message, {}) is message
