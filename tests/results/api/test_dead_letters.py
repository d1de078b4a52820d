"""The dead-letter API over HTTP: list, inspect, replay, resolve and stats, scoped per tenant.

Dead letters for the filter, permission and validation cases are recorded through the real
store (``tasks.failure.dead_letters.store`` with the message the worker would send); the end-to-end test
at the bottom produces one with a real worker, replays it with an edited payload and watches the
new job succeed.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from results.models import (
    Alert,
    AlertStatus,
    DeadLetter,
    DeadLetterReason,
    DeadLetterStatus,
    Job,
    Membership,
    Status,
)
from tasks.failure.dead_letters import message_for_job, poison_message, store
from tasks.submit.outbox import submit
from tests.factories import client_for, poison_dead_letter
from tests.helpers import wait_for, wait_terminal

LETTERS = "/api/dead-letters/"
STATS = f"{LETTERS}stats/"
SECRET_TRACEBACK = "Traceback (most recent call last):\n  File internals.py: STAFF-ONLY-TRACEBACK"


def detail_url(letter: DeadLetter | int | str) -> str:
    return f"{LETTERS}{getattr(letter, 'pk', letter)}/"


def assert_error(response: Any, status: int, *fields: str) -> dict[str, Any]:
    """The response has ``status`` and the API's one error shape, naming exactly ``fields``."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert sorted(body["errors"]) == sorted(fields), body
    for messages in body["errors"].values():
        assert messages and all(isinstance(message, str) and message for message in messages), body
    return body


def listed(client: APIClient, query: str = "") -> list[int]:
    """Every dead letter id the list shows for ``query``, following the cursor to the end."""
    ids: list[int] = []
    url: str | None = f"{LETTERS}?{query}" if query else LETTERS
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        ids += [row["id"] for row in response.json()["results"]]
        url = response.json()["next"]
    return ids


# -- fixtures ----------------------------------------------------------------------------------


def failed_job(user: User | None, payload: dict[str, Any] | None = None, **fields: Any) -> Job:
    """A job of ``user`` failed for good through the state machine (nothing is published: no commit)."""
    membership = Membership.objects.filter(user=user).select_related("tenant").first() if user else None
    tenant = membership.tenant if membership else None
    job = submit("diagnostics.fail", {"mode": "permanent"}, owner=user, tenant=tenant)
    if payload is not None:  # a payload the schema no longer accepts, as if the schema changed since
        Job.objects.filter(pk=job.pk).update(payload=payload)
    claim = Job(pk=job.pk).mark_started(worker="w1@test")
    assert claim is not None
    assert Job(pk=job.pk).mark_failed(
        error_type=fields.get("error_type", "PermanentError"),
        error_message="no such customer",
        traceback=SECRET_TRACEBACK,
    )
    return Job.objects.get(pk=job.pk)


def letter_for(
    user: User | None, *, reason: str = DeadLetterReason.NON_RETRYABLE, age: timedelta | None = None, **fields: Any
) -> DeadLetter:
    """The dead letter of a new failed job of ``user``, recorded as the dead-letter task records it."""
    job = failed_job(user, **fields)
    letter, created = store(message_for_job(job, reason=reason))
    assert created
    if age is not None:
        DeadLetter.objects.filter(pk=letter.pk).update(created_at=timezone.now() - age)
    return DeadLetter.objects.get(pk=letter.pk)


# -- list --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_list_shows_dead_letters_newest_first_page_by_page(alice):
    # Given five dead letters recorded a minute apart
    letters = [letter_for(alice, age=timedelta(minutes=minutes)) for minutes in (5, 4, 3, 2, 1)]
    api = client_for(alice)
    # When the list is read two at a time
    first = api.get(f"{LETTERS}?page_size=2").json()
    # Then it comes newest first, and following next to the end lists each once
    assert [row["id"] for row in first["results"]] == [letters[4].pk, letters[3].pk]
    assert listed(api, "page_size=2") == [letter.pk for letter in reversed(letters)]
    row = first["results"][0]
    assert (row["job"], row["type"], row["reason"], row["status"]) == (
        str(letters[4].job_id),
        "diagnostics.fail",
        "non_retryable",
        "open",
    )
    assert (row["error_type"], row["error_message"], row["attempts"]) == ("PermanentError", "no such customer", 1)
    # The list carries no traceback or message; those are on the detail page
    assert not {"traceback", "body", "raw_body", "headers", "alerts"} & set(row)


