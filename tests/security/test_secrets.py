"""A job's payload (a webhook's Authorization header, a card number) never reaches a log line or Sentry.

The worker test runs a real worker at LOG_LEVEL=DEBUG with Sentry pointed at a local sink, and a
webhook job carrying SECRET in its headers and body that fails for good (a closed port): every
attempt's log lines, the retry and failure lines, the dead letter, its alert and its Sentry event
happen. A second job then hits its hard time limit, so the worker's main process sends a Sentry
event too (with the breadcrumbs that process collected, such as Celery's "Task … received" lines).
SECRET must appear in no Sentry envelope, no alert, no line of any worker's log, and no
django-celery-results row (shown in the admin across tenants). The worker runs with DEBUG=false, as
in production: with Django's DEBUG on, ``django.db.backends`` logs every SQL statement with its
parameters at DEBUG level, payloads included: a development-only setup.

The web test submits the same secret in-process and checks every log record of the request.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db.models import Q
from django_celery_results.models import TaskResult

from results.models import DeadLetter, Job, Status
from tasks.failure.dead_letters import RECORD_TASK
from tasks.submit.outbox import submit
from tests.alert_sink import AlertSink
from tests.factories import client_for
from tests.helpers import wait_for
from tests.security.helpers import assert_error_shape

SECRET = "SECRET-MARKER-123"


class RecordingSink(AlertSink):
    """An AlertSink that also keeps every raw request body it received (envelopes and webhooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    def _take_envelope(self, raw: bytes) -> None:
        with self.lock:
            self.raw.append(raw)
        super()._take_envelope(raw)

    def everything(self) -> str:
        with self.lock:
            texts = [raw.decode(errors="replace") for raw in self.raw]
            texts += [json.dumps(hook) for hook in self.webhooks] + [json.dumps(e) for e in self.sentry_events]
        return "\n".join(texts)


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    sink = RecordingSink().start()
    yield sink
    sink.stop()


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def secret_webhook(queue: str) -> Job:
    return submit(
        "webhook.deliver",
        {
            "url": f"http://127.0.0.1:{closed_port()}/hook",
            "headers": {"Authorization": f"Bearer {SECRET}"},
            "body": {"card": SECRET, "note": f"pay with {SECRET}"},
            "timeout": 1,
        },
        queue=queue,
    )


def log_since(path: Path, offset: int) -> str:
    return path.read_text(errors="replace")[offset:] if path.exists() else ""


@pytest.mark.django_db(transaction=True)
def test_a_failing_jobs_payload_reaches_no_log_line_sentry_event_or_alert(
    start_worker, session_worker, alert_sink, sink, drill_queue, settings
):
    shared_log = session_worker.log_path
    shared_offset = len(session_worker.log())
    shared_events = len(alert_sink.sentry_events)
    # Given a worker at DEBUG, alerting and reporting to the sink, that records its own dead letters
    worker = start_worker(
        f"{drill_queue},dead_letter",
        # Two children: the dead letter of the hard time limit is recorded by the one not killed
        # (on the embedded broker's synchronous loop billiard replaces a killed child late).
        concurrency=2,
        LOG_LEVEL="DEBUG",
        DEBUG="false",
        SENTRY_DSN=sink.dsn,
        TERMINUS_ALERT_WEBHOOK_URL=f"{sink.url}/alerts",
        TERMINUS_QUEUES=",".join(settings.TERMINUS_QUEUES),
    )
    # When a webhook job carrying the secret fails for good
    job = secret_webhook(drill_queue)
    failed = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status=Status.FAILED).first(), timeout=60, what="the webhook to fail"
    )
    assert failed.attempts == failed.max_retries + 1
    letter = wait_for(
        lambda: DeadLetter.objects.filter(job_id=job.pk, alerted_at__isnull=False).first(), timeout=30, what="alert"
    )
    assert letter.body["kwargs"]["headers"]["Authorization"] == f"Bearer {SECRET}"  # kept for replay, in the DB
    # And a job hits its hard time limit: the worker's main process reports it
    limited = submit("diagnostics.fail", {"mode": "sleep", "seconds": 30, "ignore_soft_limit": True}, queue=drill_queue)
    wait_for(lambda: DeadLetter.objects.filter(job_id=limited.pk).exists(), timeout=60, what="the time limit")
    wait_for(lambda: sink.events_for(job.pk) or alert_sink.events_for(job.pk), timeout=30, what="the Sentry event")
    wait_for(lambda: sink.events_for(limited.pk) or alert_sink.events_for(limited.pk), timeout=30, what="event 2")
    wait_for(lambda: len(sink.raw) >= 2, timeout=30, what="envelopes from both processes")
    worker.stop()  # flushes Sentry's queue and the log

    # Then the secret is nowhere but the job's own record
    leaks = {
        "Sentry envelopes and alerts (dedicated worker)": sink.everything(),
        "Sentry events and alerts (shared worker)": json.dumps(alert_sink.sentry_events[shared_events:])
        + json.dumps(alert_sink.webhooks),
        "log of the worker that ran the job": worker.log(),
        "log of the shared worker": log_since(shared_log, shared_offset),
    }
    found = {where: _context(text) for where, text in leaks.items() if SECRET in text}
    assert not found, "the payload's secret leaked into:\n" + "\n\n".join(f"{k}:\n{v}" for k, v in found.items())
    assert "webhook.deliver" in worker.log()  # the log is the one that ran the job
    assert sink.raw, "no Sentry envelope reached the sink: the check above proved nothing"
    # Nor in django-celery-results rows (result_extended keeps Celery-native tasks' arguments, and
    # the admin shows them to anyone allowed to view task results, whatever their tenant).
    assert TaskResult.objects.filter(task_name=RECORD_TASK).exists()
    copies = TaskResult.objects.filter(
        Q(task_args__contains=SECRET) | Q(task_kwargs__contains=SECRET) | Q(result__contains=SECRET)
    )
    assert not copies.exists(), [(row.task_name, row.task_kwargs[:300]) for row in copies]


