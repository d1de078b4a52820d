"""Fencing by attempt: a worker writes only about the attempt it claimed, and only while it is current.

These drive the record's transitions in the test process against the real database, as a worker
and the repair pass would, in the order a paused (zombie) worker produces them.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from results.models import AttemptOutcome, Job, JobAttempt, Status, WorkerNode
from tasks.recovery.repairs import NODE_DEAD, Pass, recover_dead_nodes
from tasks.submit.outbox import _new_job

pytestmark = pytest.mark.django_db(transaction=True)


def new_job(queue: str | None = None, max_retries: int = 3) -> Job:
    job = _new_job(
        "diagnostics.sleep", {"seconds": 1}, owner=None, tenant=None, queue=None, countdown=None,
        correlation_id=None, now=timezone.now(),
    )  # fmt: skip
    job.queue = queue or f"nobody-{uuid.uuid4().hex[:6]}"  # no consumer: a re-dispatched copy never runs
    job.max_retries = max_retries
    job.save(force_insert=True)
    return job


def node(hostname: str = "zombie@host", *, seen_ago: float = 0) -> WorkerNode:
    registered = WorkerNode.register(hostname=hostname, pid=4242)
    if seen_ago:
        WorkerNode.objects.filter(pk=registered.pk).update(last_seen_at=timezone.now() - timedelta(seconds=seen_ago))
    return registered


def test_a_stale_attempt_cannot_overwrite_the_newer_attempts_outcome():
    # Given attempt 1 on a node that was declared dead, and attempt 2 running elsewhere
    job = new_job()
    zombie, healthy = node("zombie@host", seen_ago=600), node("healthy@host")
    first = Job(pk=job.pk).mark_started(worker="zombie@host", node=zombie.pk)
    assert first is not None and first.attempt == 1
    assert recover_dead_nodes(Pass()) == {"dead_node_requeued": 1, "dead_node_failed": 0}
    second = Job(pk=job.pk).mark_started(worker="healthy@host", node=healthy.pk)
    assert second is not None and second.attempt == 2
    # When the zombie comes back, every write it makes about attempt 1 is refused
    assert Job(pk=job.pk).heartbeat(attempt=1, progress=0.9) is False
    assert Job(pk=job.pk).mark_succeeded(result={"from": "zombie"}, attempt=1) is False
    assert (
        Job(pk=job.pk).mark_retrying(error_type="E", error_message="zombie", next_retry_at=timezone.now(), attempt=1)
        is False
    )
    assert Job(pk=job.pk).mark_failed(error_type="E", error_message="zombie", attempt=1) is False
    assert Job(pk=job.pk).superseded(attempt=1) is True
    # And the current attempt's writes land
    assert Job(pk=job.pk).heartbeat(attempt=2, progress=0.5) is True
    assert Job(pk=job.pk).mark_succeeded(result={"from": "attempt 2"}, attempt=2) is True
    done = Job.objects.get(pk=job.pk)
    assert (done.status, done.result, done.attempts) == (Status.SUCCEEDED, {"from": "attempt 2"}, 2)
    lost = JobAttempt.objects.get(job=job, number=1)
    assert lost.outcome == AttemptOutcome.LOST and lost.error_message == NODE_DEAD


def test_the_main_process_fails_only_an_attempt_its_own_node_claimed():
    job = new_job()
    mine, other = node("mine@host"), node("other@host")
    assert Job(pk=job.pk).mark_started(worker="other@host", node=other.pk) is not None
    # A hard time limit recorded by a node that no longer runs the attempt changes nothing
    assert Job(pk=job.pk).mark_failed(error_type="TimeLimitExceeded", error_message="late", node=mine.pk) is False
    assert Job(pk=job.pk).mark_failed(error_type="TimeLimitExceeded", error_message="now", node=other.pk) is True


def test_a_copy_delivered_again_takes_over_and_the_attempt_it_interrupted_can_no_longer_write():
    # The broker delivers the message again (the first node died, or gave it back) to another node
    job = new_job()
    first, second = node("first@host"), node("second@host")
    assert Job(pk=job.pk).mark_started(worker="first@host", node=first.pk) is not None
    claim = Job(pk=job.pk).mark_started(worker="second@host", node=second.pk)
    assert claim is not None and (claim.attempt, claim.lost_deliveries) == (2, 1)
    assert JobAttempt.objects.get(job=job, number=1).outcome == AttemptOutcome.LOST
    # Should the first attempt still be running somewhere, it is refused and stops at its next heartbeat
    assert Job(pk=job.pk).heartbeat(attempt=1) is False
    assert Job(pk=job.pk).mark_succeeded(result={"from": "attempt 1"}, attempt=1) is False
    assert Job(pk=job.pk).mark_failed(error_type="TimeLimitExceeded", error_message="late", node=first.pk) is False
    assert Job(pk=job.pk).mark_succeeded(result={"from": "attempt 2"}, attempt=2) is True


def test_a_copy_delivered_back_to_the_node_whose_child_died_takes_over():
    # The pool child running the attempt died; its main process got the message back (reject on worker lost)
    job = new_job()
    same = node("same@host")
    assert Job(pk=job.pk).mark_started(worker="same@host", node=same.pk) is not None
    claim = Job(pk=job.pk).mark_started(worker="same@host", node=same.pk)
    assert claim is not None and (claim.attempt, claim.lost_deliveries) == (2, 1)


def test_the_repair_pass_leaves_jobs_on_live_nodes_alone_and_fails_lost_jobs_without_attempts_left():
    alive_job, spent_job = new_job(), new_job(max_retries=0)
    alive, dead = node("alive@host"), node("dead@host", seen_ago=600)
    Job(pk=alive_job.pk).mark_started(worker="alive@host", node=alive.pk)
    Job(pk=spent_job.pk).mark_started(worker="dead@host", node=dead.pk)
    assert recover_dead_nodes(Pass()) == {"dead_node_requeued": 0, "dead_node_failed": 1}
    assert Job.objects.get(pk=alive_job.pk).status == Status.RUNNING
    failed = Job.objects.get(pk=spent_job.pk)
    assert (failed.status, failed.error_type) == (Status.FAILED, "lost")
    assert WorkerNode.objects.get(pk=dead.pk).stopped_at is not None
    assert WorkerNode.objects.get(pk=alive.pk).stopped_at is None