@pytest.mark.django_db
def test_the_list_filters_by_status_type_error_type_reason_job_and_age(staff, alice):
    fresh = letter_for(alice)
    old = letter_for(alice, age=timedelta(hours=3), error_type="TransientError", reason="retries_exhausted")
    resolved = letter_for(alice, age=timedelta(days=2))
    resolved.mark_resolved(by="ops")
    poison = poison_dead_letter()
    api = client_for(staff)
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    cases = {
        "": [poison.pk, fresh.pk, old.pk, resolved.pk],
        "status=open": [poison.pk, fresh.pk, old.pk],
        "status=resolved": [resolved.pk],
        "status=replayed,resolved": [resolved.pk],
        "status=open&status=resolved": [poison.pk, fresh.pk, old.pk, resolved.pk],
        "type=billing.nonexistent": [poison.pk],
        "type=diagnostics.fail&error_type=TransientError": [old.pk],
        "reason=retries_exhausted,unknown_task": [poison.pk, old.pk],
        f"job={fresh.job_id}": [fresh.pk],
        "older_than=3600": [old.pk, resolved.pk],
        "older_than=3600&status=open": [old.pk],
        f"created_after={since.replace('+', '%2B')}": [poison.pk, fresh.pk],
        f"created_before={since.replace('+', '%2B')}": [old.pk, resolved.pk],
    }
    for query, expected in cases.items():
        assert listed(api, query) == expected, query


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("statuss=open", "statuss"),
        ("status=open,closed", "status"),
        ("reason=bored", "reason"),
        ("older_than=-1", "older_than"),
        ("older_than=soon", "older_than"),
        ("created_after=yesterday", "created_after"),
        ("created_after=2030-01-01T00:00:00Z&created_before=2020-01-01T00:00:00Z", "created_before"),
        ("job=not-a-uuid", "job"),
        ("page_size=0", "page_size"),
        ("cursor=forged", "cursor"),
        (f"type={'x' * 201}", "type"),
        ("error_type=", "error_type"),
        ("older_than=", "older_than"),
        ("status=&type=diagnostics.fail", "status"),
    ],
)
def test_the_list_refuses_unknown_or_bad_parameters_with_400(alice, query, field):
    letter_for(alice)
    assert_error(client_for(alice).get(f"{LETTERS}?{query}"), 400, field)


# -- scope and staff-only fields -----------------------------------------------------------------
@pytest.mark.django_db
def test_a_tenant_user_sees_its_tenants_dead_letters_only_never_poison_messages(alice, bob, make_user):
    carol = make_user("carol", tenant="acme")
    mine, colleagues = letter_for(alice), letter_for(carol)
    theirs, poison = letter_for(bob), poison_dead_letter()
    api = client_for(alice)
    assert sorted(listed(api)) == sorted([mine.pk, colleagues.pk])
    assert listed(api, f"job={theirs.job_id}") == []
    assert api.get(detail_url(colleagues)).status_code == 200
    # Another tenant's dead letter and a poison message answer exactly like an unknown id
    unknown = assert_error(api.get(detail_url(10**9)), 404)["detail"].replace(str(10**9), "<id>")
    for hidden in (theirs, poison):
        for response in (
            api.get(detail_url(hidden)),
            api.post(f"{detail_url(hidden)}replay/", {}, format="json"),
            api.post(f"{detail_url(hidden)}resolve/"),
        ):
            assert assert_error(response, 404)["detail"].replace(str(hidden.pk), "<id>") == unknown
    assert DeadLetter.objects.filter(status=DeadLetterStatus.OPEN).count() == 4
    assert not Job.objects.filter(retry_of__isnull=False).exists()


