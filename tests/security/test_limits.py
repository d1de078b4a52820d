"""Hostile sizes and rates: every limit answers a clear 4xx in the API's error shape, never a 500.

tests/results/api/test_jobs.py covers the basic limits of ``POST /api/jobs/`` (payload 413, body 413,
nesting 400, malformed JSON, 415); these tests extend them to every endpoint that takes a body,
to the ways a client can lie about sizes, and to the submit throttle's per-user budget.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.conf import settings as django_settings

from results.models import DeadLetter, Job
from tests.factories import client_for, job_for
from tests.security.helpers import assert_error_shape

SLEEP = {"type": "diagnostics.sleep", "payload": {}}


def post_raw(client: Any, path: str, body: str | bytes, content_type: str = "application/json", **extra: Any) -> Any:
    return client.generic("POST", path, body, content_type=content_type, **extra)


def body_endpoints(user: Any) -> dict[str, str]:
    """Every endpoint that reads a JSON body, with a path it can be called at."""
    return {
        "submit": "/api/jobs/",
        "bulk": "/api/jobs/bulk/",
        "cancel": f"/api/jobs/{job_for(user).pk}/cancel/",
    }


# -- throttling ---------------------------------------------------------------------------------
@pytest.fixture
def submit_rate(settings: Any) -> Any:
    def set_rate(rate: str) -> None:
        # results.api.throttling reads DEFAULT_THROTTLE_RATES at request time.
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"submit": rate}}

    return set_rate


@pytest.mark.django_db
def test_a_user_over_the_submit_rate_gets_429_with_retry_after_and_other_users_do_not(submit_rate, alice, bob):
    submit_rate("3/min")
    flooder, bystander = client_for(alice), client_for(bob)
    assert [flooder.post("/api/jobs/", SLEEP, format="json").status_code for _ in range(3)] == [202] * 3
    throttled = flooder.post("/api/jobs/", SLEEP, format="json")
    body = assert_error_shape(throttled, 429)
    assert body["errors"] == {}
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert "throttled" in body["detail"].lower()
    # Another user (another tenant) keeps its own budget.
    assert [bystander.post("/api/jobs/", SLEEP, format="json").status_code for _ in range(3)] == [202] * 3
    assert Job.objects.filter(owner=alice).count() == 3
    assert Job.objects.filter(owner=bob).count() == 3


@pytest.mark.django_db
def test_single_and_bulk_submissions_spend_one_budget(submit_rate, alice):
    submit_rate("2/min")
    api = client_for(alice)
    assert api.post("/api/jobs/", SLEEP, format="json").status_code == 202
    assert api.post("/api/jobs/bulk/", {"jobs": [SLEEP]}, format="json").status_code == 202
    assert_error_shape(api.post("/api/jobs/bulk/", {"jobs": [SLEEP]}, format="json"), 429)
    assert_error_shape(api.post("/api/jobs/", SLEEP, format="json"), 429)
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_a_batch_spends_one_submission_of_the_budget_per_job(submit_rate, alice):
    # The rate limits jobs per user, not requests: otherwise one POST /api/jobs/bulk/ of
    # TERMINUS_MAX_BULK jobs multiplies a user's rate by that many.
    submit_rate("5/min")
    api = client_for(alice)
    assert api.post("/api/jobs/bulk/", {"jobs": [SLEEP] * 5}, format="json").status_code == 202
    assert_error_shape(api.post("/api/jobs/bulk/", {"jobs": [SLEEP] * 5}, format="json"), 429)
    assert_error_shape(api.post("/api/jobs/", SLEEP, format="json"), 429)
    assert Job.objects.count() == 5


# -- sizes --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_every_body_over_the_request_limit_is_refused_with_413(alice):
    api = client_for(alice)
    limit = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    pad = "x" * limit
    bodies = {
        "submit": {"type": "diagnostics.sleep", "payload": {"pad": pad}},
        "bulk": {"jobs": [{"type": "diagnostics.sleep", "payload": {"pad": pad}}]},
        "cancel": {"reason": pad},
    }
    for name, path in body_endpoints(alice).items():
        response = post_raw(api, path, json.dumps(bodies[name]))
        assert "body" in assert_error_shape(response, 413)["errors"], name
    assert Job.objects.count() == 1  # only the job the cancel endpoint was pointed at


@pytest.mark.django_db
def test_a_declared_content_length_over_the_limit_is_refused_before_the_body_is_read(alice):
    api = client_for(alice)
    declared = str(django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    for name, path in body_endpoints(alice).items():
        response = post_raw(api, path, json.dumps(SLEEP), CONTENT_LENGTH=declared)
        assert_error_shape(response, 413), name


@pytest.mark.django_db
def test_a_body_shorter_than_its_declared_length_is_a_clear_400(alice):
    api = client_for(alice)
    body = json.dumps(SLEEP)
    for name, path in body_endpoints(alice).items():
        response = post_raw(api, path, body, CONTENT_LENGTH=str(len(body) // 2))
        assert "body" in assert_error_shape(response, 400)["errors"], name


@pytest.mark.django_db
def test_a_payload_over_the_payload_limit_is_refused_with_413_in_a_batch_too(alice, settings):
    settings.TERMINUS_MAX_PAYLOAD_BYTES = 1000
    big = {"type": "diagnostics.fail", "payload": {"message": "x" * 1000}}
    response = client_for(alice).post("/api/jobs/bulk/", {"jobs": [SLEEP, big]}, format="json")
    body = assert_error_shape(response, 413)
    assert list(body["errors"]) == ["jobs.1.payload"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("endpoint", "depth", "field"),
    [
        ("bulk", 101, "jobs.0.payload"),
        ("bulk", 100_000, "body"),
        ("cancel", 100_000, "body"),
    ],
)
@pytest.mark.django_db
def test_deeply_nested_json_is_refused_with_400_on_every_endpoint(alice, endpoint, depth, field):
    nested = "[" * depth + "]" * depth
    payload = f'{{"url": "http://x.test", "body": {nested}}}'
    bodies = {
        "bulk": f'{{"jobs": [{{"type": "webhook.deliver", "payload": {payload}}}]}}',
        "cancel": f'{{"reason": {nested}}}',
    }
    response = post_raw(client_for(alice), body_endpoints(alice)[endpoint], bodies[endpoint])
    assert field in assert_error_shape(response, 400)["errors"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("idempotency_key", "k" * 500_000), ("type", "t" * 500_000), ("queue", "q" * 500_000)],
)
@pytest.mark.django_db
def test_a_huge_string_field_is_refused_with_400(alice, field, value):
    response = client_for(alice).post("/api/jobs/", {**SLEEP, field: value}, format="json")
    assert field in assert_error_shape(response, 400)["errors"]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_huge_correlation_id_header_is_refused_with_400(alice):
    response = client_for(alice).post("/api/jobs/", SLEEP, format="json", HTTP_X_CORRELATION_ID="c" * 100_000)
    assert "X-Correlation-ID" in assert_error_shape(response, 400)["errors"]


def list_query_parameters() -> list[tuple[str, str]]:
    """(path, parameter) for every query parameter of every GET without path parameters, from the schema."""
    from django.test import Client

    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    return [
        (path, parameter["name"])
        for path, operations in schema["paths"].items()
        if "{" not in path and "get" in operations
        for parameter in operations["get"].get("parameters", [])
        if parameter["in"] == "query"
    ]


@pytest.mark.parametrize("value", ["x" * 100_000, "9" * 100_000, str(10**15)], ids=["letters", "digits", "1e15"])
@pytest.mark.django_db
def test_a_huge_list_filter_value_is_answered_without_a_server_error_on_every_list(alice, value):
    # 100 000 letters fit no parameter: 400 keyed by it. A number may be in range (200) or not
    # (400), but is never a 500: 10**15 seconds ago or 10**15 per page is no date and no page.
    api = client_for(alice)
    api.raise_request_exception = False  # a server error is reported below, with the others
    found = list_query_parameters()
    assert ("/api/jobs/", "created_after") in found
    failures = []
    for path, name in found:
        response = api.get(path, {name: value})
        if response.status_code == 400:
            ok = name in assert_error_shape(response, 400)["errors"]
        else:
            ok = response.status_code == 200 and value.isdigit()
        if not ok:
            failures.append(f"{path}?{name}={value[:16]}...: {response.status_code} {response.content[:200]!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.django_db
def test_an_empty_list_filter_is_refused_with_400_not_silently_ignored(alice):
    # The schema says every filter has a value (a date, a status, at least one character); an
    # empty one is a client bug (?created_after= from an unset variable) and must not widen the list.
    api = client_for(alice)
    failures = []
    for path, name in list_query_parameters():
        response = api.get(f"{path}?{name}=")
        if response.status_code != 400 or name not in assert_error_shape(response, 400)["errors"]:
            failures.append(f"{path}?{name}=: {response.status_code}")
    assert not failures, "empty filters accepted:\n" + "\n".join(failures)


@pytest.mark.parametrize("value", ["9" * 100_000, "x" * 100_000], ids=["digits", "letters"])
@pytest.mark.django_db
def test_a_huge_long_poll_wait_is_answered_without_a_server_error(alice, settings, value):
    # Above the cap counts as the cap (documented); anything but a whole number is a 400.
    settings.TERMINUS_LONG_POLL_MAX = 1
    job = job_for(alice)
    Job(pk=job.pk).mark_cancelled(reason="terminal: answered at once")
    response = client_for(alice).get(f"/api/jobs/{job.pk}/", {"wait": value})
    if value.isdigit():
        assert response.status_code == 200, response.content[:300]
    else:
        assert "wait" in assert_error_shape(response, 400)["errors"]


@pytest.mark.django_db
def test_too_many_query_parameters_are_refused_in_the_error_shape(alice):
    api = client_for(alice)
    too_many = "&".join(["status=queued"] * (django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    assert_error_shape(api.get(f"/api/jobs/?{too_many}"), 400)
    job = job_for(alice)
    assert_error_shape(api.get(f"/api/jobs/{job.pk}/?{too_many}"), 400)


# -- contents -----------------------------------------------------------------------------------
HOSTILE_BODIES = [
    pytest.param(b"", "application/json", 400, id="empty"),
    pytest.param(b"null", "application/json", 400, id="null"),
    pytest.param(b"[]", "application/json", 400, id="array"),
    pytest.param(b'"string"', "application/json", 400, id="string"),
    pytest.param(b"\xef\xbb\xbf{}", "application/json", 400, id="utf8-bom"),
    pytest.param(b'{"a": NaN}', "application/json", 400, id="nan-literal"),
    pytest.param(b'{"a": Infinity}', "application/json", 400, id="infinity-literal"),
    pytest.param(b'{"a": "\xff\xfe"}', "application/json", 400, id="invalid-utf8"),
    pytest.param(b'{"a": 1' + b"0" * 5000 + b"}", "application/json", 400, id="huge-integer"),
    pytest.param(b"a=1&b=2", "application/x-www-form-urlencoded", 415, id="form"),
    pytest.param(b"<job/>", "application/xml", 415, id="xml"),
    pytest.param(b"\x80\x04\x95", "application/x-python-serialize", 415, id="pickle"),
    pytest.param(b"type: x", "application/x-yaml", 415, id="yaml"),
    pytest.param(b"\x93\x90\x80\x80", "application/msgpack", 415, id="msgpack"),
]


@pytest.mark.parametrize(("body", "content_type", "status"), HOSTILE_BODIES)
@pytest.mark.django_db
def test_hostile_bodies_are_refused_in_the_error_shape_on_every_endpoint(alice, body, content_type, status):
    api = client_for(alice)
    for name, path in body_endpoints(alice).items():
        if name == "cancel" and body == b"":
            continue  # the cancel body is optional: no body is a cancel with the default reason
        response = post_raw(api, path, body, content_type=content_type)
        assert response.status_code == status, (name, response.status_code, response.content[:300])
        assert_error_shape(response)
    assert Job.objects.count() == 1  # the job the cancel endpoint was pointed at, still queued
    assert Job.objects.get().status == "queued"


@pytest.mark.parametrize("number", ["1e999", "-1e999"])
@pytest.mark.django_db
def test_a_number_json_cannot_represent_is_refused_on_every_submit_path(alice, number):
    # 1e999 parses to float('inf'): storing it would change the input (pydantic writes null) or
    # send a body no JSON parser accepts.
    payload = f'{{"url": "http://x.test", "body": {{"amount": {number}}}}}'
    api = client_for(alice)
    single = post_raw(api, "/api/jobs/", f'{{"type": "webhook.deliver", "payload": {payload}}}')
    assert_error_shape(single, 400)
    bulk = post_raw(api, "/api/jobs/bulk/", f'{{"jobs": [{{"type": "webhook.deliver", "payload": {payload}}}]}}')
    assert_error_shape(bulk, 400)
    assert not Job.objects.exists()
    # A dead letter replayed with an edited payload is a submission too.
    letter = failed_webhook_letter(alice)
    replay = post_raw(api, f"/api/dead-letters/{letter.pk}/replay/", f'{{"payload": {payload}}}')
    assert "payload" in assert_error_shape(replay, 400)["errors"]
    assert Job.objects.count() == 1  # the failed job alone: nothing was replayed
    assert DeadLetter.objects.get(pk=letter.pk).status == "open"


def failed_webhook_letter(user: Any) -> DeadLetter:
    """An open dead letter of ``user``'s failed webhook job, as the dead-letter path records it."""
    from tasks.failure.dead_letters import message_for_job, store

    job = job_for(user, "webhook.deliver", {"url": "http://x.test/hook"})
    assert Job(pk=job.pk).mark_started(worker="w1@test")
    assert Job(pk=job.pk).mark_failed(error_type="PermanentError", error_message="410 Gone")
    return store(message_for_job(Job.objects.get(pk=job.pk), reason="non_retryable"))[0]


