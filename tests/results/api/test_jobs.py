"""The jobs API over HTTP (DRF's APIClient, token auth), on the real database and broker.

Jobs are put in a given state through the record's own state machine (results.models.Job), not
by writing statuses by hand; the end-to-end test at the bottom runs a real worker process.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from project.celery import app as celery_app
from results.api.pagination import JobCursorPagination
from results.models import AttemptOutcome, Job, Status
from tasks.runtime.types import job_types
from tests.factories import client_for, job_for
from tests.helpers import wait_for

JOBS = "/api/jobs/"
CLOSED_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


def detail_url(job: Job | str) -> str:
    return f"{JOBS}{getattr(job, 'pk', job)}/"


def assert_error(response: Any, status: int, *fields: str) -> dict[str, Any]:
    """The response has ``status`` and the API's one error shape, naming exactly ``fields``."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    assert isinstance(body["errors"], dict), body
    assert sorted(body["errors"]) == sorted(fields), body
    for messages in body["errors"].values():
        assert messages, body
        assert all(isinstance(message, str) and message for message in messages), body
    return body


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def api(alice: User) -> APIClient:
    """Alice's client."""
    return client_for(alice)


def failed_job(user: User, *, traceback: str = "Traceback (most recent call last):\n  secret internals") -> Job:
    job = job_for(user, "diagnostics.fail", {"mode": "permanent"})
    assert Job(pk=job.pk).mark_started(worker="w1@test")
    assert Job(pk=job.pk).mark_failed(error_type="PermanentError", error_message="bad input", traceback=traceback)
    return Job.objects.get(pk=job.pk)


def succeeded_job(user: User) -> Job:
    job = job_for(user)
    assert Job(pk=job.pk).mark_started(worker="w1@test")
    assert Job(pk=job.pk).mark_succeeded(result={"slept": 0.0})
    return Job.objects.get(pk=job.pk)


# -- submit ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_accepts_a_submission_with_202_and_publishes_it_after_commit(
    api, alice, drill_queue, django_capture_on_commit_callbacks
):
    # Given a valid submission to a queue no worker consumes (the message just waits there)
    body = {"type": "diagnostics.sleep", "payload": {"seconds": 2}, "queue": drill_queue, "countdown": 5}
    # When it is posted and the transaction commits
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post(JOBS, body, format="json")
    # Then the answer is 202 with the job, a Location and a generated correlation id
    assert response.status_code == 202, response.content
    data = response.json()
    job = Job.objects.get(pk=data["id"])
    assert response["Location"] == f"http://testserver{detail_url(job)}"
    assert response["X-Correlation-ID"] == job.correlation_id == data["correlation_id"]
    assert len(job.correlation_id) == 32
    assert (data["type"], data["queue"], data["status"], data["terminal"]) == (
        "diagnostics.sleep",
        drill_queue,
        "queued",
        False,
    )
    assert (data["attempts"], data["attempt"], data["max_retries"]) == (0, 0, job.max_retries)
    assert data["max_attempts"] == job.max_retries + 1
    assert data["retry_of"] is None
    assert data["idempotency_key"] is None
    assert data["traceback"] is None
    assert data["attempt_history"] == []
    assert response["Retry-After"] == "1"
    assert response["ETag"] == f'"{job.pk}-1"'
    assert job.version == 1  # recorded as dispatched: publishing wrote nothing more
    expected = {
        "id",
        "type",
        "queue",
        "status",
        "terminal",
        "attempts",
        "max_retries",
        "attempt",
        "max_attempts",
        "next_retry_at",
        "scheduled_for",
        "heartbeat_at",
        "terminal_by",
        "progress",
        "progress_message",
        "result",
        "error_type",
        "error_message",
        "traceback",
        "worker",
        "correlation_id",
        "idempotency_key",
        "retry_of",
        "created_at",
        "dispatched_at",
        "started_at",
        "finished_at",
        "attempt_history",
    }
    assert set(data) == expected
    # and the record belongs to Alice's tenant and was published once committed
    assert job.owner == alice
    assert job.tenant.name == "acme"
    assert job.payload == {"seconds": 2.0, "heartbeat_every": 1.0, "leak_mb": 0}
    assert len(callbacks) == 1
    assert job.dispatched_at is not None
    assert job.status == Status.QUEUED


