"""No failure disappears: final failures and poison messages become dead letters, alerted once."""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Producer

from results.models import Alert, AlertStatus, DeadLetter, DeadLetterReason, DeadLetterStatus, Job, Status
from tasks.failure.alerting import flush_alerts
from tasks.failure.dead_letters import DEAD_LETTER_QUEUE, message_for_job, queue_stats, record_dead_letter
from tasks.submit.actions import replay
from tests.helpers import wait_for, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]


def dead_letter_of(job_id, timeout: float = 30) -> DeadLetter:
    return wait_for(
        lambda: DeadLetter.objects.filter(job_id=job_id).first(), timeout=timeout, what=f"dead letter of {job_id}"
    )


def mails_about(mail_dir: Path, needle: str) -> list[str]:
    return [text for path in mail_dir.glob("*.log") if needle in (text := path.read_text(errors="replace"))]


def test_an_always_failing_job_is_dead_lettered_once_and_alerted_once_per_channel(worker, alert_sink, mail_dir):
    # Given a job that fails every attempt
    job = submit_fail({"mode": "always", "message": "downstream is down"})
    done = wait_terminal(job.id)
    assert done.status == Status.FAILED
    # Then exactly one dead letter holds the whole story
    letter = dead_letter_of(job.id)
    assert letter.reason == DeadLetterReason.RETRIES_EXHAUSTED
    assert (letter.task_name, letter.queue, letter.attempts) == ("diagnostics.fail", "default", done.attempts)
    assert letter.error_type == "TransientError" and "downstream is down" in letter.error_message
    assert "TransientError" in letter.traceback
    assert letter.body == {"args": [], "kwargs": done.payload}
    assert letter.headers["correlation_id"] == done.correlation_id
    assert letter.first_failed_at <= letter.last_failed_at
    assert Job.objects.get(pk=job.id).dead_lettered_at is not None
    # And each channel heard of it once: webhook, mail, Sentry (one event, not one per attempt)
    hooks = wait_for(lambda: alert_sink.webhooks_for(job.id), what="the webhook alert")
    wait_for(lambda: mails_about(mail_dir, str(job.id)), what="the alert mail")
    events = wait_for(lambda: alert_sink.events_for(job.id), what="the Sentry event")
    assert len(hooks) == 1 and "downstream is down" in hooks[0]["text"]
    assert hooks[0]["terminus"]["reason"] == "retries_exhausted"
    assert len(mails_about(mail_dir, str(job.id))) == 1
    assert len(events) == 1
    assert events[0]["fingerprint"] == ["terminus-dead-letter", "diagnostics.fail", "TransientError"]
    assert events[0]["tags"]["correlation_id"] == done.correlation_id
    attempt_events = [
        e for e in alert_sink.sentry_events if str(job.id) in json.dumps(e.get("extra", {}).get("celery-job", {}))
    ]
    assert attempt_events == []  # the Celery integration's per-attempt reports are dropped
    sent = {("webhook", AlertStatus.SENT), ("mail", AlertStatus.SENT)}
    wait_for(
        lambda: set(Alert.objects.filter(dead_letter=letter).values_list("channel", "status")) == sent,
        what="both alerts recorded as sent",
    )


def test_a_non_retryable_error_is_dead_lettered_at_once(worker):
    job = submit_fail({"mode": "permanent", "message": "no such customer"})
    letter = dead_letter_of(job.id)
    assert (letter.reason, letter.attempts, letter.error_type) == (DeadLetterReason.NON_RETRYABLE, 1, "PermanentError")


def test_a_hard_time_limit_is_dead_lettered_from_the_main_process(worker):
    job = submit_fail({"mode": "sleep", "seconds": 30, "ignore_soft_limit": True})
    letter = dead_letter_of(job.id, timeout=40)
    assert (letter.reason, letter.error_type) == (DeadLetterReason.TIME_LIMIT, "TimeLimitExceeded")


def test_a_duplicate_dead_letter_delivery_creates_no_second_record_or_alert(worker, alert_sink):
    job = submit_fail({"mode": "permanent"})
    letter = dead_letter_of(job.id)
    wait_for(lambda: alert_sink.webhooks_for(job.id), what="the first alert")
    # When the same dead-letter message is delivered again
    result = record_dead_letter.apply_async(
        kwargs=message_for_job(Job.objects.get(pk=job.id), reason="non_retryable"), queue=DEAD_LETTER_QUEUE
    )
    wait_for(lambda: result.ready(), what="the duplicate to be processed")
    assert result.result == {"dead_letter": letter.pk, "created": False}
    assert DeadLetter.objects.filter(job_id=job.id).count() == 1
    assert len(alert_sink.webhooks_for(job.id)) == 1


def test_an_unknown_task_message_lands_in_the_dead_letter_store(worker):
    from project.celery import app

    message_id = str(uuid.uuid4())
    app.send_task("billing.nonexistent", kwargs={"invoice": 7}, task_id=message_id, queue="default")
    letter = wait_for(lambda: DeadLetter.objects.filter(message_key=message_id).first(), what="the poison record")
    assert (letter.reason, letter.task_name, letter.job_id) == (
        DeadLetterReason.UNKNOWN_TASK,
        "billing.nonexistent",
        None,
    )
    assert letter.body[1] == {"invoice": 7}  # protocol 2 body: [args, kwargs, embed]


