"""No long wait inside the broker: a countdown, a schedule or a retry delay longer than
TERMINUS_BROKER_DELAY_MAX is held in the database and published by the repair pass when it is due.

A wait of hours is not waited out here: the test moves the job's due time (``next_retry_at``, the
column the repair pass reads) to a few seconds from now, then a real worker runs it once.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now
from django.utils import timezone
from rest_framework.test import APIClient

from results.models import Job, Status
from tasks.recovery.repairs import Pass, dispatch_undispatched, publish_held_retries
from tasks.submit.outbox import submit
from tests.helpers import PRODUCTION_RECOVERY, wait_for, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]


def make_due(job: Job, *, in_seconds: float = 2) -> None:
    """As if the hours of its wait had passed: due in a few seconds, submitted long ago."""
    Job.objects.filter(pk=job.pk).update(
        next_retry_at=timezone.now() + timedelta(seconds=in_seconds), created_at=timezone.now() - timedelta(hours=2)
    )


def test_a_two_hour_countdown_is_held_in_the_database_then_published_when_due_and_run_once(start_worker, drill_queue):
    # Given a job submitted with a countdown of 2 hours
    job = submit("diagnostics.sleep", {"seconds": 0}, queue=drill_queue, countdown=7200)
    held = Job.objects.get(pk=job.pk)
    # Then no message is in the broker: the job is queued, unpublished, due in 2 hours
    assert (held.status, held.dispatched_at) == (Status.QUEUED, None)
    assert timedelta(hours=1, minutes=59) < held.next_retry_at - timezone.now() <= timedelta(hours=2)
    start_worker(drill_queue, **PRODUCTION_RECOVERY)
    # ... and a repair pass before it is due leaves it alone
    assert dispatch_undispatched(Pass()) == 0
    # When it is due within TERMINUS_BROKER_DELAY_MAX, the repair pass publishes it with the rest of its wait
    make_due(job)
    assert dispatch_undispatched(Pass()) == 1
    assert dispatch_undispatched(Pass()) == 0  # published once
    # Then it runs, once, when due (seconds from now, not the broker-delay cap)
    done = wait_terminal(job.pk, timeout=30)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 1)
    assert done.started_at >= Job.objects.filter(pk=job.pk).values_list("created_at", flat=True)[0]


def test_scheduled_for_through_the_api_is_held_until_it_is_due(alice):
    client = APIClient()
    client.force_authenticate(alice)
    when = timezone.now() + timedelta(days=29)
    body = {"type": "diagnostics.sleep", "payload": {}, "scheduled_for": when.isoformat()}
    response = client.post("/api/jobs/", body, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert (job.status, job.dispatched_at) == (Status.QUEUED, None)
    assert abs((job.next_retry_at - when).total_seconds()) <= 1
    assert job.terminal_by > when  # its deadline counts from when it is due


def test_a_retry_delay_longer_than_the_broker_delay_max_is_held_then_published_when_due(start_worker, drill_queue):
    # Given a worker whose retry backoff is 10 minutes, past TERMINUS_BROKER_DELAY_MAX (60 s)
    start_worker(
        drill_queue, TERMINUS_RETRY_BACKOFF_BASE="600", TERMINUS_RETRY_BACKOFF_MAX="600", **PRODUCTION_RECOVERY
    )
    job = submit("diagnostics.fail", {"mode": "times", "times": 1}, queue=drill_queue)
    # When its first attempt fails transiently
    retrying = wait_for(lambda: Job.objects.filter(pk=job.pk, status=Status.RETRYING).first(), what="the job retrying")
    # Then the retry is recorded with its due time and no message: the broker holds nothing for 10 minutes
    assert retrying.dispatched_at is None
    assert retrying.next_retry_at - timezone.now() > timedelta(minutes=4)
    assert publish_held_retries(Pass()) == 0
    # And once due, the repair pass publishes it and the second attempt succeeds
    Job.objects.filter(pk=job.pk).update(next_retry_at=Now())
    assert publish_held_retries(Pass()) == 1
    done = wait_terminal(job.pk, timeout=60)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 2)