@pytest.mark.django_db
def test_it_echoes_the_clients_correlation_id(api):
    response = api.post(
        JOBS, {"type": "diagnostics.sleep", "payload": {}}, format="json", HTTP_X_CORRELATION_ID="req-42 abc"
    )
    assert response.status_code == 202
    assert response["X-Correlation-ID"] == "req-42 abc"
    assert Job.objects.get(pk=response.json()["id"]).correlation_id == "req-42 abc"


@pytest.mark.parametrize("value", ["x" * 101, "caf\u00e9", "tab\there"])
@pytest.mark.django_db
def test_it_refuses_an_invalid_correlation_id(api, value):
    response = api.post(JOBS, {"type": "diagnostics.sleep", "payload": {}}, format="json", HTTP_X_CORRELATION_ID=value)
    assert_error(response, 400, "X-Correlation-ID")
    assert "X-Correlation-ID" not in response
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_it_echoes_the_correlation_id_on_an_error_too(api):
    response = api.post(JOBS, {"type": "nope", "payload": {}}, format="json", HTTP_X_CORRELATION_ID="req-43")
    assert_error(response, 400, "type")
    assert response["X-Correlation-ID"] == "req-43"


@pytest.mark.django_db
def test_it_returns_the_same_job_with_200_for_a_repeated_idempotency_key(api, carol):
    body = {"type": "diagnostics.sleep", "payload": {"seconds": 1}, "idempotency_key": "order-7"}
    first = api.post(JOBS, body, format="json")
    again = api.post(JOBS, body, format="json")
    # a colleague in the same tenant using the same key gets the same job too
    colleague = client_for(carol).post(JOBS, body, format="json")
    assert first.status_code == 202
    assert again.status_code == 200
    assert colleague.status_code == 200
    assert first.json()["id"] == again.json()["id"] == colleague.json()["id"]
    assert again.json()["idempotency_key"] == "order-7"
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_it_keeps_idempotency_keys_apart_between_tenants(api, bob, make_user):
    body = {"type": "diagnostics.sleep", "payload": {}, "idempotency_key": "same-key"}
    mine = api.post(JOBS, body, format="json")
    theirs = client_for(bob).post(JOBS, body, format="json")
    loner = client_for(make_user("dave")).post(JOBS, body, format="json")  # no tenant: scoped to the user
    assert (mine.status_code, theirs.status_code, loner.status_code) == (202, 202, 202)
    assert len({mine.json()["id"], theirs.json()["id"], loner.json()["id"]}) == 3
    assert Job.objects.filter(idempotency_key="same-key").count() == 3


@pytest.mark.django_db
def test_it_still_accepts_a_job_when_the_broker_is_down(api, django_capture_on_commit_callbacks):
    # Given a producer that talks to a closed port (the app's pools are rebuilt to use it)
    saved = celery_app._pool, celery_app.amqp._producer_pool, celery_app.conf.get("broker_write_url")
    celery_app.conf.broker_write_url = CLOSED_BROKER_URL
    celery_app._pool = celery_app.amqp._producer_pool = None
    try:
        producer_connection = celery_app.connection_for_write()
        assert (producer_connection.hostname, producer_connection.port) == ("127.0.0.1", 1)
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            response = api.post(JOBS, {"type": "diagnostics.sleep", "payload": {}}, format="json")
        elapsed = time.monotonic() - started
    finally:
        celery_app.conf.broker_write_url = saved[2]
        celery_app._pool, celery_app.amqp._producer_pool = saved[0], saved[1]
    # Then the client still gets 202 with the id, and the record waits, queued and undispatched
    print(f"submit with the broker down took {elapsed:.2f}s")
    assert response.status_code == 202, response.content
    assert len(callbacks) == 1  # the publish was attempted (and failed) after commit
    job = Job.objects.get(pk=response.json()["id"])
    assert job.status == Status.QUEUED
    assert job.dispatched_at is None
    assert Job.objects.undispatched().filter(pk=job.pk).exists()
    assert elapsed < 5, f"a submit with the broker down took {elapsed:.1f}s"
    assert celery_app.connection_for_write().port != 1  # restored for the tests that follow


