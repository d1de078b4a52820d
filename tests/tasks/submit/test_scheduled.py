"""Scheduled jobs: ``countdown`` or ``scheduled_for`` up to TERMINUS_MAX_SCHEDULE_DAYS, on the API, bulk
items and submit(); the job is recorded at once, queued, its due time visible, and it runs when due."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.utils import display_for_field
from django.utils import timezone
from rest_framework.test import APIClient

from results.models import Job, Status
from tasks.submit.outbox import submit
from tasks.submit.validation import SubmissionError
from tests.helpers import wait_terminal

pytestmark = pytest.mark.django_db


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_submit_takes_scheduled_for_and_records_the_job_queued_with_its_due_time():
    when = timezone.now() + timedelta(days=3)
    job = Job.objects.get(pk=submit("diagnostics.sleep", {}, scheduled_for=when).pk)
    assert (job.status, job.dispatched_at) == (Status.QUEUED, None)  # held: nothing waits in the broker
    assert abs((job.next_retry_at - when).total_seconds()) <= 1
    assert job.terminal_by > when


def test_a_short_countdown_is_published_at_once_and_its_due_time_is_still_shown(alice):
    response = api(alice).post(
        "/api/jobs/", {"type": "diagnostics.sleep", "payload": {}, "countdown": 20}, format="json"
    )
    assert response.status_code == 202, response.content
    body = response.json()
    due = Job.objects.get(pk=body["id"]).next_retry_at
    assert body["status"] == Status.QUEUED and body["scheduled_for"] is not None
    assert 19 <= (due - timezone.now()).total_seconds() <= 20


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"scheduled_for": timezone.now() + timedelta(days=31)}, "scheduled_for"),
        ({"scheduled_for": "next tuesday"}, "scheduled_for"),
        ({"scheduled_for": "2030-01-01T03:00:00"}, "scheduled_for"),  # no time zone
        ({"countdown": 31 * 86400}, "countdown"),
        ({"countdown": 5, "scheduled_for": timezone.now()}, "scheduled_for"),
    ],
    ids=["past-the-limit", "not-a-date", "naive", "countdown-past-the-limit", "both"],
)
def test_a_bad_schedule_is_refused_naming_the_field(options, field):
    with pytest.raises(SubmissionError) as caught:
        submit("diagnostics.sleep", {}, **options)
    assert list(caught.value.errors) == [field]
    assert Job.objects.count() == 0


def test_the_limit_is_terminus_max_schedule_days(settings):
    settings.TERMINUS_MAX_SCHEDULE_DAYS = 1
    with pytest.raises(SubmissionError) as caught:
        submit("diagnostics.sleep", {}, countdown=86400 + 1)
    assert "1 days" in caught.value.errors["countdown"][0]
    assert submit("diagnostics.sleep", {}, countdown=86400).status == Status.QUEUED


def test_bulk_items_take_scheduled_for_and_each_shows_its_due_time(alice):
    when = timezone.now() + timedelta(hours=5)
    jobs = [
        {"type": "diagnostics.sleep", "payload": {}, "scheduled_for": when.isoformat()},
        {"type": "diagnostics.sleep", "payload": {}},
        {"type": "diagnostics.sleep", "payload": {}, "scheduled_for": "soon"},
    ]
    refused = api(alice).post("/api/jobs/bulk/", {"jobs": jobs}, format="json")
    assert refused.status_code == 400 and set(refused.json()["errors"]) == {"jobs.2.scheduled_for"}
    accepted = api(alice).post("/api/jobs/bulk/", {"jobs": jobs[:2]}, format="json")
    assert accepted.status_code == 202, accepted.content
    first, second = (api(alice).get(f"/api/jobs/{item['id']}/").json() for item in accepted.json()["jobs"])
    assert first["status"] == Status.QUEUED and first["dispatched_at"] is None
    assert abs((timezone.datetime.fromisoformat(first["scheduled_for"]) - when).total_seconds()) <= 1
    assert second["scheduled_for"] is None


def test_the_admin_change_page_shows_the_due_time(admin_client):
    job = Job.objects.get(pk=submit("diagnostics.sleep", {}, countdown=7200).pk)
    page = admin_client.get(f"/admin/results/job/{job.pk}/change/").content.decode()
    assert "Next retry at" in page
    assert display_for_field(job.next_retry_at, Job._meta.get_field("next_retry_at"), "-") in page


@pytest.mark.django_db(transaction=True)
def test_a_job_scheduled_in_the_past_runs_at_once(worker):
    job = submit("diagnostics.sleep", {"seconds": 0}, scheduled_for=timezone.now() - timedelta(minutes=5))
    assert wait_terminal(job.pk).status == Status.SUCCEEDED