@pytest.mark.django_db
def test_a_refused_submission_logs_nothing_of_its_payload(alice, caplog):
    caplog.set_level(logging.DEBUG)
    body = {
        "type": "webhook.deliver",
        "payload": {"url": "http://x.test/hook", "headers": {"Authorization": f"Bearer {SECRET}"}, "timeout": 999},
        "bogus": SECRET,
    }
    response = client_for(alice).post("/api/jobs/", body, format="json")
    assert_error_shape(response, 400)
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    assert not [_record_text(r) for r in caplog.records if SECRET in _record_text(r)]


@pytest.mark.django_db
def test_an_accepted_submission_and_its_publishing_log_nothing_of_its_payload(
    alice, caplog, drill_queue, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    payload = {"url": "http://x.test/hook", "headers": {"Authorization": f"Bearer {SECRET}"}, "body": {"c": SECRET}}
    with django_capture_on_commit_callbacks(execute=True):  # the message is published (to a queue no one reads)
        response = client_for(alice).post(
            "/api/jobs/", {"type": "webhook.deliver", "payload": payload, "queue": drill_queue}, format="json"
        )
    assert response.status_code == 202
    assert Job.objects.get().dispatched_at is not None
    assert not [_record_text(r) for r in caplog.records if SECRET in _record_text(r)]


def _record_text(record: logging.LogRecord) -> str:
    """Everything a handler could write or ship: the message, its arguments and every extra field."""
    return f"{record.getMessage()} {record.__dict__!r}"


def _context(text: str, width: int = 300) -> str:
    at = text.find(SECRET)
    return text[max(0, at - width) : at + width]


@pytest.mark.django_db
def test_a_dead_letter_message_shows_no_payload_in_its_log_and_result_representation():
    # The dead-letter message carries the failed job's payload (a replay runs it), but Celery shows
    # its argsrepr/kwargsrepr in "Task received" lines, task events and django-celery-results rows
    # (task_kwargs, shown in the admin across tenants). Celery's own repr is cut at 1024
    # characters and 3 levels, which hid nested values behind a long traceback, not a top-level
    # one (a webhook URL holding its token) behind a short traceback (a worker lost).
    from unittest import mock

    from project.celery import app
    from tasks.failure.dead_letters import dead_letter_job

    job = submit("webhook.deliver", {"url": f"http://127.0.0.1:{closed_port()}/hook?token={SECRET}"})
    assert Job(pk=job.pk).mark_started(worker="w1@test")
    assert Job(pk=job.pk).mark_failed(error_type="worker_lost", error_message="the worker died", traceback="")
    sent = []
    with mock.patch.object(app.amqp, "send_task_message", lambda producer, name, message, **kw: sent.append(message)):
        assert dead_letter_job(job.pk)
    (message,) = sent
    assert SECRET in json.dumps(message.body)  # kept for the replay, in the message itself
    shown = f"{message.headers['argsrepr']} {message.headers['kwargsrepr']}"
    assert str(job.pk) in shown  # the repr still says which job the dead letter is about
    assert SECRET not in shown, shown