# -- bad input ---------------------------------------------------------------------------------
BAD_SUBMISSIONS = [
    pytest.param({"type": "no.such.type", "payload": {}}, 400, ["type"], id="unknown-type"),
    pytest.param({"type": "diagnostics.sleep", "payload": {"seconds": -1}}, 400, ["payload.seconds"], id="schema"),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {"seconds": "x"}}, 400, ["payload.seconds"], id="schema-type"
    ),
    pytest.param({"type": "diagnostics.sleep", "payload": [1, 2]}, 400, ["payload"], id="payload-not-object"),
    pytest.param({"type": "diagnostics.sleep", "payload": None}, 400, ["payload"], id="payload-null"),
    pytest.param({"type": "diagnostics.sleep"}, 400, ["payload"], id="payload-missing"),
    pytest.param({"payload": {}}, 400, ["type"], id="type-missing"),
    pytest.param({"type": 5, "payload": {}}, 400, ["type"], id="type-not-string"),
    pytest.param({"type": "x" * 101, "payload": {}}, 400, ["type"], id="type-too-long"),
    pytest.param({"type": "diagnostics.sleep", "payload": {}, "countdown": -1}, 400, ["countdown"], id="countdown-neg"),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "countdown": 10**9}, 400, ["countdown"], id="countdown-too-large"
    ),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "countdown": "abc"}, 400, ["countdown"], id="countdown-abc"
    ),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "countdown": 1.5}, 400, ["countdown"], id="countdown-float"
    ),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "scheduled_for": "tomorrow"},
        400,
        ["scheduled_for"],
        id="scheduled-for-not-a-time",
    ),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "scheduled_for": "2999-01-01T00:00:00Z"},
        400,
        ["scheduled_for"],
        id="scheduled-for-too-far",
    ),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "scheduled_for": "2030-01-01T00:00:00Z", "countdown": 5},
        400,
        ["scheduled_for"],
        id="scheduled-for-and-countdown",
    ),
    pytest.param({"type": "diagnostics.sleep", "payload": {}, "queue": "nope"}, 400, ["queue"], id="unknown-queue"),
    pytest.param({"type": "diagnostics.sleep", "payload": {}, "queue": 3}, 400, ["queue"], id="queue-not-string"),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "idempotency_key": ""}, 400, ["idempotency_key"], id="key-blank"
    ),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "idempotency_key": "k" * 256},
        400,
        ["idempotency_key"],
        id="key-long",
    ),
    pytest.param({"type": "diagnostics.sleep", "payload": {}, "paylod": {}}, 400, ["paylod"], id="unknown-field"),
    pytest.param({"type": "diagnostics.fail", "payload": {"message": "a\x00b"}}, 400, ["payload"], id="payload-nul"),
    pytest.param(
        {"type": "webhook.deliver", "payload": {"url": "http://x.test", "body": {"k\x00": 1}}},
        400,
        ["payload"],
        id="payload-key-nul",
    ),
    pytest.param(
        {"type": "diagnostics.sleep", "payload": {}, "idempotency_key": "a\x00"}, 400, ["idempotency_key"], id="key-nul"
    ),
    pytest.param([{"type": "diagnostics.sleep"}], 400, ["body"], id="body-is-a-list"),
    pytest.param("just a string", 400, ["body"], id="body-is-a-string"),
]


@pytest.mark.parametrize(("body", "status", "fields"), BAD_SUBMISSIONS)
@pytest.mark.django_db
def test_it_refuses_bad_submissions_with_field_errors(api, body, status, fields):
    response = api.post(JOBS, body, format="json")
    assert_error(response, status, *fields)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_the_unknown_type_error_lists_the_known_types(api):
    body = assert_error(api.post(JOBS, {"type": "nope", "payload": {}}, format="json"), 400, "type")
    for name in job_types():
        assert name in body["errors"]["type"][0]
    assert "type:" in body["detail"]


@pytest.mark.django_db
def test_it_refuses_malformed_json_with_a_clear_message(api):
    response = api.post(JOBS, '{"type": "diagnostics.sleep", ', content_type="application/json")
    body = assert_error(response, 400, "body")
    assert "JSON parse error" in body["detail"]


