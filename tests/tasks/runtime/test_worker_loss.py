"""Worker crashes: acks_late redelivers, a poison message is bounded, a terminal job never runs twice."""

from __future__ import annotations

import itertools
import signal

import pytest
from django.conf import settings

from results.models import AttemptOutcome, Job, Status
from tasks.runtime.types import get_job_type
from tasks.submit.actions import cancel
from tasks.submit.outbox import submit
from tests.helpers import FAST_REDELIVERY, broker_kind, wait_for, wait_status, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]


def outcomes(job: Job) -> list[str]:
    return [attempt.outcome for attempt in job.attempt_history()]


def test_a_job_whose_pool_child_is_killed_is_redelivered_and_finishes(start_worker, drill_queue):
    # Given a worker running a job in its pool child
    worker = start_worker(drill_queue)
    job = submit("diagnostics.sleep", {"seconds": 2, "heartbeat_every": 0.2}, queue=drill_queue)
    wait_status(job.id, Status.RUNNING)
    # When the child is SIGKILLed mid-job (an OOM kill)
    (child,) = worker.children()
    child.send_signal(signal.SIGKILL)
    # Then the message is redelivered (acks_late + reject_on_worker_lost) and the job succeeds
    done = wait_terminal(job.id, timeout=60)
    assert done.status == Status.SUCCEEDED
    assert (done.attempts, done.lost_deliveries) == (2, 1)
    assert outcomes(done) == [AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED]
    lost = done.attempt_set.get(number=1)
    assert lost.error_type == "worker_lost" and lost.finished_at is not None


def test_a_job_whose_whole_worker_is_killed_is_redelivered_to_another_worker(start_worker, drill_queue):
    if broker_kind() == "filesystem":
        pytest.skip("the filesystem broker has no unacked store: the reaper re-dispatches such jobs")
    # Redis: FAST_REDELIVERY, so the test waits seconds instead of the production hour. RabbitMQ
    # requeues as soon as the dead worker's connection drops.
    first = start_worker(drill_queue, **FAST_REDELIVERY)
    job = submit("diagnostics.sleep", {"seconds": 2, "heartbeat_every": 0.2}, queue=drill_queue)
    wait_status(job.id, Status.RUNNING)
    # When the whole worker vanishes (SIGKILL to its process group) and another one starts
    first.kill()
    second = start_worker(drill_queue, **FAST_REDELIVERY)
    # Then Redis gives the unacked message back and the second worker finishes the job
    done = wait_terminal(job.id, timeout=60)
    assert done.status == Status.SUCCEEDED
    assert done.worker == second.name
    assert (done.attempts, done.lost_deliveries) == (2, 1)
    assert outcomes(done) == [AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED]


def test_a_message_that_keeps_killing_its_worker_fails_after_bounded_deliveries(start_worker, drill_queue, monkeypatch):
    # Given a job that SIGKILLs whichever process runs it (a poison message). The time limits the
    # message carries are raised so they cannot end this story first: on the filesystem broker the
    # worker runs its synchronous loop, where billiard reports a lost child only after 10 s.
    task = get_job_type("diagnostics.fail").task
    monkeypatch.setattr(task, "time_limit", 40)
    monkeypatch.setattr(task, "soft_time_limit", 39)
    monkeypatch.setattr(task, "_exec_options", None)  # Celery caches publish options per task
    start_worker(drill_queue)
    job = submit("diagnostics.fail", {"mode": "crash", "seconds": 0.5}, queue=drill_queue)
    # Then it is not redelivered forever: after MAX_LOST_DELIVERIES it fails as worker_lost
    done = wait_terminal(job.id, timeout=120)
    limit = settings.TERMINUS_MAX_LOST_DELIVERIES
    assert (done.status, done.error_type) == (Status.FAILED, "worker_lost")
    assert done.lost_deliveries == limit
    assert done.attempts == limit + 1
    assert outcomes(done) == [AttemptOutcome.LOST] * limit + [AttemptOutcome.FAILED]
    assert f"died {limit} times" in done.error_message


