"""The job state machine: allowed transitions only, terminal states are final, every write is guarded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from results.models import ALLOWED_SOURCES, TERMINAL_STATUSES, AttemptOutcome, Job, JobAttempt, Status

pytestmark = pytest.mark.django_db


def make_job(**fields) -> Job:
    now = timezone.now()
    defaults = {"type": "diagnostics.sleep", "terminal_by": now + timedelta(hours=1), "max_retries": 3}
    return Job.objects.create(**{**defaults, **fields})


def test_no_transition_leaves_a_terminal_state():
    for terminal in TERMINAL_STATUSES:
        for target, sources in ALLOWED_SOURCES.items():
            assert terminal not in sources, f"{terminal} -> {target} must not be allowed"


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_a_terminal_job_cannot_be_claimed_succeeded_failed_or_cancelled(terminal):
    job = make_job(status=terminal)
    assert job.mark_started(worker="w1") is None
    assert job.mark_succeeded(result={}) is False
    assert job.mark_failed(error_type="X", error_message="x") is False
    assert job.mark_cancelled() is False
    assert Job(pk=job.pk).heartbeat() is False
    job.refresh_from_db()
    assert job.status == terminal and job.version == 1 and job.attempts == 0


def test_claim_counts_the_attempt_which_runs_on_the_job_row_until_it_ends():
    job = make_job()
    claim = job.mark_started(worker="w1")
    assert claim is not None and (claim.attempt, claim.lost_deliveries, claim.max_retries) == (1, 0, 3)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.worker, job.version) == (Status.RUNNING, 1, "w1", 2)
    assert job.started_at and job.heartbeat_at
    assert not job.attempt_set.exists()
    [running] = job.attempt_history()
    assert (running.number, running.worker, running.outcome, running.started_at) == (
        1,
        "w1",
        AttemptOutcome.RUNNING,
        job.started_at,
    )


def test_a_second_claim_of_a_running_job_is_a_lost_delivery():
    job = make_job()
    job.mark_started(worker="w1")
    claim = job.mark_started(worker="w2")
    assert claim is not None and (claim.attempt, claim.lost_deliveries) == (2, 1)
    rows = list(job.attempt_set.order_by("number").values_list("number", "worker", "outcome", "error_type"))
    assert rows == [(1, "w1", "lost", "worker_lost")]
    job.refresh_from_db()
    history = [(a.number, a.worker, a.outcome) for a in job.attempt_history()]
    assert history == [(1, "w1", "lost"), (2, "w2", "running")]


def test_an_attempt_that_ends_is_recorded_with_the_worker_and_start_it_had():
    job = make_job()
    job.mark_started(worker="w1")
    job.refresh_from_db()
    assert job.mark_retrying(error_type="TransientError", error_message="boom", next_retry_at=timezone.now())
    recorded = job.attempt_set.get()
    assert (recorded.number, recorded.worker, recorded.outcome) == (1, "w1", AttemptOutcome.RETRIED)
    assert (recorded.error_type, recorded.error_message) == ("TransientError", "boom")
    assert recorded.started_at == job.started_at
    assert recorded.finished_at is not None and recorded.finished_at >= recorded.started_at


def test_a_succeeded_attempt_is_described_by_the_job_row_alone():
    job = make_job()
    job.mark_started(worker="w1")
    assert job.mark_succeeded(result={"ok": True})
    assert not job.attempt_set.exists()
    job.refresh_from_db()
    [succeeded] = job.attempt_history()
    assert (succeeded.number, succeeded.worker, succeeded.outcome) == (1, "w1", AttemptOutcome.SUCCEEDED)
    assert (succeeded.started_at, succeeded.finished_at) == (job.started_at, job.finished_at)
    assert succeeded.pk is None  # synthesized, never saved


def test_failing_a_job_that_never_ran_records_no_attempt():
    job = make_job()
    assert job.mark_failed(error_type="PermanentError", error_message="bad input")
    assert not job.attempt_set.exists()


def test_retry_then_success_closes_each_attempt():
    job = make_job()
    job.mark_started(worker="w1")
    due = timezone.now() + timedelta(seconds=5)
    assert job.mark_retrying(error_type="TransientError", error_message="boom", next_retry_at=due)
    job.refresh_from_db()
    assert (job.status, job.next_retry_at, job.error_type) == (Status.RETRYING, due, "TransientError")
    job.mark_started(worker="w1")
    assert job.mark_succeeded(result={"ok": True})
    job.refresh_from_db()
    assert (job.status, job.result, job.next_retry_at, job.error_type) == (Status.SUCCEEDED, {"ok": True}, None, "")
    assert job.finished_at is not None
    assert list(job.attempt_set.values_list("outcome", flat=True)) == ["retried"]
    assert [(a.number, a.outcome) for a in job.attempt_history()] == [(1, "retried"), (2, "succeeded")]


def test_only_one_of_two_racing_finishers_wins():
    job = make_job()
    job.mark_started(worker="w1")
    assert job.mark_succeeded(result=1) is True
    assert job.mark_failed(error_type="TimeLimitExceeded", error_message="late") is False
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED and job.result == 1


def test_cancel_of_a_running_job_closes_its_attempt_and_stops_heartbeats():
    job = make_job()
    job.mark_started(worker="w1")
    assert job.mark_cancelled(reason="user asked") is True
    assert Job(pk=job.pk).heartbeat(progress=0.5) is False
    job.refresh_from_db()
    assert (job.status, job.error_message) == (Status.CANCELLED, "user asked")
    assert job.attempt_set.get().outcome == AttemptOutcome.CANCELLED


def test_heartbeat_clamps_progress_and_bumps_the_version():
    job = make_job()
    job.mark_started(worker="w1")
    assert Job(pk=job.pk).heartbeat(progress=7, message="almost") is True
    job.refresh_from_db()
    assert (job.progress, job.progress_message, job.version) == (1.0, "almost", 3)


def test_each_transition_is_a_single_guarded_update():
    job = make_job()
    with CaptureQueriesContext(connection) as queries:
        job.mark_cancelled()
    updates = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("UPDATE") and 'results_job"' in q["sql"].split("SET")[0]
    ]
    assert len(updates) == 1
    assert "status" in updates[0].split("WHERE")[1]  # conditional on the current status


def test_the_database_rejects_an_unknown_status():
    with pytest.raises(IntegrityError):
        make_job(status="pending")


def test_the_database_rejects_progress_out_of_range():
    with pytest.raises(IntegrityError):
        make_job(progress=1.5)


def test_attempt_numbers_are_unique_per_job():
    job = make_job()
    JobAttempt.objects.create(job=job, number=1)
    with pytest.raises(IntegrityError):
        JobAttempt.objects.create(job=job, number=1)


def test_past_deadline_counts_only_open_jobs_past_terminal_by():
    past = timezone.now() - timedelta(seconds=1)
    make_job(terminal_by=past)
    make_job(terminal_by=past, status=Status.FAILED)
    make_job()
    assert Job.objects.past_deadline().count() == 1


def test_a_claim_returns_the_correlation_id_and_marks_a_never_marked_job_dispatched():
    job = make_job(correlation_id="c-123")
    assert job.dispatched_at is None
    claim = job.mark_started(worker="w1")
    assert claim is not None and claim.correlation_id == "c-123" and claim.attempt == 1
    job.refresh_from_db()
    assert job.dispatched_at is not None  # the worker holds its message: it was published


def test_a_claim_keeps_the_first_dispatch_time():
    first = timezone.now() - timedelta(minutes=5)
    job = make_job(dispatched_at=first)
    job.mark_started(worker="w1")
    job.refresh_from_db()
    assert job.dispatched_at == first


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="asynchronous commit is PostgreSQL's")
def test_the_asynchronous_claim_commit_stays_within_its_own_statement():
    """The claim and the published marker commit with synchronous_commit off for their own
    transaction only: the success write and every other write of the session stay synchronous."""

    def setting() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    job = make_job()
    Job.mark_many_dispatched([job.pk])
    assert job.mark_started(worker="w1") is not None
    assert setting() == "on"
    assert job.mark_succeeded(result={"ok": True})
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED and job.dispatched_at is not None
    from django.db import transaction

    other = make_job()
    with transaction.atomic():  # inside a caller's transaction the claim must not change its commit
        assert other.mark_started(worker="w1") is not None
        assert setting() == "on"