@pytest.mark.parametrize(("depth", "field"), [(101, "payload"), (100_000, "body")])
@pytest.mark.django_db
def test_it_refuses_deeply_nested_json_with_400(api, depth, field):
    # 100 000 levels overflow the JSON parser itself; 101 would overflow nothing here, but is refused
    # before any encoder on the way to the worker can hit its recursion limit
    nested = "[" * depth + "]" * depth
    body = f'{{"type": "webhook.deliver", "payload": {{"url": "http://x.test", "body": {nested}}}}}'
    assert_error(api.post(JOBS, body, content_type="application/json"), 400, field)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_it_refuses_a_body_that_is_not_json_with_415(api):
    response = api.post(JOBS, {"type": "diagnostics.sleep"}, format="multipart")
    assert_error(response, 415)


@pytest.mark.django_db
def test_it_refuses_an_oversized_payload_with_413(api, settings):
    settings.TERMINUS_MAX_PAYLOAD_BYTES = 1000
    body = {"type": "diagnostics.fail", "payload": {"message": "x" * 1000}}
    response = api.post(JOBS, body, format="json")
    result = assert_error(response, 413, "payload")
    assert "limit is 1000" in result["errors"]["payload"][0]


@pytest.mark.django_db
def test_it_refuses_a_request_body_over_the_upload_limit_with_413(api):
    limit = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"type": "diagnostics.sleep", "payload": {"pad": "x" * limit}})
    response = api.post(JOBS, body, content_type="application/json")
    assert_error(response, 413, "body")
    assert not Job.objects.exists()


# -- poll --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_shows_a_running_job_as_attempt_k_of_n_with_retry_after(api, alice):
    job = job_for(alice)
    assert Job(pk=job.pk).mark_started(worker="w1@test")
    Job(pk=job.pk).heartbeat(progress=0.25, message="a quarter")
    response = api.get(detail_url(job))
    assert response.status_code == 200
    data = response.json()
    job.refresh_from_db()
    assert (data["status"], data["terminal"], data["attempt"], data["max_attempts"]) == (
        "running",
        False,
        1,
        job.max_retries + 1,
    )
    assert (data["progress"], data["progress_message"], data["worker"]) == (0.25, "a quarter", "w1@test")
    assert data["started_at"]
    assert data["heartbeat_at"]
    assert data["terminal_by"]
    assert data["finished_at"] is None
    assert response["Retry-After"] == "1"
    assert response["ETag"] == job.etag
    [attempt] = data["attempt_history"]
    assert attempt["number"] == 1
    assert attempt["outcome"] == AttemptOutcome.RUNNING
    assert attempt["worker"] == "w1@test"
    assert set(attempt) == {"number", "worker", "started_at", "finished_at", "outcome", "error_type", "error_message"}


@pytest.mark.parametrize(("due_in", "expected"), [(timedelta(seconds=10), {9, 10}), (timedelta(hours=1), {30})])
@pytest.mark.django_db
def test_retry_after_counts_down_to_the_next_retry_capped_at_30_seconds(api, alice, due_in, expected):
    job = job_for(alice, "diagnostics.fail")
    assert Job(pk=job.pk).mark_started(worker="w1@test")
    Job(pk=job.pk).mark_retrying(
        error_type="TransientError", error_message="later", next_retry_at=timezone.now() + due_in
    )
    response = api.get(detail_url(job))
    assert response.json()["status"] == "retrying"
    assert response.json()["next_retry_at"]
    assert int(response["Retry-After"]) in expected
    assert response.json()["attempt_history"][0]["outcome"] == AttemptOutcome.RETRIED


@pytest.mark.django_db
def test_it_sends_no_retry_after_once_the_job_is_terminal(api, alice):
    job = succeeded_job(alice)
    response = api.get(detail_url(job))
    assert response.status_code == 200
    assert response.json()["terminal"] is True
    assert response.json()["result"] == {"slept": 0.0}
    assert "Retry-After" not in response
    assert response["ETag"] == job.etag


