"""Submitting: validation, idempotency, the deadline, and nothing lost when the broker is down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model

from results.models import Job, Status, Tenant
from tasks.runtime.types import get_job_type
from tasks.submit.actions import rerun
from tasks.submit.outbox import submit, submit_or_get
from tasks.submit.validation import PayloadTooLarge, SubmissionError
from tests.helpers import ROOT, test_database_url, wait_terminal


@pytest.mark.django_db
def test_an_unknown_type_is_refused_with_the_known_types_listed():
    with pytest.raises(SubmissionError) as caught:
        submit("nope.nothing", {})
    message = caught.value.errors["type"][0]
    assert "unknown job type 'nope.nothing'" in message
    assert "diagnostics.sleep" in message and "webhook.deliver" in message
    assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"seconds": -1}, "payload.seconds"),
        ({"seconds": "soon"}, "payload.seconds"),
        ([1, 2], "payload"),
    ],
)
def test_a_payload_that_fails_the_schema_is_refused_with_field_errors(payload, field):
    with pytest.raises(SubmissionError) as caught:
        submit("diagnostics.sleep", payload)
    assert field in caught.value.errors
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_an_oversized_payload_is_refused(settings):
    settings.TERMINUS_MAX_PAYLOAD_BYTES = 100
    with pytest.raises(PayloadTooLarge):
        submit("webhook.deliver", {"url": "http://127.0.0.1/", "body": {"x": "y" * 200}})


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"countdown": -1}, "countdown"),
        ({"countdown": 10**9}, "countdown"),
        ({"queue": "nowhere"}, "queue"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_bad_options_are_refused(options, field):
    with pytest.raises(SubmissionError) as caught:
        submit("diagnostics.sleep", {}, **options)
    assert field in caught.value.errors


@pytest.mark.django_db
def test_the_payload_is_stored_as_the_schema_normalised_it(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = submit("diagnostics.sleep", {"seconds": "1.5"})
    job.refresh_from_db()
    assert job.payload == {"seconds": 1.5, "heartbeat_every": 1.0, "leak_mb": 0}
    assert job.status == Status.QUEUED and job.dispatched_at is not None  # published on commit


@pytest.mark.django_db
def test_the_deadline_covers_the_queue_wait_every_attempt_and_the_backoff(settings):
    job_type = get_job_type("diagnostics.fail")
    job = submit("diagnostics.fail", {}, countdown=30)
    budget = (job.terminal_by - job.created_at).total_seconds()
    expected = (
        30
        + settings.TERMINUS_QUEUE_TIMEOUT
        + (job_type.retry.max_retries + 1) * job_type.time_limit
        + job_type.retry.worst_case_wait()
    )
    assert budget == pytest.approx(expected, abs=0.01)
    assert job.max_retries == job_type.retry.max_retries


@pytest.mark.django_db
def test_the_same_idempotency_key_returns_the_same_job_per_tenant():
    user = get_user_model().objects.create(username="a")
    acme, other = Tenant.objects.create(name="acme"), Tenant.objects.create(name="other")
    first, created = submit_or_get("diagnostics.sleep", {}, owner=user, tenant=acme, idempotency_key="k1")
    again, created_again = submit_or_get("diagnostics.sleep", {}, owner=user, tenant=acme, idempotency_key="k1")
    elsewhere, _ = submit_or_get("diagnostics.sleep", {}, tenant=other, idempotency_key="k1")
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk and elsewhere.pk != first.pk
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_only_failed_or_cancelled_jobs_can_be_run_again():
    job = submit("diagnostics.sleep", {})
    with pytest.raises(SubmissionError):
        rerun(job)
    Job.objects.filter(pk=job.pk).update(status=Status.FAILED)
    job.refresh_from_db()
    again = rerun(job)
    assert again.retry_of_id == job.pk and again.payload == job.payload and again.correlation_id == job.correlation_id


@pytest.mark.django_db(transaction=True)
def test_a_submit_while_the_broker_is_down_keeps_the_job_queued_and_undispatched():
    # Given a process whose broker is unreachable (a closed port, a real refused connection)
    env = {**os.environ, "DATABASE_URL": test_database_url(), "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    code = (
        "import time; from tasks.submit.outbox import submit; t=time.monotonic(); "
        "job = submit('diagnostics.sleep', {'seconds': 0}); print(job.pk, round(time.monotonic()-t, 2))"
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    # Then the caller still gets its job id, and the record waits to be dispatched again
    assert out.returncode == 0, out.stderr
    job_id, submit_seconds = out.stdout.split()
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.dispatched_at) == (Status.QUEUED, None)
    assert "not published" in out.stderr
    print(f"submit with broker down took {submit_seconds}s (process {elapsed:.1f}s)")
    assert float(submit_seconds) < 15


@pytest.mark.django_db(transaction=True)
def test_a_submitted_job_runs_to_a_terminal_state(worker):
    job = submit("diagnostics.sleep", {"seconds": 0}, correlation_id="req-123")
    done = wait_terminal(job.id)
    assert done.status == Status.SUCCEEDED and done.correlation_id == "req-123"
    assert done.terminal_by - done.finished_at > timedelta(0)