@pytest.mark.django_db
def test_a_user_without_a_tenant_sees_only_the_dead_letters_of_its_own_jobs(make_user):
    dave, erin = make_user("dave"), make_user("erin")
    mine, theirs = letter_for(dave), letter_for(erin)
    api = client_for(dave)
    assert listed(api) == [mine.pk]
    assert_error(api.get(detail_url(theirs)), 404)


@pytest.mark.django_db
def test_tenant_staff_see_only_their_tenants_dead_letters(make_user, alice, bob):
    ops = make_user("ops-acme", tenant="acme", staff=True)
    mine, theirs = letter_for(alice), letter_for(bob)
    poison_dead_letter()
    api = client_for(ops)
    assert listed(api) == [mine.pk]
    assert_error(api.get(detail_url(theirs)), 404)
    assert api.get(STATS).json()["open"] == 1
    # Staff, so the tracebacks of their own tenant's failures are theirs to read
    assert api.get(detail_url(mine)).json()["traceback"] == SECRET_TRACEBACK


@pytest.mark.django_db
def test_staff_see_every_dead_letter_with_traceback_and_raw_body(staff, alice, bob):
    letters = [letter_for(alice), letter_for(bob), poison_dead_letter()]
    raw = store(
        poison_message(
            reason=DeadLetterReason.UNDECODABLE,
            body=None,
            raw=b"\x80\x04garbage",
            headers={"id": str(uuid.uuid4())},
            queue="default",
            error="ContentDisallowed",
        )
    )[0]
    api = client_for(staff)
    assert sorted(listed(api)) == sorted([letter.pk for letter in letters] + [raw.pk])
    detail = api.get(detail_url(letters[0])).json()
    assert detail["traceback"] == SECRET_TRACEBACK
    assert api.get(detail_url(raw)).json()["raw_body"].startswith("base64:")
    poison = api.get(detail_url(letters[2])).json()
    assert (poison["job"], poison["type"], poison["body"]) == (None, "billing.nonexistent", [[], {"invoice": 7}, {}])


@pytest.mark.django_db
def test_a_non_staff_user_never_gets_a_traceback_or_raw_body(alice):
    letter = letter_for(alice)
    DeadLetter.objects.filter(pk=letter.pk).update(raw_body="base64:c2VjcmV0")
    response = client_for(alice).get(detail_url(letter))
    assert response.status_code == 200
    body = response.json()
    assert (body["traceback"], body["raw_body"]) == (None, None)
    assert "STAFF-ONLY-TRACEBACK" not in response.content.decode()
    assert "c2VjcmV0" not in response.content.decode()


# -- detail ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_detail_shows_the_message_the_failure_window_and_the_alerts_sent(alice, staff):
    letter = letter_for(alice)
    job = letter.job
    now = timezone.now()
    Alert.objects.create(
        key="diagnostics.fail|PermanentError",
        channel="mail",
        dead_letter=letter,
        subject="s",
        text="t",
        status=AlertStatus.FAILED,
        error="mail failed: connection refused",
        created_at=now,
    )
    Alert.objects.create(
        key="diagnostics.fail|PermanentError",
        channel="webhook",
        dead_letter=letter,
        subject="s",
        text="t",
        status=AlertStatus.SENT,
        sent_at=now,
        created_at=now - timedelta(seconds=1),
    )
    body = client_for(alice).get(detail_url(letter)).json()
    assert body["job"] == str(job.pk) and body["message_key"] == str(job.pk)
    assert body["body"] == {"args": [], "kwargs": job.payload} and job.payload["mode"] == "permanent"
    assert body["headers"]["correlation_id"] == job.correlation_id
    assert body["attempts"] == 1
    assert body["first_failed_at"] is not None and body["first_failed_at"] <= body["last_failed_at"]
    assert (body["status"], body["replay_job"], body["resolved_at"]) == ("open", None, None)
    # Alerts oldest first, with channel, status and when they were sent; why one failed is for staff
    assert [(a["channel"], a["status"], a["sent_at"] is not None) for a in body["alerts"]] == [
        ("webhook", "sent", True),
        ("mail", "failed", False),
    ]
    assert body["alerts"][1]["error"] is None
    staff_view = client_for(staff).get(detail_url(letter)).json()
    assert staff_view["alerts"][1]["error"] == "mail failed: connection refused"