@pytest.mark.django_db
def test_it_answers_304_while_the_etag_is_current_and_200_after_a_change(api, alice):
    job = job_for(alice)
    Job(pk=job.pk).mark_started(worker="w1@test")
    etag = api.get(detail_url(job))["ETag"]
    unchanged = api.get(detail_url(job), HTTP_IF_NONE_MATCH=etag)
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged["ETag"] == etag
    assert unchanged["Retry-After"] == "1"
    # a heartbeat bumps the version: the next conditional poll gets the new representation
    Job(pk=job.pk).heartbeat(progress=0.5)
    changed = api.get(detail_url(job), HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed.json()["progress"] == 0.5
    assert changed["ETag"] != etag
    assert changed["ETag"] == Job.objects.get(pk=job.pk).etag


@pytest.mark.django_db
def test_it_returns_404_for_an_unknown_job(api):
    body = assert_error(api.get(detail_url(uuid.uuid4())), 404)
    assert "No job" in body["detail"]


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "12345", "0" * 40])
@pytest.mark.django_db
def test_it_returns_404_for_a_malformed_job_id(api, bad_id):
    assert_error(api.get(detail_url(bad_id)), 404)
    assert_error(api.post(f"{detail_url(bad_id)}cancel/"), 404)
    assert_error(api.post(f"{detail_url(bad_id)}retry/"), 404)


# -- tenants and staff -------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_user_sees_its_tenants_jobs_and_gets_404_for_another_tenants(api, alice, carol, bob):
    colleague_job = job_for(carol)
    foreign_failed = failed_job(bob)
    foreign_queued = job_for(bob)
    assert api.get(detail_url(colleague_job)).status_code == 200
    assert_error(api.get(detail_url(foreign_queued)), 404)
    assert_error(api.post(f"{detail_url(foreign_queued)}cancel/"), 404)
    assert_error(api.post(f"{detail_url(foreign_failed)}retry/"), 404)
    listed = {row["id"] for row in api.get(JOBS).json()["results"]}
    assert listed == {str(colleague_job.pk)}
    # nothing happened to Bob's jobs
    assert Job.objects.get(pk=foreign_queued.pk).status == Status.QUEUED
    assert not Job.objects.filter(retry_of=foreign_failed).exists()


@pytest.mark.django_db
def test_a_user_without_a_tenant_sees_only_its_own_jobs(make_user, alice):
    loner = make_user("dave")
    own = job_for(loner)
    job_for(alice)
    job_for(make_user("erin"))
    client = client_for(loner)
    assert [row["id"] for row in client.get(JOBS).json()["results"]] == [str(own.pk)]


@pytest.mark.django_db
def test_staff_see_every_tenants_jobs_with_tracebacks(staff, alice, bob):
    failed = failed_job(alice)
    other = job_for(bob)
    client = client_for(staff)
    listed = client.get(JOBS).json()["results"]
    assert {row["id"] for row in listed} == {str(failed.pk), str(other.pk)}
    assert next(row for row in listed if row["id"] == str(failed.pk))["traceback"].startswith("Traceback")
    detail = client.get(detail_url(failed)).json()
    assert "secret internals" in detail["traceback"]
    assert client.get(detail_url(other)).status_code == 200


@pytest.mark.django_db
def test_non_staff_never_get_a_traceback(api, alice):
    failed = failed_job(alice)
    detail = api.get(detail_url(failed))
    assert detail.json()["traceback"] is None
    assert (detail.json()["error_type"], detail.json()["error_message"]) == ("PermanentError", "bad input")
    assert api.get(JOBS).json()["results"][0]["traceback"] is None
    assert b"secret internals" not in detail.content + api.get(JOBS).content