@pytest.mark.django_db
def test_a_batch_over_the_remaining_budget_is_refused_whole_with_retry_after(submit_rate, alice):
    submit_rate("5/min")
    api = client_for(alice)
    assert api.post("/api/jobs/bulk/", {"jobs": [SLEEP] * 3}, format="json").status_code == 202
    throttled = api.post("/api/jobs/bulk/", {"jobs": [SLEEP] * 3}, format="json")
    assert assert_error_shape(throttled, 429)["errors"] == {}
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert Job.objects.count() == 3  # nothing of the refused batch, and it spent nothing:
    assert api.post("/api/jobs/bulk/", {"jobs": [SLEEP] * 2}, format="json").status_code == 202
    assert_error_shape(api.post("/api/jobs/", SLEEP, format="json"), 429)
    assert Job.objects.count() == 5


@pytest.mark.django_db
def test_a_batch_larger_than_the_whole_submit_rate_is_refused_with_400_not_a_retry_after(submit_rate, alice):
    # No wait would let 4 jobs through a rate of 3 a minute: telling the client to retry would loop.
    submit_rate("3/min")
    api = client_for(alice)
    body = assert_error_shape(api.post("/api/jobs/bulk/", {"jobs": [SLEEP] * 4}, format="json"), 400)
    assert "at most 3" in body["errors"]["jobs"][0]
    assert api.post("/api/jobs/bulk/", {"jobs": [SLEEP] * 3}, format="json").status_code == 202
    assert Job.objects.count() == 3