def test_a_redelivered_message_for_a_terminal_job_does_not_run_it_again(start_worker, drill_queue):
    worker = start_worker(drill_queue)
    job = submit("diagnostics.sleep", {"seconds": 0}, queue=drill_queue)
    done = wait_terminal(job.id)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 1)
    # When the same message (same task id) is delivered again, e.g. a duplicate after a timeout
    get_job_type("diagnostics.sleep").task.apply_async(kwargs=done.payload, task_id=str(job.id), queue=drill_queue)
    sentinel = submit("diagnostics.sleep", {"seconds": 0}, queue=drill_queue)  # same queue, one child: after it
    wait_terminal(sentinel.id)
    # Then the record is untouched: no second attempt, same version
    again = Job.objects.get(pk=job.id)
    assert (again.status, again.attempts, again.version) == (Status.SUCCEEDED, 1, done.version)
    assert [attempt.outcome for attempt in again.attempt_history()] == [AttemptOutcome.SUCCEEDED]
    assert not again.attempt_set.exists()  # a succeeded attempt is recorded by the job row alone
    assert f"job {job.id} not run" in worker.log()


def test_a_cancelled_running_job_stops_at_its_next_heartbeat(start_worker, drill_queue):
    # Given a long job running on a worker with a single child
    start_worker(drill_queue)
    job = submit("diagnostics.sleep", {"seconds": 60, "heartbeat_every": 0.2}, queue=drill_queue)
    wait_status(job.id, Status.RUNNING)
    # When it is cancelled
    assert cancel(job) is True
    # Then the record is cancelled at once and the worker is free again within a heartbeat
    cancelled = Job.objects.get(pk=job.id)
    assert (cancelled.status, cancelled.error_type) == (Status.CANCELLED, "cancelled")
    assert outcomes(cancelled) == [AttemptOutcome.CANCELLED]
    follower = submit("diagnostics.sleep", {"seconds": 0}, queue=drill_queue)
    assert wait_terminal(follower.id, timeout=15).status == Status.SUCCEEDED
    assert Job.objects.get(pk=job.id).status == Status.CANCELLED
    assert cancel(job) is False  # already terminal


def test_a_job_cancelled_before_it_starts_never_runs(start_worker, drill_queue):
    job = submit("diagnostics.sleep", {"seconds": 0}, queue=drill_queue, countdown=2)
    assert cancel(job) is True
    worker = start_worker(drill_queue)
    wait_for(lambda: f"job {job.id} not run" in worker.log(), timeout=20, what="the worker to drop the message")
    again = Job.objects.get(pk=job.id)
    assert (again.status, again.attempts, again.started_at) == (Status.CANCELLED, 0, None)


def test_backoff_delays_grow_exponentially_within_the_cap(start_worker, drill_queue):
    # Given workers whose policy waits base 0.5 s doubling up to a 4 s cap, with equal jitter
    start_worker(drill_queue, TERMINUS_RETRY_BACKOFF_BASE="0.5", TERMINUS_RETRY_BACKOFF_MAX="4")
    job = submit("diagnostics.fail", {"mode": "always"}, queue=drill_queue)
    done = wait_terminal(job.id, timeout=60)
    attempts = list(done.attempt_set.order_by("number"))
    assert len(attempts) == done.max_retries + 1 == 6
    gaps = [(b.started_at - a.finished_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    ceilings = [min(4.0, 0.5 * 2**n) for n in range(len(gaps))]  # 0.5, 1, 2, 4, 4
    for gap, ceiling in zip(gaps, ceilings, strict=True):
        # equal jitter: never below half the step; scheduling adds a little on top
        assert ceiling / 2 - 0.05 <= gap <= ceiling + 1.0, (gaps, ceilings)
    assert gaps[2] > gaps[0] and gaps[3] > gaps[1]  # grows
    assert max(gaps) <= 4 + 1.0  # and stays under the cap


def test_a_job_revoked_outside_the_api_ends_cancelled(start_worker, drill_queue):
    # Given a job waiting on its countdown inside a worker
    worker = start_worker(drill_queue)
    job = submit("diagnostics.sleep", {"seconds": 0}, queue=drill_queue, countdown=3)
    wait_for(lambda: f"{job.id}] received" in worker.log(), timeout=20, what="the worker to hold the message")
    # When an operator revokes it with Celery's own control command
    get_job_type("diagnostics.sleep").task.app.control.revoke(str(job.id))
    # Then the record ends cancelled instead of staying queued forever
    done = wait_terminal(job.id, timeout=30)
    assert (done.status, done.attempts) == (Status.CANCELLED, 0)
    assert done.error_message == "revoked by an operator"
