"""A payload field the job type does not declare is a 400 naming it, on every face that submits."""

from __future__ import annotations

import pytest

from results.models import Job
from tests.factories import client_for, dead_letter_of, job_for


@pytest.mark.django_db
def test_a_submission_with_an_unknown_payload_field_is_a_400_naming_it(alice):
    response = client_for(alice).post(
        "/api/jobs/", {"type": "diagnostics.sleep", "payload": {"secs": 5}}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["errors"] == {
        "payload.secs": ["unknown field; diagnostics.sleep takes: seconds, heartbeat_every, leak_mb"]
    }
    assert "payload.secs" in body["detail"]
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_a_bulk_item_with_an_unknown_payload_field_refuses_the_batch(alice):
    jobs = [{"type": "diagnostics.sleep", "payload": {}}, {"type": "diagnostics.sleep", "payload": {"secs": 5}}]
    response = client_for(alice).post("/api/jobs/bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["jobs.1.payload.secs"]
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_a_replay_with_an_unknown_payload_field_is_a_400_naming_it(alice):
    letter = dead_letter_of(job_for(alice, "diagnostics.fail", {"mode": "permanent"}))
    response = client_for(alice).post(
        f"/api/dead-letters/{letter.pk}/replay/", {"payload": {"mode": "permanent", "tmes": 2}}, format="json"
    )
    assert response.status_code == 400
    assert "payload.tmes" in response.json()["errors"]