# -- list --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_filters_the_list_by_status_type_and_creation_time(api, alice):
    sleeper = job_for(alice)
    failed = failed_job(alice)
    done = succeeded_job(alice)
    old = job_for(alice, "diagnostics.fail")
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))

    def ids(**params: str) -> set[str]:
        response = api.get(JOBS, params)
        assert response.status_code == 200, response.content
        return {row["id"] for row in response.json()["results"]}

    assert ids(status="failed") == {str(failed.pk)}
    assert ids(status="failed,succeeded") == {str(failed.pk), str(done.pk)}
    assert ids(type="diagnostics.fail") == {str(failed.pk), str(old.pk)}
    assert ids(type="diagnostics.fail", status="queued") == {str(old.pk)}
    cutoff = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(created_before=cutoff) == {str(old.pk)}
    assert ids(created_after=cutoff) == {str(sleeper.pk), str(failed.pk), str(done.pk)}
    repeated = api.get(f"{JOBS}?status=queued&status=failed").json()["results"]
    assert {row["id"] for row in repeated} == {str(sleeper.pk), str(failed.pk), str(old.pk)}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=finished", "status"),
        ("status=queued,bogus", "status"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2024-13-45T00:00:00Z", "created_before"),
        ("created_after=2025-01-02T00:00:00Z&created_before=2025-01-01T00:00:00Z", "created_before"),
        ("stauts=failed", "stauts"),
        ("page_size=0", "page_size"),
        ("page_size=many", "page_size"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=cD0yMDI0", "cursor"),  # a forged, well-formed cursor: position "2024" is not a datetime
    ],
)
@pytest.mark.django_db
def test_it_refuses_invalid_list_filters_with_400(api, alice, query, field):
    job_for(alice)
    body = assert_error(api.get(f"{JOBS}?{query}"), 400, field)
    assert field in body["detail"]


@pytest.mark.django_db
def test_it_pages_through_the_list_newest_first_with_a_cursor(api, alice, carol):
    now = timezone.now()
    made = [job_for(alice if n % 2 else carol) for n in range(7)]
    for age, job in enumerate(made):  # made[0] is the newest
        Job.objects.filter(pk=job.pk).update(created_at=now - timedelta(minutes=age))
    # two jobs share one creation time: the cursor must neither skip nor repeat either
    Job.objects.filter(pk=made[4].pk).update(created_at=now - timedelta(minutes=3))
    seen: list[str] = []
    url: str | None = f"{JOBS}?page_size=3"
    pages = 0
    while url:
        response = api.get(url)
        assert response.status_code == 200
        page = response.json()
        assert set(page) == {"next", "previous", "results"}
        assert len(page["results"]) <= 3
        seen += [row["id"] for row in page["results"]]
        url, pages = page["next"], pages + 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == {str(job.pk) for job in made}
    assert seen[:3] == [str(job.pk) for job in made[:3]]
    assert "attempt_history" not in response.json()["results"][0]


def test_the_page_size_defaults_to_50_and_is_capped_at_500():
    factory = APIRequestFactory()
    paginator = JobCursorPagination()
    assert paginator.get_page_size(Request(factory.get(JOBS))) == 50
    assert paginator.get_page_size(Request(factory.get(JOBS, {"page_size": "7"}))) == 7
    assert paginator.get_page_size(Request(factory.get(JOBS, {"page_size": "100000"}))) == 500


@pytest.mark.django_db
def test_the_list_costs_the_same_number_of_queries_for_2_or_20_jobs(api, alice):
    def list_queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            response = api.get(JOBS)
        assert response.status_code == 200
        return len(response.json()["results"]), len(queries)

    for _ in range(2):
        failed_job(alice)
    few = list_queries()
    for _ in range(18):
        failed_job(alice)  # each has an attempt: listing must not load them
    many = list_queries()
    assert few[0] == 2
    assert many[0] == 20
    assert few[1] == many[1] <= 4, (few, many)


