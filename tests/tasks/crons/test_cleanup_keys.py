"""Idempotency keys outlive their job: after the cleanup deleted it, the key stays reserved for
TERMINUS_IDEMPOTENCY_KEY_DAYS and a resubmission is refused (409, naming the job), never run again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from results.models import Job, RetiredKey, Status
from tasks.crons.cleanup import run_cleanup
from tasks.submit.outbox import submit_or_get

pytestmark = pytest.mark.django_db(transaction=True)


def post(client: APIClient, key: str) -> tuple[int, dict]:
    body = {"type": "diagnostics.sleep", "payload": {"seconds": 0}, "idempotency_key": key, "countdown": 3600}
    response = client.post("/api/jobs/", body, format="json")
    return response.status_code, response.json()


def test_a_key_whose_job_was_cleaned_up_is_refused_for_its_reserve_then_free_again(alice, bob):
    client = APIClient()
    client.force_authenticate(alice)
    # Given a keyed job that ended 8 days ago (past the 7 days succeeded jobs are kept)
    status, first = post(client, "order-42")
    assert status == 202
    Job.objects.filter(pk=first["id"]).update(status=Status.SUCCEEDED, finished_at=timezone.now() - timedelta(days=8))
    # When the cleanup deletes it
    report = run_cleanup()
    assert report["deleted"]["keys_retired"] == 1 and report["deleted"]["jobs_succeeded"] >= 1
    assert not Job.objects.filter(pk=first["id"]).exists()
    # Then the same key is refused with 409 naming the job it submitted, and nothing is recorded
    status, body = post(client, "order-42")
    assert status == 409
    assert first["id"] in body["errors"]["idempotency_key"][0] and "succeeded" in body["errors"]["idempotency_key"][0]
    assert not Job.objects.filter(idempotency_key="order-42").exists()
    # ... for that user's scope only: another user's same key is theirs
    other = APIClient()
    other.force_authenticate(bob)
    assert post(other, "order-42")[0] == 202
    # And once TERMINUS_IDEMPOTENCY_KEY_DAYS have passed, the cleanup frees it and it submits again
    RetiredKey.objects.update(retired_at=timezone.now() - timedelta(days=31))
    assert run_cleanup()["deleted"]["retired_keys"] == 1
    assert post(client, "order-42")[0] == 202


def test_a_second_cleanup_run_retires_nothing_twice():
    job, _ = submit_or_get("diagnostics.sleep", {"seconds": 0}, idempotency_key="nightly-7", countdown=3600)
    Job.objects.filter(pk=job.pk).update(status=Status.CANCELLED, finished_at=timezone.now() - timedelta(days=8))
    # An earlier run retired the key and stopped before deleting the job (its time budget ran out)
    RetiredKey.objects.create(key="nightly-7", job_id=job.pk, job_status=Status.CANCELLED)
    report = run_cleanup()
    assert report["deleted"]["jobs_cancelled"] == 1 and report["deleted"]["keys_retired"] == 0
    assert RetiredKey.objects.filter(key="nightly-7").count() == 1
