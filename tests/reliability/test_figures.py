"""The scenarios' own yardsticks: a figure that can never move proves nothing, so each is shown to move."""

from __future__ import annotations

import pytest

from results.models import AttemptOutcome, Job, Status
from tasks.runtime.types import get_job_type
from tasks.submit.outbox import submit
from tests.helpers import wait_for
from tests.reliability.helpers import late_finishes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]


def test_a_job_whose_body_runs_twice_counts_as_a_duplicate(start_worker, drill_queue):
    # Given a job that never heartbeats (so nothing stops a superseded run) running on a worker
    # with two pool children, and no duplicate so far
    start_worker(drill_queue, concurrency=2)
    job = submit("diagnostics.fail", {"mode": "sleep", "seconds": 1.5}, queue=drill_queue)
    wait_for(lambda: Job.objects.get(pk=job.pk).status == Status.RUNNING, what="the first run")
    assert late_finishes([job.pk]) == set()
    # When a second copy of its message arrives while it runs (the claim takes it as a redelivery)
    get_job_type("diagnostics.fail").task.apply_async(kwargs=job.payload, task_id=str(job.pk), queue=drill_queue)
    # Then both copies run to the end: the first (superseded: its success write is refused as stale)
    # is counted, and the job succeeds once, with the second attempt's outcome
    wait_for(lambda: late_finishes([job.pk]) == {str(job.pk)}, timeout=30, what="the first run's end")
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status=Status.SUCCEEDED).first(), what="the success")
    assert (done.status, done.attempts, done.lost_deliveries) == (Status.SUCCEEDED, 2, 1)
    assert [attempt.outcome for attempt in done.attempt_history()] == [AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED]
