"""A job type's Celery task called the Celery way (.delay, .apply_async) is a submission, or refused at the call."""

from __future__ import annotations

import pytest
from celery import chain, states

from results.models import Job, Status
from tasks.jobs.diagnostics import fail, sleep
from tasks.runtime.direct_calls import JobNotSucceeded, JobResult
from tasks.submit.validation import SubmissionError
from tests.helpers import wait_terminal


@pytest.mark.django_db(transaction=True)
def test_delay_records_the_job_then_runs_it_to_a_terminal_state(worker):
    # When a Django/Celery user calls .delay() on a job type's task
    result = sleep.delay(seconds=0)
    # Then the job is recorded (its id is the message's) and a worker runs it to the end
    assert isinstance(result, JobResult)
    assert result.id == str(result.job_id) == str(result.job.pk)
    done = wait_terminal(result.job_id)
    assert done.status == Status.SUCCEEDED and done.type == "diagnostics.sleep"
    assert result.get(timeout=30)["slept"] >= 0
    assert result.state == states.SUCCESS and result.successful()


@pytest.mark.django_db(transaction=True)
def test_apply_async_takes_a_queue_and_a_countdown_and_a_failure_reads_as_one(worker):
    result = fail.apply_async(kwargs={"mode": "permanent"}, queue="slow", countdown=0)
    done = wait_terminal(result.job_id)
    assert (done.status, done.queue) == (Status.FAILED, "slow")
    with pytest.raises(JobNotSucceeded, match="PermanentError"):
        result.get(timeout=30)
    assert result.state == states.FAILURE


@pytest.mark.django_db
def test_delay_validates_like_submit_and_records_nothing_when_refused():
    with pytest.raises(SubmissionError) as caught:
        sleep.delay(secs=5)
    assert "payload.secs" in caught.value.errors
    assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("call", "refusal"),
    [
        (lambda: sleep.delay(3), "keyword arguments"),
        (lambda: sleep.apply_async(kwargs={}, eta="2030-01-01T00:00:00Z"), "eta cannot be given"),
        (lambda: sleep.apply_async(kwargs={}, link=fail.s()), "link cannot be given"),
        (lambda: sleep.apply_async(kwargs={}, task_id="made-up"), "no job made-up is recorded"),
        (lambda: chain(sleep.s(seconds=0), sleep.s()).apply_async(), "is recorded"),
    ],
    ids=["positional", "eta", "link", "own-task-id", "chain"],
)
def test_what_a_submission_cannot_express_raises_at_the_call_naming_submit(call, refusal):
    with pytest.raises((TypeError, ValueError)) as caught:
        call()
    assert refusal in str(caught.value) and "submit(" in str(caught.value)
    assert Job.objects.count() == 0
