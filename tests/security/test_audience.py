"""Job types have an audience: a tenant user can neither see nor submit the worker-harming diagnostics.

Proved at the defaults (``TERMINUS_DIAGNOSTICS_AUDIENCE``: staff in development, nobody in production;
the rest of the suite opens them to everyone to drive its scenarios). A refused type is answered as an
unknown one, through every way a user submits (single, bulk, retry, the job-types list, the watch
page), and nothing is recorded.
"""

from __future__ import annotations

import pytest

from results.models import Job, Status
from tasks.runtime.types import Audience, get_job_type
from tasks.submit.outbox import submit
from tests.factories import client_for
from tests.security.helpers import assert_error_shape

JOBS = "/api/jobs/"
DIAGNOSTICS = ("diagnostics.sleep", "diagnostics.fail", "diagnostics.hooked")
HARMFUL = [
    {"type": "diagnostics.fail", "payload": {"mode": "crash"}},
    {"type": "diagnostics.sleep", "payload": {"leak_mb": 2048}},
    {"type": "diagnostics.sleep", "payload": {"seconds": 3600}},
]


@pytest.fixture(autouse=True)
def _development_default(settings):
    settings.TERMINUS_DIAGNOSTICS_AUDIENCE = "staff"


@pytest.mark.django_db
def test_a_tenant_user_is_not_offered_the_diagnostics_job_types(alice, make_user):
    listed = {row["name"] for row in client_for(alice).get("/api/job-types/").json()}
    assert listed and not listed & set(DIAGNOSTICS)
    assert {"webhook.deliver", "export.jobs"} <= listed
    staff_listed = {row["name"] for row in client_for(make_user("ops", staff=True)).get("/api/job-types/").json()}
    assert set(DIAGNOSTICS) <= staff_listed


@pytest.mark.django_db
@pytest.mark.parametrize("body", HARMFUL, ids=["crash", "leak", "hour-long-sleep"])
def test_a_tenant_users_diagnostics_submission_is_refused_as_an_unknown_type_and_not_recorded(alice, body):
    response = client_for(alice).post(JOBS, body, format="json")
    error = assert_error_shape(response, 400)
    assert "unknown job type" in error["errors"]["type"][0]
    assert "diagnostics" not in error["errors"]["type"][0].split("known types:")[1]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_bulk_submission_with_one_diagnostics_job_is_refused_whole(alice):
    response = client_for(alice).post(
        "/api/jobs/bulk/",
        {"jobs": [{"type": "webhook.deliver", "payload": {"url": "https://x.test"}}, HARMFUL[0]]},
        format="json",
    )
    assert "jobs.1.type" in assert_error_shape(response, 400)["errors"]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_tenant_user_cannot_rerun_a_diagnostics_job_either(alice):
    job = submit("diagnostics.fail", {"mode": "permanent"}, owner=alice, tenant=alice.membership.tenant)
    assert Job(pk=job.pk).mark_failed(error_type="PermanentError", error_message="x")
    response = client_for(alice).post(f"{JOBS}{job.pk}/retry/", {}, format="json")
    assert "unknown job type" in str(assert_error_shape(response, 409)["errors"])
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_staff_may_submit_diagnostics_and_production_turns_them_off_for_everyone(make_user, settings):
    staff = make_user("ops", staff=True)
    assert client_for(staff).post(JOBS, {"type": "diagnostics.sleep", "payload": {}}, format="json").status_code == 202
    settings.TERMINUS_DIAGNOSTICS_AUDIENCE = "nobody"  # the production default
    root = make_user("root", superuser=True)
    response = client_for(root).post(JOBS, {"type": "diagnostics.sleep", "payload": {}}, format="json")
    assert_error_shape(response, 400)
    assert Job.objects.filter(status=Status.QUEUED).count() == 1


def test_the_audience_rule():
    sleep = get_job_type("diagnostics.sleep")
    assert sleep is not None and callable(sleep.audience)
    assert get_job_type("webhook.deliver").audience == Audience.EVERYONE