def test_a_pickle_message_is_refused_never_unpickled_and_kept_for_a_human(worker, tmp_path):
    # Given a message whose pickle body would create a file if anyone unpickled it
    marker = tmp_path / "unpickled"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    message_id = str(uuid.uuid4())
    from project.celery import app

    with Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options) as conn:
        Producer(conn).publish(
            pickle.dumps(((), {}, {})) + pickle.dumps(Exploit()),
            routing_key="default",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"id": message_id, "task": "diagnostics.sleep", "lang": "py"},
            declare=[app.amqp.queues["default"]] if "default" in app.amqp.queues else None,
        )
    letter = wait_for(lambda: DeadLetter.objects.filter(message_key=message_id).first(), what="the refused message")
    assert letter.reason == DeadLetterReason.UNDECODABLE
    assert "ContentDisallowed" in letter.error_message
    assert letter.raw_body.startswith("base64:")
    assert not marker.exists()


def test_replay_runs_the_job_again_with_an_edited_payload_once(worker):
    job = submit_fail({"mode": "permanent", "message": "bad data"})
    letter = dead_letter_of(job.id)
    # When it is replayed with a corrected payload, twice
    rerun, created = replay(letter, payload={"mode": "times", "times": 0})
    again, created_again = replay(DeadLetter.objects.get(pk=letter.pk))
    # Then one new run, linked to the original, succeeds with a fresh retry budget
    assert (created, created_again) == (True, False) and again.pk == rerun.pk
    done = wait_terminal(rerun.id)
    assert (done.status, done.retry_of_id, done.attempts) == (Status.SUCCEEDED, job.id, 1)
    letter.refresh_from_db()
    assert (letter.status, letter.replay_job_id) == (DeadLetterStatus.REPLAYED, rerun.id)
    assert Job.objects.filter(retry_of=job.id).count() == 1


def test_replay_refuses_an_invalid_edited_payload():
    from tasks.submit.validation import SubmissionError

    job = Job.objects.create(type="diagnostics.fail", status=Status.FAILED, terminal_by="2030-01-01T00:00:00Z")
    letter = DeadLetter.objects.create(message_key=str(job.pk), job=job, task_name=job.type, reason="non_retryable")
    with pytest.raises(SubmissionError):
        replay(letter, payload={"mode": "explode"})
    letter.refresh_from_db()
    assert letter.status == DeadLetterStatus.OPEN and Job.objects.count() == 1


def test_a_burst_of_failures_gives_one_alert_then_one_summary_with_the_count(worker, alert_sink, settings):
    # Given 8 jobs failing for good with the same type and error within one throttle window
    start = len(alert_sink.webhooks)
    jobs = [submit_fail({"mode": "permanent", "message": f"burst {n}"}) for n in range(8)]
    for job in jobs:
        dead_letter_of(job.id)
    wait_for(lambda: Alert.objects.filter(channel="webhook", status=AlertStatus.SENT).exists(), what="first alert")
    key = "diagnostics.fail|PermanentError"
    immediate = [w for w in alert_sink.webhooks[start:] if w["terminus"]["key"] == key]
    assert len(immediate) == 1 and immediate[0]["terminus"]["count"] == 1
    # When the window closes and the flush runs (beat does this every minute)
    import time

    time.sleep(settings.TERMINUS_ALERT_WINDOW + 0.5)
    flush_alerts.apply_async(queue=DEAD_LETTER_QUEUE).get(timeout=30)
    summaries = [w for w in alert_sink.webhooks[start:] if w["terminus"]["key"] == key and w["terminus"]["count"] > 1]
    assert len(summaries) == 1
    assert summaries[0]["terminus"]["count"] == 7
    assert "7 more diagnostics.fail failures" in summaries[0]["text"]


def test_a_failing_alert_channel_is_retried_and_the_dead_letter_is_kept(worker, alert_sink):
    alert_sink.fail_next = 1  # the webhook answers 503 once
    job = submit_fail({"mode": "permanent", "message": "channel drill"})
    letter = dead_letter_of(job.id)  # persisted before any alert was tried
    hooks = wait_for(lambda: alert_sink.webhooks_for(job.id), timeout=40, what="the retried alert")
    assert len(hooks) == 1
    # (the sink has the webhook before the worker records the alert as sent)
    alert = wait_for(
        lambda: Alert.objects.filter(dead_letter=letter, channel="webhook", status=AlertStatus.SENT).first(),
        what="the alert recorded as sent",
    )
    assert alert.sent_at is not None


def test_queue_stats_report_open_dead_letters_and_the_oldest_age():
    DeadLetter.objects.create(message_key="a", reason="non_retryable")
    DeadLetter.objects.create(message_key="b", reason="non_retryable", status=DeadLetterStatus.RESOLVED)
    stats = queue_stats()
    assert (stats["open"], stats["total"]) == (1, 2)
    assert stats["oldest_age_seconds"] >= 0


def submit_fail(payload):
    from tasks.submit.outbox import submit

    return submit("diagnostics.fail", payload)