@pytest.mark.django_db
@pytest.mark.parametrize("bad_id", ["abc", "-1", "1.5", str(2**64), "12345678901234567890123"])
def test_a_malformed_or_unknown_id_is_a_404_in_the_error_shape(alice, bad_id):
    letter_for(alice)
    body = assert_error(client_for(alice).get(detail_url(bad_id)), 404)
    assert body["detail"] == f"No dead letter {bad_id}."
    assert_error(client_for(alice).post(f"{detail_url(bad_id)}replay/", {}, format="json"), 404)


@pytest.mark.django_db
def test_the_detail_and_stats_refuse_query_parameters(alice):
    letter = letter_for(alice)
    assert_error(client_for(alice).get(f"{detail_url(letter)}?verbose=1"), 400, "verbose")
    assert_error(client_for(alice).get(f"{STATS}?tenant=globex"), 400, "tenant")


# -- replay ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_replay_answers_202_with_the_new_job_then_200_with_the_same_job(alice):
    letter = letter_for(alice)
    api = client_for(alice)
    # When it is replayed
    first = api.post(f"{detail_url(letter)}replay/")
    # Then a new job of the same type and payload, linked to the failed one, is pollable
    assert first.status_code == 202, first.content
    job = first.json()
    assert (job["type"], job["status"], job["retry_of"], job["attempts"]) == (
        "diagnostics.fail",
        "queued",
        str(letter.job_id),
        0,
    )
    assert first["Location"].endswith(f"/api/jobs/{job['id']}/")
    assert api.get(f"/api/jobs/{job['id']}/").status_code == 200
    new = Job.objects.get(pk=job["id"])
    assert (new.payload, new.tenant, new.owner, new.correlation_id) == (
        letter.job.payload,
        letter.job.tenant,
        alice,
        letter.job.correlation_id,
    )
    letter.refresh_from_db()
    assert (letter.status, str(letter.replay_job_id)) == (DeadLetterStatus.REPLAYED, job["id"])
    # When it is replayed again, then the same job comes back and nothing new is submitted
    again = api.post(f"{detail_url(letter)}replay/", {}, format="json")
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert Job.objects.filter(retry_of=letter.job_id).count() == 1


@pytest.mark.django_db
def test_replay_runs_an_edited_payload_validated_like_a_submission(alice):
    letter = letter_for(alice)
    api = client_for(alice)
    edited = api.post(f"{detail_url(letter)}replay/", {"payload": {"mode": "times", "times": 0}}, format="json")
    assert edited.status_code == 202, edited.content
    assert Job.objects.get(pk=edited.json()["id"]).payload["mode"] == "times"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"payload": {"mode": "explode"}}, ["payload.mode"]),
        ({"payload": {"mode": "times", "times": -1}}, ["payload.times"]),
        ({"payload": ["mode", "always"]}, ["payload"]),
        ({"payload": None}, ["payload"]),
        ({"payload": {"note": "a\u0000b"}}, ["payload"]),
        ({"paylod": {"mode": "always"}}, ["paylod"]),
        (["payload"], ["body"]),
    ],
)
def test_replay_refuses_an_invalid_edited_payload_with_400_and_runs_nothing(alice, body, fields):
    letter = letter_for(alice)
    response = client_for(alice).post(f"{detail_url(letter)}replay/", body, format="json")
    assert_error(response, 400, *fields)
    assert DeadLetter.objects.get(pk=letter.pk).status == DeadLetterStatus.OPEN
    assert not Job.objects.filter(retry_of__isnull=False).exists()


@pytest.mark.django_db
def test_replay_refuses_malformed_json_and_a_body_that_is_not_json(alice):
    letter = letter_for(alice)
    api = client_for(alice)
    assert_error(api.post(f"{detail_url(letter)}replay/", "{", content_type="application/json"), 400, "body")
    assert_error(api.post(f"{detail_url(letter)}replay/", "payload=1", content_type="text/plain"), 415)


