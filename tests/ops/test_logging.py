"""Structured logs: JSON lines where every line of a job carries its id, type, attempt, correlation id
and worker; the correlation id flows from the HTTP request into the job, its lines and its alert."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from project.logging import formatter
from results.models import DeadLetter, Job, Status
from tests.helpers import ARTIFACTS, ROOT, wait_for, wait_terminal
from tests.ops.helpers import free_port, json_lines

pytestmark = pytest.mark.django_db(transaction=True)
PLAIN_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+Z? +\[?(debug|info|warning|error|critical)", re.IGNORECASE)


def submit_via_api(api: Any, body: dict[str, Any], correlation_id: str | None = None) -> Job:
    headers = {"HTTP_X_CORRELATION_ID": correlation_id} if correlation_id else {}
    response = api.post("/api/jobs/", body, format="json", **headers)
    assert response.status_code == 202, response.content
    return Job.objects.get(pk=response.json()["id"])


def test_every_line_of_a_job_carries_its_id_type_attempt_correlation_id_and_worker(ops_worker, drill_queue, staff_api):
    # Given a worker logging JSON
    worker = ops_worker(drill_queue, LOG_FORMAT="json")
    # When two jobs with their own correlation ids run on it, one of them failing once first
    retried = submit_via_api(
        staff_api, {"type": "diagnostics.fail", "payload": {"mode": "times", "times": 1}, "queue": drill_queue}, "req-A"
    )
    plain = submit_via_api(staff_api, {"type": "diagnostics.sleep", "payload": {}, "queue": drill_queue}, "req-B")
    assert wait_terminal(retried.id).status == Status.SUCCEEDED
    assert wait_terminal(plain.id).status == Status.SUCCEEDED
    lines = wait_for(
        lambda: (
            (found := json_lines(worker.log_path))
            and sum("succeeded in" in line["message"] for line in found) >= 2
            and found
        ),
        what="both success lines",
    )
    # Then the worker writes nothing but JSON log lines
    assert not [line for line in worker.log().splitlines() if PLAIN_LOG_LINE.match(line)]
    assert all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    # And every line a pool process wrote for a job carries the job's five fields, its own values
    expected = {str(retried.id): ("diagnostics.fail", "req-A"), str(plain.id): ("diagnostics.sleep", "req-B")}
    task_lines = [line for line in lines if line.get("logger") == "celery.app.trace"]
    assert len(task_lines) >= 3  # retry, success, success
    for line in task_lines:
        job_type, correlation_id = expected[line["job_id"]]
        assert (line["job_type"], line["correlation_id"], line["worker"]) == (job_type, correlation_id, worker.name)
        assert line["job_id"] in line["message"]
    retried_lines = [(line["attempt"], line["message"]) for line in task_lines if line["job_id"] == str(retried.id)]
    assert any(attempt == 1 and " retry: " in message for attempt, message in retried_lines), retried_lines
    assert any(attempt == 2 and " succeeded in " in message for attempt, message in retried_lines), retried_lines
    # And the main process's "received" lines name the job and its type
    received = [line for line in lines if line["message"].endswith("received")]
    assert {(line["job_id"], line["job_type"]) for line in received} >= {
        (str(retried.id), "diagnostics.fail"),
        (str(plain.id), "diagnostics.sleep"),
    }
    # And no line carries another job's context: whatever logged during a job (kombu, Django) carries
    # that job's id and correlation id, and lines outside any job carry none
    for line in lines:
        if line["logger"] == "celery.worker.strategy":
            continue
        if "job_id" in line:
            assert line["correlation_id"] == expected[line["job_id"]][1], line
        else:
            assert "correlation_id" not in line and "attempt" not in line, line


def test_the_correlation_id_of_a_request_reaches_the_job_record_and_its_dead_letter_alert(
    alone, ops_worker, drill_queue, staff_api, sentry_sink
):
    # Given a worker for the job and its dead letter, alerting to Sentry
    ops_worker(f"{drill_queue},dead_letter", SENTRY_DSN=sentry_sink.dsn)
    # When a job submitted with a correlation id fails for good
    job = submit_via_api(
        staff_api, {"type": "diagnostics.fail", "payload": {"mode": "permanent"}, "queue": drill_queue}, "order-77"
    )
    # Then the record, the dead letter and the Sentry alert all carry it
    assert job.correlation_id == "order-77"
    letter = wait_for(lambda: DeadLetter.objects.filter(job_id=job.id).first(), what="the dead letter")
    assert letter.headers["correlation_id"] == "order-77"
    (event,) = wait_for(lambda: sentry_sink.events_for(job.id), what="the Sentry alert")
    assert event["tags"]["correlation_id"] == "order-77"


def test_a_request_without_a_correlation_id_gets_one_on_the_job_and_in_the_response(staff_api, drill_queue):
    response = staff_api.post(
        "/api/jobs/", {"type": "diagnostics.sleep", "payload": {}, "queue": drill_queue}, format="json"
    )
    assert response.status_code == 202
    generated = response["X-Correlation-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert Job.objects.get(pk=response.json()["id"]).correlation_id == generated


def test_request_log_lines_carry_the_correlation_id_and_every_response_echoes_it(db):
    # Given a JSON handler on the logger Django reports 404s to
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    django_request = logging.getLogger("django.request")
    django_request.addHandler(handler)
    try:
        response = Client().get("/no-such-page", HTTP_X_CORRELATION_ID="trace-404")
    finally:
        django_request.removeHandler(handler)
    # Then the response and the request's log line carry the client's id
    assert response.status_code == 404 and response["X-Correlation-ID"] == "trace-404"
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["level"], line["correlation_id"]) == ("warning", "trace-404")
    # And a malformed id is not echoed (the API refuses it with a 400 naming the header)
    assert "X-Correlation-ID" not in Client().get("/healthz", HTTP_X_CORRELATION_ID="caf\u00e9")


def test_gunicorn_access_lines_are_json_with_the_requests_correlation_id(tmp_path: Path):
    # Given the web role as deployed (deploy/start-web.sh's gunicorn flags) logging JSON
    port = free_port()
    log_path = ARTIFACTS / "ops-gunicorn-json.log"
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "LOG_FORMAT": "json",
        "TERMINUS_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "PORT": str(port),
        "GUNICORN_WORKERS": "1",
        "GUNICORN_WORKER_TMP_DIR": str(tmp_path),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(ROOT / "deploy" / "start-web.sh")], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"X-Correlation-ID": "lb-123"})

        def answered() -> bool:
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
                    return answer.status == 200
            except OSError:
                return False

        wait_for(answered, timeout=60, interval=0.3, what="gunicorn to answer")
        # Then its access line is a JSON object with the request's fields and correlation id
        access = wait_for(
            lambda: [line for line in json_lines(log_path) if line.get("logger") == "gunicorn.access"],
            what="an access line",
        )
        assert access[0]["correlation_id"] == "lb-123"
        assert (access[0]["http_method"], access[0]["path"], access[0]["status"]) == ("GET", "/healthz", 200)
        assert '"GET /healthz HTTP/1.1" 200' in access[0]["message"]
        assert [line for line in json_lines(log_path) if line.get("logger") == "gunicorn.error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(("name", "value"), [("LOG_FORMAT", "xml"), ("LOG_LEVEL", "LOUD")])
def test_a_bad_log_setting_refuses_to_start_naming_it(name: str, value: str, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TERMINUS_VAR_DIR": str(tmp_path), name: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert f"{name}={value!r}" in result.stderr


def test_a_job_line_is_readable_in_console_format_too(ops_worker, drill_queue, staff_api):
    worker = ops_worker(drill_queue, LOG_FORMAT="console")
    job = submit_via_api(staff_api, {"type": "diagnostics.sleep", "payload": {}, "queue": drill_queue}, "tty-1")
    assert wait_terminal(job.id).status == Status.SUCCEEDED
    line = wait_for(
        lambda: next((text for text in worker.log().splitlines() if "succeeded in" in text), None),
        what="the success line",
    )
    for field in (f"job_id={job.id}", "job_type=diagnostics.sleep", "attempt=1", "correlation_id=tty-1"):
        assert field in line, line