# -- cancel and retry --------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_cancels_a_queued_job(api, alice):
    job = job_for(alice)
    response = api.post(f"{detail_url(job)}cancel/", {"reason": "changed my mind"}, format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    assert (data["status"], data["terminal"], data["error_message"]) == ("cancelled", True, "changed my mind")
    assert data["finished_at"] is not None
    assert "Retry-After" not in response
    assert Job.objects.get(pk=job.pk).status == Status.CANCELLED


@pytest.mark.django_db
def test_it_cancels_a_running_job_and_closes_its_attempt(api, alice):
    job = job_for(alice)
    Job(pk=job.pk).mark_started(worker="w1@test")
    response = api.post(f"{detail_url(job)}cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["error_message"] == "cancelled by request"
    assert response.json()["attempt_history"][0]["outcome"] == AttemptOutcome.CANCELLED


@pytest.mark.django_db
def test_it_refuses_to_cancel_a_terminal_job_with_409(api, alice):
    done = succeeded_job(alice)
    body = assert_error(api.post(f"{detail_url(done)}cancel/"), 409, "status")
    assert "succeeded" in body["detail"]
    assert Job.objects.get(pk=done.pk).status == Status.SUCCEEDED


@pytest.mark.django_db
def test_it_refuses_a_cancel_reason_of_the_wrong_type(api, alice):
    job = job_for(alice)
    assert_error(api.post(f"{detail_url(job)}cancel/", {"reason": 5}, format="json"), 400, "reason")
    assert Job.objects.get(pk=job.pk).status == Status.QUEUED


@pytest.mark.django_db
def test_it_retries_a_failed_job_as_a_new_linked_job(api, carol, alice, django_capture_on_commit_callbacks):
    failed = failed_job(carol)
    with django_capture_on_commit_callbacks() as callbacks:  # not run: no worker needs the message
        response = api.post(f"{detail_url(failed)}retry/")
    assert response.status_code == 202, response.content
    data = response.json()
    assert data["id"] != str(failed.pk)
    assert response["Location"].endswith(detail_url(data["id"]))
    assert (data["retry_of"], data["status"], data["type"], data["attempt"]) == (
        str(failed.pk),
        "queued",
        "diagnostics.fail",
        0,
    )
    new = Job.objects.get(pk=data["id"])
    assert new.retry_of_id == failed.pk
    assert new.payload == failed.payload
    assert new.owner == alice
    assert new.tenant == failed.tenant
    assert len(callbacks) == 1  # its publish is scheduled for commit
    assert Job.objects.get(pk=failed.pk).status == Status.FAILED  # the original is left as it was


@pytest.mark.django_db
def test_it_retries_a_cancelled_job(api, alice):
    job = job_for(alice)
    assert api.post(f"{detail_url(job)}cancel/").status_code == 200
    response = api.post(f"{detail_url(job)}retry/")
    assert response.status_code == 202
    assert response.json()["retry_of"] == str(job.pk)


@pytest.mark.parametrize("make", [succeeded_job, job_for], ids=["succeeded", "queued"])
@pytest.mark.django_db
def test_it_refuses_to_retry_a_job_that_is_not_failed_or_cancelled_with_409(api, alice, make):
    job = make(alice)
    assert_error(api.post(f"{detail_url(job)}retry/"), 409, "status")
    assert Job.objects.count() == 1


# -- auth, methods, throttling, catalogue, schema ----------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", JOBS),
        ("post", JOBS),
        ("get", f"{JOBS}{uuid.UUID(int=1)}/"),
        ("post", f"{JOBS}{uuid.UUID(int=1)}/cancel/"),
        ("post", f"{JOBS}{uuid.UUID(int=1)}/retry/"),
        ("get", "/api/job-types/"),
        ("get", "/api/nothing-here/"),
    ],
)
@pytest.mark.django_db
def test_it_answers_401_to_unauthenticated_requests(method, path):
    response = getattr(APIClient(), method)(path, {"type": "diagnostics.sleep", "payload": {}}, format="json")
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == "Token"
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_it_answers_401_to_an_invalid_token():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_error(client.get(JOBS), 401)


@pytest.mark.django_db
def test_it_accepts_a_session_login(alice):
    client = APIClient()
    client.force_login(alice)
    assert client.get(JOBS).status_code == 200


@pytest.mark.django_db
def test_it_answers_405_in_the_error_shape(api, alice):
    job = job_for(alice)
    assert_error(api.delete(detail_url(job)), 405)
    assert_error(api.put(JOBS, {}, format="json"), 405)
    assert Job.objects.filter(pk=job.pk).exists()


@pytest.mark.django_db
def test_it_answers_404_in_the_error_shape_for_an_unknown_api_path(api):
    assert_error(api.get("/api/nothing-here/"), 404)
    body = assert_error(api.post("/api/jobs", {"type": "diagnostics.sleep", "payload": {}}, format="json"), 404)
    assert "Did you mean /api/jobs/" in body["detail"]