@pytest.mark.django_db
def test_replay_refuses_an_oversized_payload_with_413(alice, settings):
    settings.TERMINUS_MAX_PAYLOAD_BYTES = 100
    letter = letter_for(alice)
    big = {"mode": "permanent", "message": "x" * 200}
    response = client_for(alice).post(f"{detail_url(letter)}replay/", {"payload": big}, format="json")
    assert_error(response, 413, "payload")


@pytest.mark.django_db
def test_replay_refuses_a_resolved_dead_letter_with_409(alice):
    letter = letter_for(alice)
    letter.mark_resolved(by="ops")
    body = assert_error(client_for(alice).post(f"{detail_url(letter)}replay/"), 409, "status")
    assert "resolved" in body["detail"]
    assert not Job.objects.filter(retry_of__isnull=False).exists()


@pytest.mark.django_db
def test_replay_refuses_a_message_that_names_no_job_type_with_409(staff):
    poison = poison_dead_letter()
    body = assert_error(client_for(staff).post(f"{detail_url(poison)}replay/"), 409, "type")
    assert "billing.nonexistent" in body["detail"]
    assert DeadLetter.objects.get(pk=poison.pk).status == DeadLetterStatus.OPEN


@pytest.mark.django_db
def test_a_poison_message_naming_a_job_type_replays_its_kwargs_as_a_staff_owned_job(staff):
    letter = poison_dead_letter(task="diagnostics.sleep")
    DeadLetter.objects.filter(pk=letter.pk).update(body={"args": [], "kwargs": {"seconds": 0}})
    response = client_for(staff).post(f"{detail_url(letter)}replay/")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert (job.type, job.payload["seconds"], job.owner, job.retry_of) == ("diagnostics.sleep", 0, staff, None)


@pytest.mark.django_db
def test_replay_of_an_original_payload_that_no_longer_validates_is_409_until_an_edited_one_is_sent(alice):
    # Given a dead letter whose original payload the job type's schema no longer accepts
    letter = letter_for(alice, payload={"mode": "explode"})
    api = client_for(alice)
    # When it is replayed as it is, then the client is told to send an edited payload
    body = assert_error(api.post(f"{detail_url(letter)}replay/"), 409, "payload.mode")
    assert "edited payload" in body["detail"]
    # And an edited payload replays it
    fixed = api.post(f"{detail_url(letter)}replay/", {"payload": {"mode": "permanent"}}, format="json")
    assert fixed.status_code == 202


@pytest.mark.django_db
def test_replay_is_throttled_like_a_submission(alice, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"submit": "2/min"}}
    letters = [letter_for(alice) for _ in range(3)]
    api = client_for(alice)
    codes = [api.post(f"{detail_url(letter)}replay/").status_code for letter in letters]
    assert codes[:2] == [202, 202]
    assert_error(api.post(f"{detail_url(letters[2])}replay/"), 429)
    assert api.get(detail_url(letters[2])).status_code == 200  # reading is never throttled


