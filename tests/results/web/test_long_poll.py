"""Long polling: ``GET /api/jobs/{id}/?wait=N`` answers as soon as the job changes.

Held polls run in a thread (their own database connection, as in a web server thread) while
the test changes the job through its state machine on committed rows (transactional_db).
Timing is only used semantically: "answered before the wait ran out" and "held until it ran out".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from rest_framework.test import APIClient

from results.models import Job, Membership, Tenant
from tasks.submit.outbox import submit

LONG = 30  # a wait that a test never sits out: an answer before it means "answered on change"


@pytest.fixture
def ada(transactional_db: None) -> User:
    user = User.objects.create_user("ada")
    Membership.objects.create(user=user, tenant=Tenant.objects.create(name="acme"))
    return user


@pytest.fixture
def api(ada: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(ada)
    return client


@pytest.fixture
def running_job(ada: User, drill_queue: str) -> Job:
    # A queue no worker consumes: the shared worker of a full run must not touch this job.
    job = submit("diagnostics.sleep", {"seconds": 5}, owner=ada, tenant=ada.membership.tenant, queue=drill_queue)
    assert Job(pk=job.pk).mark_started(worker="w1@test")
    return Job.objects.get(pk=job.pk)


@pytest.fixture
def in_thread() -> Any:
    """Run a request in another thread, as a web server thread would; closes its DB connection."""
    pool = ThreadPoolExecutor(max_workers=2)

    def run(call: Callable[[], Any]) -> Future:
        def wrapped() -> Any:
            started = time.monotonic()
            try:
                return call(), time.monotonic() - started
            finally:
                connections.close_all()

        return pool.submit(wrapped)

    yield run
    pool.shutdown(wait=True)


def url(job: Job, query: str = "") -> str:
    return f"/api/jobs/{job.pk}/{query}"


def assert_error(response: Any, field: str) -> dict[str, Any]:
    assert response.status_code == 400, response.content
    body = response.json()
    assert set(body) == {"detail", "errors"}
    assert list(body["errors"]) == [field], body
    return body


def test_a_long_poll_answers_as_soon_as_the_job_changes(api, running_job, in_thread):
    # Given a client holding a long poll with the job's current ETag
    held = in_thread(lambda: api.get(url(running_job, f"?wait={LONG}"), HTTP_IF_NONE_MATCH=running_job.etag))
    time.sleep(1)
    assert not held.done()  # nothing changed yet: the server holds it
    # When the job changes (a heartbeat with progress)
    assert Job(pk=running_job.pk).heartbeat(progress=0.5)
    # Then the held poll answers with the new version, long before the wait runs out
    response, elapsed = held.result(timeout=LONG)
    assert response.status_code == 200
    assert response.json()["progress"] == 0.5
    assert response["ETag"] == Job.objects.get(pk=running_job.pk).etag != running_job.etag
    assert response["Retry-After"] == "1"
    assert elapsed < LONG - 5


def test_a_long_poll_without_an_etag_waits_for_a_change_from_the_version_at_request_time(api, running_job, in_thread):
    held = in_thread(lambda: api.get(url(running_job, f"?wait={LONG}")))
    time.sleep(1)
    assert not held.done()
    assert Job(pk=running_job.pk).mark_succeeded(result={"slept": 5})
    response, elapsed = held.result(timeout=LONG)
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["terminal"] is True
    assert "Retry-After" not in response
    assert elapsed < LONG - 5


def test_a_long_poll_with_no_change_answers_304_when_the_wait_runs_out(api, running_job):
    started = time.monotonic()
    response = api.get(url(running_job, "?wait=1"), HTTP_IF_NONE_MATCH=running_job.etag)
    assert time.monotonic() - started >= 0.9  # it was held for the wait
    assert response.status_code == 304
    assert response.content == b""
    assert response["ETag"] == running_job.etag
    assert response["Retry-After"] == "1"


def test_a_long_poll_with_no_change_and_no_etag_answers_200_with_the_job_when_the_wait_runs_out(api, running_job):
    started = time.monotonic()
    response = api.get(url(running_job, "?wait=1"))
    assert time.monotonic() - started >= 0.9
    assert response.status_code == 200
    assert response["ETag"] == running_job.etag
    assert response.json()["status"] == "running"


def test_a_long_poll_of_a_terminal_job_answers_at_once(api, running_job):
    Job(pk=running_job.pk).mark_failed(error_type="PermanentError", error_message="no")
    job = Job.objects.get(pk=running_job.pk)
    started = time.monotonic()
    fresh = api.get(url(job, f"?wait={LONG}"))
    unchanged = api.get(url(job, f"?wait={LONG}"), HTTP_IF_NONE_MATCH=job.etag)
    assert time.monotonic() - started < LONG - 5
    assert fresh.status_code == 200
    assert fresh.json()["status"] == "failed"
    assert unchanged.status_code == 304


def test_a_long_poll_with_a_stale_etag_answers_at_once_with_the_current_job(api, running_job):
    stale = running_job.etag
    assert Job(pk=running_job.pk).heartbeat(progress=0.25)
    started = time.monotonic()
    response = api.get(url(running_job, f"?wait={LONG}"), HTTP_IF_NONE_MATCH=stale)
    assert time.monotonic() - started < LONG - 5
    assert response.status_code == 200
    assert response.json()["progress"] == 0.25


def test_a_long_poll_of_a_job_deleted_while_held_answers_404(api, running_job, in_thread):
    held = in_thread(lambda: api.get(url(running_job, f"?wait={LONG}"), HTTP_IF_NONE_MATCH=running_job.etag))
    time.sleep(1)
    Job.objects.filter(pk=running_job.pk).delete()
    response, elapsed = held.result(timeout=LONG)
    assert response.status_code == 404
    assert response.json() == {"detail": f"No job {running_job.pk}.", "errors": {}}
    assert elapsed < LONG - 5


def test_a_wait_above_the_cap_counts_as_the_cap(api, running_job, settings):
    settings.TERMINUS_LONG_POLL_MAX = 1
    started = time.monotonic()
    response = api.get(url(running_job, "?wait=3600"), HTTP_IF_NONE_MATCH=running_job.etag)
    assert response.status_code == 304
    assert time.monotonic() - started < 60  # held for about the 1 s cap, not an hour


def test_a_cap_of_zero_turns_long_polling_off(api, running_job, settings):
    settings.TERMINUS_LONG_POLL_MAX = 0
    started = time.monotonic()
    response = api.get(url(running_job, f"?wait={LONG}"), HTTP_IF_NONE_MATCH=running_job.etag)
    assert response.status_code == 304
    assert time.monotonic() - started < LONG - 5


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", " ", "1e3", "٣", "30s", "0x10"])
def test_it_refuses_a_wait_that_is_not_a_whole_number_of_seconds_with_400(api, running_job, value):
    body = assert_error(api.get(url(running_job), {"wait": value}), "wait")
    assert body["errors"]["wait"] == [
        f"must be a whole number of seconds, 0 or more; above 60 counts as 60 (got {value!r})"
    ]
    assert "wait" in body["detail"]


def test_it_refuses_a_repeated_wait_and_unknown_query_parameters_with_400(api, running_job):
    assert assert_error(api.get(url(running_job, "?wait=1&wait=2")), "wait")["errors"]["wait"] == ["give wait once"]
    body = assert_error(api.get(url(running_job, "?wiat=30")), "wiat")
    assert body["errors"]["wiat"] == ["unknown query parameter; allowed: wait"]


def test_a_bad_wait_on_an_unknown_job_is_still_a_400_and_a_good_one_a_404(api):
    missing = "3f0c7a52-8d0e-4c4f-9a43-2f1d2b9b0a11"
    assert api.get(f"/api/jobs/{missing}/?wait=abc").status_code == 400
    started = time.monotonic()
    assert api.get(f"/api/jobs/{missing}/?wait={LONG}").status_code == 404
    assert time.monotonic() - started < LONG - 5


def test_the_schema_documents_the_wait_parameter(api):
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    parameters = schema["paths"]["/api/jobs/{id}/"]["get"]["parameters"]
    wait = next(parameter for parameter in parameters if parameter["name"] == "wait")
    assert wait["in"] == "query"
    assert "60" in wait["description"]