@pytest.mark.django_db
def test_older_than_beyond_its_maximum_is_a_400_on_the_parameter(alice):
    from results.api.dead_letters import OLDER_THAN_MAX

    api = client_for(alice)
    assert api.get("/api/dead-letters/", {"older_than": OLDER_THAN_MAX}).status_code == 200
    for value in (OLDER_THAN_MAX + 1, 10**15, 10**30):
        body = assert_error_shape(api.get("/api/dead-letters/", {"older_than": value}), 400)
        assert list(body["errors"]) == ["older_than"], value


#: A valid value for each kind of single-valued list parameter (by its schema).
SAMPLE_VALUES = {
    "date-time": "2020-01-01T00:00:00Z",
    "uuid": str(uuid.UUID(int=1)),
    "int64": "1",
    "integer": "1",
    "string": "x",
}


@pytest.mark.django_db
def test_a_repeated_single_valued_query_parameter_is_refused_with_400(alice):
    # ?type=a&type=b would otherwise be read as one of the two, silently; lists may repeat.
    from django.test import Client

    api = client_for(alice)
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    checked = []
    for path, name in list_query_parameters():
        parameter = next(p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == name)
        kind = parameter["schema"].get("format") or parameter["schema"]["type"]
        if kind == "array":
            value = parameter["schema"]["items"]["enum"][0]
            assert api.get(f"{path}?{name}={value}&{name}={value}").status_code == 200, (path, name)
            continue
        value = SAMPLE_VALUES[kind]
        body = assert_error_shape(api.get(f"{path}?{name}={value}&{name}={value}"), 400)
        assert body["errors"] == {name: [f"give {name} once"]}, (path, body)
        checked.append(name)
    assert {"type", "created_after", "page_size", "older_than", "cursor"} <= set(checked)
    job = job_for(alice)
    assert_error_shape(api.get(f"/api/jobs/{job.pk}/?wait=1&wait=1"), 400)
    assert "x" in assert_error_shape(api.get("/api/dead-letters/stats/?x=1"), 400)["errors"]