# -- resolve -----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_resolve_closes_an_open_dead_letter_and_records_who(alice):
    letter = letter_for(alice)
    response = client_for(alice).post(f"{detail_url(letter)}resolve/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["resolved_by"]) == ("resolved", "alice")
    assert body["resolved_at"] is not None
    assert listed(client_for(alice)) == [letter.pk]
    assert listed(client_for(alice), "status=open") == []


@pytest.mark.django_db
def test_resolving_twice_answers_200_and_changes_nothing(alice, make_user):
    letter = letter_for(alice)
    first = client_for(alice).post(f"{detail_url(letter)}resolve/").json()
    carol = make_user("carol", tenant="acme")
    second = client_for(carol).post(f"{detail_url(letter)}resolve/")
    assert second.status_code == 200
    assert (second.json()["resolved_by"], second.json()["resolved_at"]) == ("alice", first["resolved_at"])


@pytest.mark.django_db
def test_resolve_refuses_a_replayed_dead_letter_with_409(alice):
    letter = letter_for(alice)
    replayed = client_for(alice).post(f"{detail_url(letter)}replay/").json()
    body = assert_error(client_for(alice).post(f"{detail_url(letter)}resolve/"), 409, "status")
    assert replayed["id"] in body["detail"]
    assert DeadLetter.objects.get(pk=letter.pk).status == DeadLetterStatus.REPLAYED


# -- stats and auth ----------------------------------------------------------------------------
@pytest.mark.django_db
def test_stats_cover_the_whole_store_for_staff_and_the_users_own_scope_otherwise(staff, alice, bob):
    letter_for(alice, age=timedelta(minutes=10))
    letter_for(alice).mark_resolved(by="ops")
    letter_for(bob, age=timedelta(hours=2))
    poison_dead_letter()
    everything = client_for(staff).get(STATS).json()
    assert (everything["open"], everything["total"]) == (3, 4)
    assert 7100 < everything["oldest_age_seconds"] < 7300
    acme = client_for(alice).get(STATS).json()
    assert (acme["open"], acme["total"]) == (1, 2)
    assert 590 < acme["oldest_age_seconds"] < 700
    DeadLetter.objects.update(status=DeadLetterStatus.RESOLVED)
    assert client_for(alice).get(STATS).json() == {"open": 0, "oldest_age_seconds": 0.0, "total": 2}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", LETTERS),
        ("get", STATS),
        ("get", f"{LETTERS}1/"),
        ("post", f"{LETTERS}1/replay/"),
        ("post", f"{LETTERS}1/resolve/"),
    ],
)
def test_every_dead_letter_endpoint_answers_401_without_credentials(alice, method, path):
    letter_for(alice)
    response = getattr(APIClient(), method)(path)
    assert_error(response, 401)
    assert DeadLetter.objects.get().status == DeadLetterStatus.OPEN


@pytest.mark.django_db
def test_a_wrong_method_is_405_in_the_error_shape(alice):
    letter = letter_for(alice)
    assert_error(client_for(alice).get(f"{detail_url(letter)}replay/"), 405)
    assert_error(client_for(alice).delete(detail_url(letter)), 405)
    assert_error(client_for(alice).post(LETTERS, {}, format="json"), 405)


@pytest.mark.django_db
def test_the_schema_documents_the_dead_letter_endpoints(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    schema = (tmp_path / "schema.yaml").read_text()
    for operation in (
        "dead_letters_list",
        "dead_letters_retrieve",
        "dead_letters_replay",
        "dead_letters_resolve",
        "dead_letters_stats",
    ):
        assert f"operationId: {operation}" in schema


# -- end to end, with a real worker --------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_real_dead_letter_is_listed_replayed_with_an_edited_payload_and_runs_once(worker, make_user):
    # Given a job that failed for good on a real worker and was dead-lettered
    alice = make_user("alice", tenant="acme")
    api = client_for(alice)
    submitted = api.post("/api/jobs/", {"type": "diagnostics.fail", "payload": {"mode": "permanent"}}, format="json")
    failed_id = submitted.json()["id"]
    assert wait_terminal(failed_id).status == Status.FAILED
    letter = wait_for(lambda: DeadLetter.objects.filter(job_id=failed_id).first(), what="the dead letter")
    # When alice finds it in the list and replays it with a corrected payload, twice
    rows = wait_for(lambda: api.get(f"{LETTERS}?job={failed_id}").json()["results"], what="the listed letter")
    assert [(row["id"], row["reason"], row["status"]) for row in rows] == [(letter.pk, "non_retryable", "open")]
    first = api.post(f"{detail_url(letter)}replay/", {"payload": {"mode": "times", "times": 0}}, format="json")
    second = api.post(f"{detail_url(letter)}replay/", {"payload": {"mode": "times", "times": 0}}, format="json")
    # Then one new job, linked to the failed one, runs to success on the worker
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    done = wait_terminal(first.json()["id"])
    assert (done.status, str(done.retry_of_id), done.attempts) == (Status.SUCCEEDED, failed_id, 1)
    polled = api.get(f"/api/jobs/{done.pk}/").json()
    assert polled["status"] == "succeeded"
    assert Job.objects.filter(retry_of_id=failed_id).count() == 1
    detail = api.get(detail_url(letter)).json()
    assert (detail["status"], detail["replay_job"]) == ("replayed", str(done.pk))
