"""webhook.deliver against a real HTTP receiver on 127.0.0.1, run by a real worker process."""

from __future__ import annotations

import json
import socket

import pytest

from results.models import AttemptOutcome, Job, Status
from tasks.submit.outbox import submit
from tasks.submit.validation import SubmissionError, validate_payload
from tests.helpers import wait_terminal
from tests.receivers import HANG


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def outcomes(job: Job) -> list[str]:
    return [attempt.outcome for attempt in job.attempt_history()]


# -- delivery against a real receiver -------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_it_posts_the_json_body_with_the_job_id_as_idempotency_key(worker, receiver):
    # Given a receiver that accepts
    recv = receiver(200)
    body = {"event": "order.paid", "order": {"id": 42, "total": "9.90"}, "tags": ["a", "é"]}
    # When a webhook is submitted and run
    job = submit("webhook.deliver", {"url": recv.url, "body": body, "headers": {"X-Signature": "sig-1"}})
    done = wait_terminal(job.id)
    # Then it succeeded with the receiver's status and how much it answered, not what
    assert done.status == Status.SUCCEEDED, done.error_message
    assert done.result == {"status_code": 200, "response_bytes": len(b'{"received": true, "status": 200}')}
    assert outcomes(done) == [AttemptOutcome.SUCCEEDED]
    # And the receiver got exactly one POST with the JSON body and the job id as Idempotency-Key
    assert len(recv.requests) == 1
    request = recv.requests[0]
    assert request["path"] == "/hook"
    assert json.loads(request["body"]) == body
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Idempotency-Key"] == str(job.id)
    assert request["headers"]["X-Signature"] == "sig-1"


@pytest.mark.django_db(transaction=True)
def test_it_retries_5xx_answers_then_succeeds(worker, receiver):
    recv = receiver(500, 500, 200)
    job = submit("webhook.deliver", {"url": recv.url, "body": {"n": 1}})
    done = wait_terminal(job.id)
    assert done.status == Status.SUCCEEDED, done.error_message
    assert done.attempts == 3
    assert done.result["status_code"] == 200
    assert outcomes(done) == [AttemptOutcome.RETRIED, AttemptOutcome.RETRIED, AttemptOutcome.SUCCEEDED]
    first = done.attempt_set.get(number=1)
    assert first.error_type == "WebhookError" and "500" in first.error_message
    # Every attempt carried the same key, so the receiver can drop duplicates
    assert [r["headers"]["Idempotency-Key"] for r in recv.requests] == [str(job.id)] * 3


@pytest.mark.django_db(transaction=True)
def test_it_fails_after_max_retries_when_the_receiver_keeps_answering_503(worker, receiver):
    recv = receiver(503)
    job = submit("webhook.deliver", {"url": recv.url})
    done = wait_terminal(job.id)
    assert done.status == Status.FAILED
    assert done.max_retries == 5
    assert done.attempts == done.max_retries + 1
    assert done.error_type == "WebhookError"
    assert "503" in done.error_message
    assert outcomes(done) == [AttemptOutcome.RETRIED] * done.max_retries + [AttemptOutcome.FAILED]
    assert len(recv.requests) == done.max_retries + 1


@pytest.mark.django_db(transaction=True)
def test_it_does_not_retry_a_4xx_rejection(worker, receiver):
    recv = receiver(404)
    job = submit("webhook.deliver", {"url": recv.url})
    done = wait_terminal(job.id)
    assert (done.status, done.attempts, done.error_type) == (Status.FAILED, 1, "WebhookRejected")
    assert "404" in done.error_message
    assert outcomes(done) == [AttemptOutcome.FAILED]
    assert len(recv.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_it_retries_a_429_rate_limit_like_a_5xx(worker, receiver):
    recv = receiver(429, 200)
    job = submit("webhook.deliver", {"url": recv.url})
    done = wait_terminal(job.id)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 2)
    assert done.attempt_set.get(number=1).error_type == "WebhookError"
    assert len(recv.requests) == 2


@pytest.mark.django_db(transaction=True)
def test_it_fails_a_redirect_without_following_it(worker, receiver):
    recv = receiver(302)
    job = submit("webhook.deliver", {"url": recv.url})
    done = wait_terminal(job.id)
    assert (done.status, done.attempts, done.error_type) == (Status.FAILED, 1, "WebhookRejected")
    assert "302" in done.error_message and "https://elsewhere.test/hook" in done.error_message
    assert len(recv.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_it_retries_a_receiver_that_does_not_answer_within_the_timeout(worker, receiver):
    # Given a receiver that holds the first request open, then answers
    recv = receiver(HANG, 200)
    # When the webhook is sent with a 0.5 s timeout
    job = submit("webhook.deliver", {"url": recv.url, "timeout": 0.5})
    done = wait_terminal(job.id)
    # Then the first attempt was retried as a timeout and the second succeeded
    assert done.status == Status.SUCCEEDED, done.error_message
    assert done.attempts == 2
    first = done.attempt_set.get(number=1)
    assert first.outcome == AttemptOutcome.RETRIED
    assert first.error_type == "WebhookError"
    assert "timed out after 0.5s" in first.error_message
    assert len(recv.requests) == 2


@pytest.mark.django_db(transaction=True)
def test_it_retries_a_refused_connection_until_retries_are_exhausted(worker, closed_port_url):
    job = submit("webhook.deliver", {"url": closed_port_url})
    done = wait_terminal(job.id)
    assert done.status == Status.FAILED
    assert done.attempts == done.max_retries + 1
    assert done.error_type == "WebhookError"
    assert "connection failed" in done.error_message
    assert outcomes(done) == [AttemptOutcome.RETRIED] * done.max_retries + [AttemptOutcome.FAILED]


# -- payload validation (no worker needed) ----------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"url": "not a url"}, "payload.url"),
        ({"url": "ftp://example.test/hook"}, "payload.url"),
        ({}, "payload.url"),
        ({"url": "https://example.test", "timeout": 0}, "payload.timeout"),
        ({"url": "https://example.test", "timeout": 61}, "payload.timeout"),
        ({"url": "https://example.test", "body": "a string"}, "payload.body"),
        ({"url": "https://example.test", "headers": {"X-Evil": "a\r\nHost: x"}}, "payload.headers"),
        ({"url": "https://example.test", "headers": {"Bad Name": "x"}}, "payload.headers"),
        ({"url": "https://example.test", "headers": {"idempotency-key": "mine"}}, "payload.headers"),
        ({"url": "https://example.test", "headers": {"Content-Length": "1"}}, "payload.headers"),
    ],
)
def test_it_rejects_an_invalid_payload_at_submit(payload, field):
    with pytest.raises(SubmissionError) as excinfo:
        validate_payload("webhook.deliver", payload)
    # A union's errors are keyed by member (payload.body.list[any]); the field is the prefix.
    assert any(key == field or key.startswith(f"{field}.") for key in excinfo.value.errors), excinfo.value.errors


def test_it_accepts_and_normalises_a_valid_payload():
    clean = validate_payload(
        "webhook.deliver",
        {"url": "https://example.test/hook", "body": [1, 2], "headers": {"X-Signature": "s"}, "timeout": 2},
    )
    assert clean == {
        "url": "https://example.test/hook",
        "body": [1, 2],
        "headers": {"X-Signature": "s"},
        "timeout": 2.0,
    }