@pytest.mark.django_db
def test_it_throttles_submissions_with_429_but_not_polls(api, alice, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"submit": "2/min"}}
    body = {"type": "diagnostics.sleep", "payload": {}}
    codes = [api.post(JOBS, body, format="json").status_code for _ in range(2)]
    throttled = api.post(JOBS, body, format="json")
    assert codes == [202, 202]
    assert_error(throttled, 429)
    assert 1 <= int(throttled["Retry-After"]) <= 60
    failed = failed_job(alice)
    assert_error(api.post(f"{detail_url(failed)}retry/"), 429)  # a rerun is a submission too
    assert [api.get(JOBS).status_code for _ in range(3)] == [200, 200, 200]
    assert Job.objects.count() == 3


@pytest.mark.django_db
def test_it_lists_the_job_types_with_their_input_schema(api):
    response = api.get("/api/job-types/")
    assert response.status_code == 200
    by_name = {row["name"]: row for row in response.json()}
    assert set(by_name) == set(job_types())
    sleep = by_name["diagnostics.sleep"]
    assert sleep["queue"] == "default"
    assert sleep["max_retries"] == job_types()["diagnostics.sleep"].retry.max_retries
    assert sleep["time_limit"] > 0
    assert sleep["description"]
    assert set(sleep["input_schema"]["properties"]) == {"seconds", "heartbeat_every", "leak_mb"}
    assert by_name["webhook.deliver"]["input_schema"]["required"] == ["url"]


@pytest.mark.django_db
def test_the_schema_is_public_and_generates_without_warnings(tmp_path):
    # --fail-on-warn turns any drf-spectacular warning (an unannotated view, a guessed type) into an error
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    schema = (tmp_path / "schema.yaml").read_text()
    for operation in ("jobs_create", "jobs_retrieve", "jobs_list", "jobs_cancel", "jobs_retry", "job_types_list"):
        assert f"operationId: {operation}" in schema
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert "/api/jobs/{id}/" in response.json()["paths"]


# -- end to end, with a real worker ------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_client_polls_a_submitted_job_until_it_is_terminal(worker, make_user):
    client = client_for(make_user("poller", tenant="e2e"))
    # Given a job that fails once with a transient error, then succeeds
    submitted = client.post(
        JOBS,
        {"type": "diagnostics.fail", "payload": {"mode": "times", "times": 1}},
        format="json",
        HTTP_X_CORRELATION_ID="e2e-poll",
    )
    assert submitted.status_code == 202, submitted.content
    url = detail_url(submitted.json()["id"])
    # When the client polls with the last ETag (every 50 ms, more often than Retry-After asks, so
    # that unchanged polls happen and come back as 304)
    etag, statuses, not_modified = None, [], 0

    def poll() -> dict[str, Any] | None:
        nonlocal etag, not_modified
        response = client.get(url, **({"HTTP_IF_NONE_MATCH": etag} if etag else {}))
        if response.status_code == 304:
            not_modified += 1
            assert "Retry-After" in response
            return None
        assert response.status_code == 200
        etag, data = response["ETag"], response.json()
        statuses.append(data["status"])
        assert ("Retry-After" in response) != data["terminal"]
        return data if data["terminal"] else None

    final = wait_for(poll, timeout=60, interval=0.05, what="the job to be terminal over the API")
    # Then it ends succeeded on its second attempt, with the whole history
    assert final["status"] == "succeeded"
    assert final["result"] == {"attempt": 2}
    assert (final["attempt"], final["max_attempts"]) == (2, final["max_retries"] + 1)
    assert [a["outcome"] for a in final["attempt_history"]] == ["retried", "succeeded"]
    assert final["attempt_history"][0]["error_type"] == "TransientError"
    assert final["worker"] == worker.name
    assert final["correlation_id"] == "e2e-poll"
    assert final["dispatched_at"]
    assert final["started_at"]
    assert final["finished_at"]
    print(f"polls: {len(statuses)} with a body ({statuses}), {not_modified} answered 304")
    assert client.get(url, HTTP_IF_NONE_MATCH=etag).status_code == 304
