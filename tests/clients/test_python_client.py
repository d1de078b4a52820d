"""The Python client (clients/python, ``terminus_client``) against a live Terminus: gunicorn + a real worker.

Jobs that must stay non-terminal go to the hold queue (no worker consumes it); jobs that must run
go to the default queue, which the suite's shared worker consumes. The retry tests point the
client at a closed port, a port a server comes up on later, and a local HTTP receiver scripted to
answer 503 (or 403, or nothing).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from terminus_client import (
    CANCELLED,
    FAILED,
    QUEUED,
    SUCCEEDED,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    DeadLetter,
    Forbidden,
    JobCancelled,
    JobFailed,
    JobSpec,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
    WaitTimeout,
    compute_backoff,
)
from terminus_client import Job as ApiJob
from terminus_client.retry import parse_retry_after

from results.models import Job, Membership, RetiredKey, Status
from tasks.jobs.diagnostics import SleepInput
from tests.clients.helpers import HOLD_QUEUE, client_for_url, free_port
from tests.factories import token_for
from tests.helpers import wait_for
from tests.receivers import HANG, Receiver
from tests.results.web.helpers import WebServer


def held_job(terminus: Client, **options: Any) -> ApiJob:
    """A job that stays queued: its queue has no worker."""
    return terminus.submit("diagnostics.sleep", {"seconds": 0}, queue=HOLD_QUEUE, **options)


def request_counter(client: Client) -> list[httpx.Request]:
    """Every request the client sends from now on."""
    sent: list[httpx.Request] = []
    client.http.event_hooks["request"].append(sent.append)
    return sent


# -- submit and wait -----------------------------------------------------------------------------
def test_it_submits_a_job_and_waits_for_its_success(terminus, worker):
    # Given a job submitted through the client
    job = terminus.submit("diagnostics.sleep", {"seconds": 0.5})
    assert job.status == QUEUED
    assert job.etag
    assert job.retry_after == 1
    # When the client waits for it
    done = terminus.wait(job, timeout=60, raise_on_failure=True)
    # Then it comes back succeeded, with the result the worker recorded
    assert done.id == job.id
    assert done.status == SUCCEEDED
    assert done.terminal
    assert done.result["slept"] >= 0.5
    assert done.retry_after is None  # terminal: no more polling advice
    assert done.finished_at is not None


def test_wait_raises_job_failed_when_asked_and_returns_the_failed_job_otherwise(terminus, worker):
    # Given a job that fails for good
    job = terminus.submit("diagnostics.fail", {"mode": "permanent", "message": "bad input"})
    # When the client waits for it asking to raise on failure
    with pytest.raises(JobFailed) as raised:
        terminus.wait(job, timeout=60, raise_on_failure=True)
    # Then the error carries the failed job and its reason
    assert raised.value.job.id == job.id
    assert raised.value.job.status == FAILED
    assert raised.value.job.error_type == "PermanentError"
    assert "bad input" in str(raised.value)
    # And without asking, wait returns the failed job like any terminal one
    assert terminus.wait(job, timeout=5).status == FAILED


def test_wait_returns_a_cancelled_job_and_raises_job_cancelled_when_asked(terminus):
    # Given a job cancelled through the client
    job = held_job(terminus)
    cancelled = terminus.cancel(job, reason="not needed any more")
    assert (cancelled.status, cancelled.error_message) == (CANCELLED, "not needed any more")
    # Then wait returns it, or raises JobCancelled when asked to
    assert terminus.wait(job, timeout=5).status == CANCELLED
    with pytest.raises(JobCancelled) as raised:
        terminus.wait(job, timeout=5, raise_on_failure=True)
    assert raised.value.job.status == CANCELLED


def test_wait_gives_up_after_its_timeout_with_the_job_as_last_seen(terminus):
    # Given a job that stays queued
    job = held_job(terminus)
    # When the client waits 2 s for it
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        terminus.wait(job, timeout=2, poll_wait=1)
    # Then it gives up after about 2 s, saying where the job was
    assert 1.9 <= time.monotonic() - started < 6
    assert raised.value.job.status == QUEUED
    assert isinstance(raised.value, TimeoutError)


# -- polling: ETag, 304, long poll ---------------------------------------------------------------
def test_poll_answers_not_modified_while_the_etag_is_current(terminus):
    # Given a queued job and its ETag
    job = held_job(terminus)
    # Then a poll with that ETag is a 304 (None), and one with a stale ETag gets the job
    assert terminus.poll(job, etag=job.etag) is None
    fresh = terminus.poll(job, etag='"stale-0"')
    assert fresh is not None
    assert fresh.etag == job.etag
    # And once the job changes, the old ETag gets the new version
    terminus.cancel(job)
    changed = terminus.poll(job, etag=job.etag)
    assert changed is not None
    assert changed.status == CANCELLED
    assert changed.etag != job.etag


def test_a_long_poll_is_held_until_the_job_changes(terminus):
    # Given a queued job: a long poll with its ETag is held for its whole wait while nothing changes
    job = held_job(terminus)
    started = time.monotonic()
    assert terminus.poll(job, etag=job.etag, wait=2) is None
    assert time.monotonic() - started >= 1.9
    # When the job is cancelled a second into a 20 s long poll
    canceller = threading.Timer(1.0, lambda: terminus.cancel(job, reason="changed"))
    started = time.monotonic()
    canceller.start()
    try:
        changed = terminus.poll(job, etag=job.etag, wait=20)
    finally:
        canceller.cancel()
    # Then the poll answers with the change at once, not after 20 s
    assert changed is not None
    assert changed.status == CANCELLED
    assert time.monotonic() - started < 10


def test_wait_answers_as_soon_as_a_held_job_ends(terminus):
    # Given a queued job cancelled two seconds into a wait of up to a minute
    job = held_job(terminus)
    canceller = threading.Timer(2.0, lambda: terminus.cancel(job, reason="changed"))
    canceller.start()
    started = time.monotonic()
    try:
        done = terminus.wait(job, timeout=60, poll_wait=30)
    finally:
        canceller.cancel()
    # Then the wait (one held long poll) returns the cancelled job within seconds
    assert done.status == CANCELLED
    assert time.monotonic() - started < 10


# -- cancel, retry, list, bulk -------------------------------------------------------------------
def test_cancel_twice_is_a_conflict_naming_the_status(terminus):
    job = held_job(terminus)
    terminus.cancel(job)
    with pytest.raises(Conflict) as raised:
        terminus.cancel(job)
    assert raised.value.status_code == 409
    assert raised.value.fields == ["status"]
    assert "cancelled" in raised.value.errors["status"][0]


def test_retry_runs_a_cancelled_job_again_as_a_new_job(terminus):
    # Given a cancelled job
    job = held_job(terminus)
    terminus.cancel(job)
    # When it is retried
    again = terminus.retry(job)
    # Then a new queued job runs it again, linked to the first
    assert again.id != job.id
    assert (again.status, again.retry_of, again.queue, again.type) == (QUEUED, job.id, HOLD_QUEUE, job.type)
    # And a job that is not failed or cancelled cannot be retried
    with pytest.raises(Conflict):
        terminus.retry(again)


def test_list_follows_the_cursor_across_pages(terminus):
    # Given seven jobs (and one of another type)
    batch = terminus.submit_many([JobSpec(type="diagnostics.sleep", queue=HOLD_QUEUE) for _ in range(7)])
    other = terminus.submit("diagnostics.fail", {"mode": "permanent"}, queue=HOLD_QUEUE)
    sent = request_counter(terminus)
    # When they are listed three to a page
    listed = list(terminus.list(type="diagnostics.sleep", page_size=3))
    # Then every one comes once, newest first, over three requests
    assert sorted(job.id for job in listed) == sorted(batch.ids)
    assert [job.created_at for job in listed] == sorted((job.created_at for job in listed), reverse=True)
    assert len(sent) == 3
    assert other.id not in {job.id for job in listed}
    # And the filters combine: status lists are sent as one comma-separated value
    terminus.cancel(batch.ids[0])
    assert [job.id for job in terminus.list(status=[CANCELLED, FAILED])] == [batch.ids[0]]


def test_submit_many_records_every_job_of_the_batch(terminus):
    # When a batch of three is submitted
    batch = terminus.submit_many(
        [
            JobSpec(type="diagnostics.sleep", payload={"seconds": 0}, queue=HOLD_QUEUE),
            {"type": "diagnostics.sleep", "payload": {"seconds": 1}, "queue": HOLD_QUEUE},
            JobSpec(type="diagnostics.fail", payload={"mode": "permanent"}, queue=HOLD_QUEUE),
        ],
        correlation_id="order-42",
    )
    # Then each is recorded, in order, under the batch's correlation id
    assert batch.count == 3
    assert batch.correlation_id == "order-42"
    assert [job.type for job in batch.jobs] == ["diagnostics.sleep", "diagnostics.sleep", "diagnostics.fail"]
    for job_id in batch.ids:
        job = terminus.get(job_id)
        assert (job.status, job.queue, job.correlation_id) == (QUEUED, HOLD_QUEUE, "order-42")


def test_submit_many_refuses_a_batch_with_a_bad_item_naming_it(terminus):
    with pytest.raises(BadRequest) as raised:
        terminus.submit_many(
            [
                JobSpec(type="diagnostics.sleep", queue=HOLD_QUEUE),
                JobSpec(type="diagnostics.sleep", payload={"seconds": -1}),
            ]
        )
    assert raised.value.fields
    assert all(field.startswith("jobs.1") for field in raised.value.fields), raised.value.errors
    assert not Job.objects.exists()


def test_an_idempotency_key_submits_once(terminus):
    first = held_job(terminus, idempotency_key="report-42")
    again = held_job(terminus, idempotency_key="report-42")
    assert again.id == first.id
    assert Job.objects.count() == 1


def test_a_pydantic_input_model_is_submitted_as_its_json(terminus):
    job = terminus.submit("diagnostics.sleep", SleepInput(seconds=0.25), queue=HOLD_QUEUE)
    assert Job.objects.get(pk=job.id).payload["seconds"] == 0.25


# -- dead letters --------------------------------------------------------------------------------
def test_dead_letters_are_listed_replayed_and_resolved(terminus, worker):
    # Given two jobs that failed for good, each dead-lettered
    first = terminus.submit("diagnostics.fail", {"mode": "permanent"})
    second = terminus.submit("diagnostics.fail", {"mode": "permanent"})
    for job in (first, second):
        assert terminus.wait(job, timeout=60).status == FAILED

    def letter_of(job: ApiJob) -> DeadLetter | None:
        return next(iter(terminus.dead_letters.list(job=job)), None)

    first_letter = wait_for(lambda: letter_of(first), timeout=30, what="the first dead letter")
    second_letter = wait_for(lambda: letter_of(second), timeout=30, what="the second dead letter")
    assert (first_letter.status, first_letter.job, first_letter.error_type) == ("open", first.id, "PermanentError")
    assert {letter.id for letter in terminus.dead_letters.list(status="open")} == {first_letter.id, second_letter.id}
    assert terminus.dead_letters.get(first_letter.id).body["kwargs"]
    # When the first is replayed with an edited payload
    replayed = terminus.dead_letters.replay(first_letter, payload={"mode": "times", "times": 0})
    # Then a new job runs it, linked to the failed one, and succeeds; replaying again runs nothing new
    assert replayed.retry_of == first.id
    assert terminus.wait(replayed, timeout=60, raise_on_failure=True).status == SUCCEEDED
    assert terminus.dead_letters.replay(first_letter).id == replayed.id
    # When the second is resolved (twice: resolving is idempotent)
    resolved = terminus.dead_letters.resolve(second_letter)
    assert resolved.status == "resolved"
    assert terminus.dead_letters.resolve(second_letter.id).status == "resolved"
    # Then a replayed dead letter cannot be resolved, and nothing is left open
    with pytest.raises(Conflict) as raised:
        terminus.dead_letters.resolve(first_letter)
    assert raised.value.fields == ["status"]
    stats = terminus.dead_letters.stats()
    assert (stats.open, stats.total) == (0, 2)


# -- typed errors --------------------------------------------------------------------------------
def test_bad_input_raises_bad_request_naming_the_field(terminus):
    with pytest.raises(BadRequest) as raised:
        terminus.submit("diagnostics.sleep", {"seconds": -1}, queue=HOLD_QUEUE)
    assert raised.value.status_code == 400
    assert raised.value.fields == ["payload.seconds"]
    assert raised.value.detail.startswith("Invalid input.")
    with pytest.raises(BadRequest) as raised:
        terminus.submit("diagnostics.nonexistent", {})
    assert raised.value.fields == ["type"]
    with pytest.raises(BadRequest) as raised:
        list(terminus.list(status="finished"))
    assert raised.value.fields == ["status"]


def test_a_missing_or_unknown_token_raises_unauthorized(terminus_web, transactional_db):
    for token in (None, "not-a-token"):
        with client_for_url(terminus_web.url, token) as anonymous, pytest.raises(Unauthorized) as raised:
            anonymous.get(uuid.uuid4())
        assert raised.value.status_code == 401
        assert raised.value.errors == {}


def test_an_unknown_or_hidden_job_raises_not_found(terminus, terminus_web, make_user):
    with pytest.raises(NotFound):
        terminus.get(uuid.uuid4())
    with pytest.raises(NotFound):
        terminus.dead_letters.get(987654)
    # Another tenant's job is not found either
    bob = make_user("bob", tenant="globex")
    with client_for_url(terminus_web.url, token_for(bob)) as bobs:
        job = held_job(bobs)
    with pytest.raises(NotFound):
        terminus.cancel(job)


def test_a_retired_idempotency_key_raises_conflict_naming_it(terminus, alice: User):
    # Given a key whose job the cleanup deleted: it stays reserved
    tenant = Membership.objects.get(user=alice).tenant
    RetiredKey.objects.create(key="nightly-7", tenant=tenant, job_id=uuid.uuid4(), job_status=Status.SUCCEEDED)
    # Then submitting with it again is a 409 on idempotency_key, and nothing runs
    with pytest.raises(Conflict) as raised:
        held_job(terminus, idempotency_key="nightly-7")
    assert raised.value.fields == ["idempotency_key"]
    assert not Job.objects.exists()


def test_a_body_over_the_limit_raises_payload_too_large(terminus):
    with pytest.raises(PayloadTooLarge) as raised:
        terminus.submit("diagnostics.sleep", {"seconds": 0, "note": "x" * 2_000_000}, queue=HOLD_QUEUE)
    assert raised.value.status_code == 413
    assert raised.value.fields == ["body"]


def test_going_over_the_submit_rate_raises_rate_limited_with_retry_after(
    start_terminus_web: Callable[..., WebServer], alice: User
):
    # Given a server allowing two submissions a minute
    server = start_terminus_web(TERMINUS_SUBMIT_RATE="2/min")
    with client_for_url(server.url, token_for(alice)) as client:
        held_job(client)
        held_job(client)
        # When a third comes within the minute
        with pytest.raises(RateLimited) as raised:
            held_job(client)
    # Then it is refused with the server's Retry-After, and was not retried
    assert raised.value.status_code == 429
    assert raised.value.retry_after is not None
    assert 0 < raised.value.retry_after <= 60
    assert Job.objects.count() == 2


def test_a_forbidden_answer_raises_forbidden_with_the_servers_detail(receiver: Callable[..., Receiver]):
    server = receiver((403, b'{"detail": "You do not have permission.", "errors": {}}'))
    with client_for_url(f"http://127.0.0.1:{server.port}", "t") as client, pytest.raises(Forbidden) as raised:
        client.submit("diagnostics.sleep", {})
    assert raised.value.detail == "You do not have permission."
    assert len(server.requests) == 1


# -- retries: 503 and no answer ------------------------------------------------------------------
def test_a_503_is_retried_until_an_answer_comes(receiver: Callable[..., Receiver]):
    # Given a server that answers 503 once, then accepts the job
    job = {"id": str(uuid.uuid4()), "type": "diagnostics.sleep", "status": "queued"}
    server = receiver(503, (202, json.dumps(job).encode()))
    # When the client submits
    with client_for_url(f"http://127.0.0.1:{server.port}", "t") as client:
        accepted = client.submit("diagnostics.sleep", {})
    # Then it sent the submission again and got the job
    assert accepted.id == job["id"]
    assert len(server.requests) == 2
    assert server.requests[0]["headers"]["Authorization"] == "Token t"


def test_a_503_left_after_every_retry_raises_service_unavailable(receiver: Callable[..., Receiver]):
    server = receiver(503)
    with client_for_url(f"http://127.0.0.1:{server.port}", "t") as client, pytest.raises(ServiceUnavailable):
        client.submit("diagnostics.sleep", {})
    assert len(server.requests) == 3  # QUICK_RETRY.max_attempts


def test_a_refused_connection_is_retried_then_raises_connection_failed():
    with client_for_url(f"http://127.0.0.1:{free_port()}", "t") as client:
        sent = request_counter(client)
        with pytest.raises(ConnectionFailed):
            client.submit("diagnostics.sleep", {})
    assert len(sent) == 3


def test_a_refused_connection_is_retried_until_the_server_comes_up(
    start_terminus_web: Callable[..., WebServer], alice: User
):
    # Given a port where the server comes up only after a second
    port = free_port()
    starter = threading.Timer(1.0, lambda: start_terminus_web(port=port))
    starter.start()
    patient = RetryPolicy(max_attempts=60, backoff_base=0.2, backoff_max=0.5)
    try:
        # When the client submits at once
        with client_for_url(f"http://127.0.0.1:{port}", token_for(alice), retry=patient) as client:
            sent = request_counter(client)
            job = held_job(client)
    finally:
        starter.join()
    # Then it retried the refused connection until the server answered, and the job was recorded once
    assert len(sent) > 1
    assert Job.objects.get().pk == uuid.UUID(job.id)


def test_a_submission_without_key_is_not_resent_after_the_connection_broke(receiver: Callable[..., Receiver]):
    # Given a server that reads the request and never answers
    server = receiver(HANG)
    url = f"http://127.0.0.1:{server.port}"
    # When a submission without an idempotency key times out, it is not sent again (it may have been recorded)
    with client_for_url(url, "t", timeout=0.5) as client, pytest.raises(ConnectionFailed):
        client.submit("diagnostics.sleep", {})
    assert len(server.requests) == 1
    # But one with a key, which the server deduplicates, is
    with client_for_url(url, "t", timeout=0.5) as client, pytest.raises(ConnectionFailed):
        client.submit("diagnostics.sleep", {}, idempotency_key="k")
    assert len(server.requests) == 4


# -- the backoff (pure) --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("retry", "low", "high"),
    [(1, 0.25, 0.5), (2, 0.25, 1.0), (3, 0.25, 2.0), (5, 0.25, 3.0), (50, 0.25, 3.0)],
)
def test_the_backoff_grows_exponentially_with_jitter_up_to_its_cap(retry, low, high):
    delays = [compute_backoff(retry, base=0.5, cap=3.0) for _ in range(200)]
    assert all(low <= delay <= high for delay in delays)
    assert len(set(delays)) > 1  # jittered: clients that failed together spread out


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("0", 0.0), ("-3", 0.0), (" 2.5 ", 2.5), ("", None), (None, None), ("soon", None), ("inf", None)],
)
def test_retry_after_is_read_as_seconds(header, seconds):
    assert parse_retry_after(header) == seconds


def test_retry_after_may_be_an_http_date():
    assert 59 <= parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 60


def test_a_503s_retry_after_is_honoured_up_to_the_cap():
    policy = RetryPolicy(backoff_base=0.5, backoff_max=4)
    assert policy.delay(1, retry_after=2) == 2
    assert policy.delay(1, retry_after=600) == 4
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
