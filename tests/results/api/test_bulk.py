"""POST /api/jobs/bulk/: many jobs in one request, all or nothing."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from results.models import Job, Membership, Status, Tenant
from tests.helpers import wait_terminal

URL = "/api/jobs/bulk/"


@pytest.fixture
def client(db) -> APIClient:
    user = get_user_model().objects.create(username="bulk")
    Membership.objects.create(user=user, tenant=Tenant.objects.create(name="acme"))
    api = APIClient()
    api.force_authenticate(user)
    return api


@pytest.mark.django_db(transaction=True)
def test_a_batch_is_recorded_published_and_run(worker):
    user = get_user_model().objects.create(username="bulk-run")
    api = APIClient()
    api.force_authenticate(user)
    items = [{"type": "diagnostics.sleep", "payload": {"seconds": 0}} for _ in range(20)]
    response = api.post(URL, {"jobs": items}, format="json", HTTP_X_CORRELATION_ID="batch-7")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["count"] == 20 and body["correlation_id"] == "batch-7"
    assert body["jobs"][0]["url"] == f"/api/jobs/{body['jobs'][0]['id']}/"
    for job in body["jobs"]:
        assert wait_terminal(job["id"]).status == Status.SUCCEEDED
    assert Job.objects.filter(dispatched_at__isnull=True).count() == 0
    assert set(Job.objects.values_list("correlation_id", flat=True)) == {"batch-7"}


def test_one_bad_item_refuses_the_whole_batch_with_indexed_errors(client):
    items = [
        {"type": "diagnostics.sleep", "payload": {}},
        {"type": "diagnostics.sleep", "payload": {"seconds": -1}},
        {"type": "nope", "payload": {}},
        {"type": "diagnostics.sleep", "payload": {}, "idempotency_key": "x"},
        {"type": "diagnostics.sleep", "payload": {}, "countdown": -5},
    ]
    response = client.post(URL, {"jobs": items}, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"jobs.1.payload.seconds", "jobs.2.type", "jobs.3.idempotency_key", "jobs.4.countdown"}
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [({"jobs": []}, "jobs"), ({"jobs": "many"}, "jobs"), ({}, "jobs"), ({"jobs": [1]}, "jobs.0"), ({"job": []}, "job")],
)
def test_a_malformed_batch_is_a_clear_400(client, body, field):
    response = client.post(URL, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_a_batch_over_the_limit_is_refused(client, settings):
    settings.TERMINUS_MAX_BULK = 3
    response = client.post(URL, {"jobs": [{"type": "diagnostics.sleep", "payload": {}}] * 4}, format="json")
    assert response.status_code == 400
    assert "at most 3 jobs" in response.json()["errors"]["jobs"][0]


def test_bulk_submit_needs_authentication(db):
    assert APIClient().post(URL, {"jobs": []}, format="json").status_code == 401
