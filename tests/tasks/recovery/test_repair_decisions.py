"""Each repair decision is one guarded UPDATE: racing repairers and late workers cannot both win.

These run the repair pass's steps in the test process against the real database (no beat here, so
nothing else decides for these rows), with two threads where a race is the point.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from results.models import AttemptOutcome, Job, JobAttempt, Status
from tasks.recovery.repairs import SILENT_PAST_LIMIT, Pass, _claim, reap_lost_running, redispatch_lost_queued
from tasks.submit.outbox import _new_job

pytestmark = pytest.mark.django_db(transaction=True)


def running_job(*, heartbeat_age: float, started_age: float = 3600, queue: str | None = None, **fields: Any) -> Job:
    """A job claimed by a worker (attempt 1 open), last heard of ``heartbeat_age`` seconds ago."""
    now = timezone.now()
    job = _new_job(
        "diagnostics.fail", {"mode": "sleep", "seconds": 1}, owner=None, tenant=None, queue=None, countdown=None,
        correlation_id=None, now=now - timedelta(seconds=started_age),
    )  # fmt: skip
    if queue:  # a queue nobody consumes: a re-dispatched message is never run by anyone
        job.queue = queue
    job.save(force_insert=True)
    claim = Job(pk=job.pk).mark_started(worker="gone@host")
    assert claim is not None
    Job.objects.filter(pk=job.pk).update(
        started_at=now - timedelta(seconds=started_age), heartbeat_at=now - timedelta(seconds=heartbeat_age), **fields
    )
    return Job.objects.get(pk=job.pk)


def race(*calls: Any) -> list[Any]:
    """Run the calls at the same moment in threads of their own; their results, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = calls[index]()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_reapers_racing_for_one_lost_job_count_one_loss():
    job = running_job(heartbeat_age=600)

    def verdict() -> bool:
        return Job(pk=job.pk).mark_lost(attempt=job.attempts, retry=True, why=SILENT_PAST_LIMIT)

    assert sorted(race(verdict, verdict)) == [False, True]
    after = Job.objects.get(pk=job.pk)
    assert (after.status, after.lost_deliveries, after.error_type) == (Status.RETRYING, 1, "lost")
    assert list(JobAttempt.objects.filter(job=job).values_list("outcome", flat=True)) == [AttemptOutcome.LOST]


def test_a_late_worker_cannot_overwrite_the_reapers_verdict():
    job = running_job(heartbeat_age=600)
    assert job.mark_lost(attempt=job.attempts, retry=True, why=SILENT_PAST_LIMIT)
    # The worker that was presumed dead speaks up: its heartbeat is refused (it stops) and so is
    # its result; the job waits for its re-dispatched attempt instead.
    assert Job(pk=job.pk).heartbeat(attempt=job.attempts, progress=0.5) is False
    assert Job(pk=job.pk).mark_succeeded(result={"late": True}, attempt=job.attempts) is False
    assert Job.objects.get(pk=job.pk).status == Status.RETRYING


def test_a_heartbeat_that_lands_first_wins_over_the_reaper():
    job = running_job(heartbeat_age=600)
    assert Job(pk=job.pk).heartbeat()  # alive after all: the version the repairer read is stale
    silent_guard = Q(version=job.version)
    assert job.mark_lost(attempt=job.attempts, retry=True, why=SILENT_PAST_LIMIT, guard=silent_guard) is False
    assert Job.objects.get(pk=job.pk).status == Status.RUNNING


def test_the_reaper_leaves_a_job_alone_while_it_heartbeats_within_its_time_limit(settings):
    settings.TERMINUS_REAPER_GRACE = 1
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    # Both started an hour ago (far past the 3 s limit); one has kept heartbeating, one went silent
    alive = running_job(heartbeat_age=0.5, queue=queue)
    silent = running_job(heartbeat_age=30, queue=queue)
    counts = reap_lost_running(Pass())
    assert counts == {"lost_requeued": 1, "lost_failed": 0}
    assert Job.objects.get(pk=alive.pk).status == Status.RUNNING
    assert Job.objects.get(pk=silent.pk).status == Status.RETRYING


def test_two_reapers_claim_one_redispatch():
    job = _new_job(
        "diagnostics.sleep", {"seconds": 0}, owner=None, tenant=None, queue=None, countdown=None,
        correlation_id=None, now=timezone.now(),
    )  # fmt: skip
    job.dispatched_at = None  # refused by the broker at submit
    job.save(force_insert=True)

    def claim() -> bool:
        return _claim(job, status=Status.QUEUED, dispatched_at__isnull=True)

    assert sorted(race(claim, claim)) == [False, True]


def test_queued_jobs_are_not_redispatched_while_their_queue_has_not_moved_past_them(settings):
    from results.models import QueueCanary

    settings.TERMINUS_REAPER_QUEUED_AFTER = 1
    queue = f"backlog-{uuid.uuid4().hex[:6]}"
    old = timezone.now() - timedelta(minutes=30)
    job = _new_job(
        "diagnostics.sleep", {"seconds": 0}, owner=None, tenant=None, queue=None, countdown=None,
        correlation_id=None, now=old,
    )  # fmt: skip
    job.queue = queue
    job.dispatched_at = old
    job.save(force_insert=True)
    # A backlog: the newest canary consumed was published before the job was due
    QueueCanary.objects.create(queue=queue, last_consumed_sent_at=old - timedelta(minutes=1))
    assert redispatch_lost_queued(Pass()) == 0
    # The queue consumed a canary published after the job was due: the job's message is gone
    QueueCanary.objects.filter(queue=queue).update(last_consumed_sent_at=timezone.now())
    assert redispatch_lost_queued(Pass()) == 1
    assert Job.objects.get(pk=job.pk).dispatched_at > old
