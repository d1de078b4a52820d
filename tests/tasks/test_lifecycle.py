"""Every exit path of a job ends in the right persisted terminal state (real worker processes)."""

from __future__ import annotations

import pytest

from results.models import AttemptOutcome, Job, Status
from tasks.submit.outbox import submit
from tests.helpers import wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]


def outcomes(job: Job) -> list[str]:
    return [attempt.outcome for attempt in job.attempt_history()]


def test_it_records_a_successful_job_with_its_result(worker):
    # Given a job that sleeps briefly and reports progress
    job = submit("diagnostics.sleep", {"seconds": 0.3, "heartbeat_every": 0.1})
    # When the worker runs it
    done = wait_terminal(job.id)
    # Then the record is succeeded with its result, one attempt and every timestamp set
    assert done.status == Status.SUCCEEDED
    assert done.result["slept"] >= 0.3
    assert done.attempts == 1
    assert done.progress == 1.0
    assert done.worker == worker.name
    assert done.dispatched_at and done.started_at and done.heartbeat_at and done.finished_at
    assert done.created_at <= done.dispatched_at <= done.started_at <= done.finished_at
    assert done.error_type == "" and done.next_retry_at is None
    assert outcomes(done) == [AttemptOutcome.SUCCEEDED]


def test_it_retries_a_transient_error_then_succeeds(worker):
    job = submit("diagnostics.fail", {"mode": "times", "times": 2})
    done = wait_terminal(job.id)
    assert done.status == Status.SUCCEEDED
    assert done.attempts == 3
    assert done.result == {"attempt": 3}
    assert outcomes(done) == [AttemptOutcome.RETRIED, AttemptOutcome.RETRIED, AttemptOutcome.SUCCEEDED]
    first = done.attempt_set.get(number=1)
    assert first.error_type == "TransientError" and "attempt 1" in first.error_message


def test_it_fails_for_good_when_retries_are_exhausted(worker):
    job = submit("diagnostics.fail", {"mode": "always", "message": "downstream down"})
    done = wait_terminal(job.id)
    assert done.status == Status.FAILED
    assert done.attempts == done.max_retries + 1
    assert done.error_type == "TransientError"
    assert "downstream down" in done.error_message
    assert "TransientError" in done.traceback
    assert outcomes(done) == [AttemptOutcome.RETRIED] * done.max_retries + [AttemptOutcome.FAILED]


def test_it_does_not_retry_a_non_retryable_error(worker):
    job = submit("diagnostics.fail", {"mode": "permanent", "message": "bad input"})
    done = wait_terminal(job.id)
    assert (done.status, done.attempts, done.error_type) == (Status.FAILED, 1, "PermanentError")
    assert done.error_message == "bad input"
    assert outcomes(done) == [AttemptOutcome.FAILED]


def test_it_fails_a_job_that_hits_its_soft_time_limit(worker, settings):
    # diagnostics.fail's limits come from TERMINUS_DIAGNOSTICS_TIME_LIMIT (hard N s, soft N-1 s)
    job = submit("diagnostics.fail", {"mode": "sleep", "seconds": 30})
    done = wait_terminal(job.id, timeout=30)
    assert (done.status, done.error_type, done.attempts) == (Status.FAILED, "SoftTimeLimitExceeded", 1)
    assert "soft time limit" in done.error_message
    assert outcomes(done) == [AttemptOutcome.FAILED]


def test_it_fails_a_job_killed_by_its_hard_time_limit(worker):
    # Given a job that ignores the soft limit, so the worker's main process must kill its child
    job = submit("diagnostics.fail", {"mode": "sleep", "seconds": 30, "ignore_soft_limit": True})
    done = wait_terminal(job.id, timeout=30)
    # Then the main process recorded the failure (the child could not)
    assert (done.status, done.error_type, done.attempts) == (Status.FAILED, "TimeLimitExceeded", 1)
    assert "hard time limit" in done.error_message
    assert outcomes(done) == [AttemptOutcome.FAILED]
    assert done.finished_at is not None
