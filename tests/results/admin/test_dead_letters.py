"""The dead-letter admin: read-only, tenant-scoped, exact search, replay and resolve actions,
the alerts inline, and the read-only alert and throttle-window admins."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from results.admin.base import CheapCountPaginator
from results.models import (
    Alert,
    AlertStatus,
    AlertWindow,
    DeadLetter,
    DeadLetterReason,
    DeadLetterStatus,
    Job,
    Membership,
    Status,
    Tenant,
)
from tasks.submit.outbox import submit
from tests.factories import dead_letter_of, poison_dead_letter
from tests.helpers import wait_for, wait_terminal

CHANGELIST = reverse("admin:results_deadletter_changelist")
ALERTS = reverse("admin:results_alert_changelist")
WINDOWS = reverse("admin:results_alertwindow_changelist")
TRACEBACK = 'Traceback (most recent call last):\n  File "x.py"\n<script>alert(1)</script>'


def change_url(letter: DeadLetter) -> str:
    return reverse("admin:results_deadletter_change", args=[letter.pk])


def listed_ids(response: Any) -> set[int]:
    return {obj.pk for obj in response.context["cl"].result_list}


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def run_action(client: Client, action: str, letters: list[DeadLetter]) -> Any:
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [str(letter.pk) for letter in letters]}, follow=True
    )


def letter(
    *,
    tenant: Tenant | None = None,
    reason: str = DeadLetterReason.NON_RETRYABLE,
    status: str = DeadLetterStatus.OPEN,
    age: timedelta | None = None,
    payload: dict[str, Any] | None = None,
) -> DeadLetter:
    """The dead letter of a job failed for good, recorded as the dead-letter task records it."""
    job = submit("diagnostics.fail", {"mode": "permanent", "message": "card declined"}, tenant=tenant)
    if payload is not None:  # a payload the schema no longer accepts, as if the schema changed since
        Job.objects.filter(pk=job.pk).update(payload=payload)
    claim = Job(pk=job.pk).mark_started(worker="w1@test")
    assert claim is not None
    assert Job(pk=job.pk).mark_failed(error_type="PermanentError", error_message="card declined", traceback=TRACEBACK)
    return dead_letter_of(Job.objects.get(pk=job.pk), reason=reason, status=status, age=age)


@pytest.fixture
def tenant_a() -> Tenant:
    return Tenant.objects.create(name="tenant-a")


@pytest.fixture
def tenant_b() -> Tenant:
    return Tenant.objects.create(name="tenant-b")


@pytest.fixture
def tenant_staff_client(django_user_model: Any, tenant_a: Tenant) -> Client:
    """Staff (not superuser) acting for tenant A with every permission of the project's admin."""
    user = django_user_model.objects.create_user("ops-a", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="results"))
    Membership.objects.create(user=user, tenant=tenant_a)
    client = Client()
    client.force_login(user)
    return client


# -- change list -------------------------------------------------------------------------------
@pytest.mark.django_db
def test_changelist_lists_and_filters_by_status_reason_type_and_date(admin_client):
    wanted = letter()
    resolved = letter(status=DeadLetterStatus.RESOLVED)
    exhausted = letter(reason=DeadLetterReason.RETRIES_EXHAUSTED)
    old = letter(age=timedelta(days=30))
    unknown = poison_dead_letter()

    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert listed_ids(response) == {d.pk for d in (wanted, resolved, exhausted, old, unknown)}
    content = response.content.decode()
    for parameter in (
        "status__exact=resolved",
        "reason__exact=unknown_task",
        "type=diagnostics.fail",
        "type=__other__",
    ):
        assert parameter in content
    assert str(wanted.job_id) in content  # the job column links to the job
    assert reverse("admin:results_job_change", args=[wanted.job_id]) in content

    cases = {
        "status__exact=open&reason__exact=non_retryable&type=diagnostics.fail": {wanted.pk, old.pk},
        "status__exact=resolved": {resolved.pk},
        "reason__exact=retries_exhausted": {exhausted.pk},
        "type=__other__": {unknown.pk},
        "type=diagnostics.sleep": set(),
    }
    for query, expected in cases.items():
        assert listed_ids(admin_client.get(f"{CHANGELIST}?{query}")) == expected, query
    date_filter = next(spec for spec in response.context["cl"].filter_specs if spec.title == "created at")
    past_week = next(c for c in date_filter.choices(response.context["cl"]) if c["display"] == "Past 7 days")
    assert old.pk not in listed_ids(admin_client.get(CHANGELIST + past_week["query_string"]))


@pytest.mark.django_db
def test_search_finds_a_dead_letter_by_exact_message_key_job_id_or_replay_job_id(admin_client):
    target, other = letter(), letter()
    unknown = poison_dead_letter()
    run_action(admin_client, "replay", [target])
    target.refresh_from_db()
    for term in (target.message_key, str(target.job_id), str(target.replay_job_id), f'"{target.job_id}"'):
        assert listed_ids(admin_client.get(CHANGELIST, {"q": term})) == {target.pk}, term
    assert listed_ids(admin_client.get(CHANGELIST, {"q": unknown.message_key})) == {unknown.pk}
    # Exact, not a substring scan: a prefix finds nothing
    assert listed_ids(admin_client.get(CHANGELIST, {"q": str(other.job_id)[:8]})) == set()


@pytest.mark.django_db
def test_search_is_an_indexed_equality_not_a_text_scan(admin_client):
    target = letter()
    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(CHANGELIST, {"q": str(target.job_id)})
    assert listed_ids(response) == {target.pk}
    queries = [q["sql"] for q in ctx.captured_queries if '"results_deadletter"' in q["sql"]]
    assert queries
    for sql in queries:
        assert not re.search(r"LIKE|UPPER\(|::text", sql, re.IGNORECASE), sql


@pytest.mark.django_db
def test_changelist_counts_cheaply_and_never_loads_the_large_columns(admin_client):
    for _ in range(3):
        letter()
    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(CHANGELIST)
    assert isinstance(response.context["cl"].paginator, CheapCountPaginator)
    counts = [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper() and "deadletter" in q["sql"]]
    assert counts
    for sql in counts:
        assert "LIMIT" in sql.upper(), sql  # COUNT(*) over a capped subquery, never the bare table
    page = [q["sql"] for q in ctx.captured_queries if '"results_deadletter"' in q["sql"] and "ORDER BY" in q["sql"]]
    assert page
    for sql in page:
        for column in ("traceback", "body", "raw_body", "headers", "error_message"):
            assert f'"results_deadletter"."{column}"' not in sql, sql


# -- change page -------------------------------------------------------------------------------
@pytest.mark.django_db
def test_change_page_shows_the_message_traceback_links_and_alerts_read_only(admin_client):
    dead = letter()
    Alert.objects.create(
        key="diagnostics.fail|PermanentError",
        channel="webhook",
        dead_letter=dead,
        subject="[Terminus] diagnostics.fail failed: PermanentError",
        text="t",
        status=AlertStatus.SENT,
        sent_at=timezone.now(),
        duration_ms=12,
    )
    Alert.objects.create(
        key="diagnostics.fail|PermanentError",
        channel="mail",
        dead_letter=dead,
        subject="[Terminus] diagnostics.fail failed: PermanentError",
        text="t",
        status=AlertStatus.FAILED,
        error="mail failed: connection refused",
    )
    run_action(admin_client, "replay", [dead])
    dead.refresh_from_db()

    response = admin_client.get(change_url(dead))
    assert response.status_code == 200
    content = response.content.decode()
    # The message's body and headers as indented JSON, HTML-escaped, and the traceback in a <pre>
    assert "&quot;kwargs&quot;: {\n" in content and "&quot;mode&quot;: &quot;permanent&quot;" in content
    assert f"&quot;correlation_id&quot;: &quot;{dead.headers['correlation_id']}&quot;" in content
    assert re.search(r"<pre[^>]*>Traceback \(most recent call last\):\n", content)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content and "<script>alert(1)" not in content
    # Links to the failed job and to the job its replay created
    assert reverse("admin:results_job_change", args=[dead.job_id]) in content
    assert reverse("admin:results_job_change", args=[dead.replay_job_id]) in content
    # Every alert, inline and read-only
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.total_form_count() == 2
    assert "mail failed: connection refused" in content
    assert 'name="_save"' not in content and 'name="status"' not in content


@pytest.mark.django_db
def test_a_poison_message_change_page_says_it_has_no_job(admin_client):
    unknown = poison_dead_letter()
    content = admin_client.get(change_url(unknown)).content.decode()
    assert "no job: a message that never ran" in content
    assert "&quot;invoice&quot;: 7" in content


@pytest.mark.django_db
def test_admin_cannot_add_edit_or_delete_dead_letters_alerts_or_windows_even_as_superuser(admin_client):
    dead = letter()
    alert = Alert.objects.create(key="k", channel="webhook", dead_letter=dead, subject="s", text="t")
    window = AlertWindow.objects.create(key="k", opened_at=timezone.now(), count=3, reported=1)
    for name, obj in (("deadletter", dead), ("alert", alert), ("alertwindow", window)):
        assert admin_client.get(reverse(f"admin:results_{name}_add")).status_code == 403
        assert (
            admin_client.post(reverse(f"admin:results_{name}_change", args=[obj.pk]), {"status": "x"}).status_code
            == 403
        )
        assert (
            admin_client.post(reverse(f"admin:results_{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code
            == 403
        )
    assert DeadLetter.objects.get().status == DeadLetterStatus.OPEN
    assert (Alert.objects.count(), AlertWindow.objects.count()) == (1, 1)


@pytest.mark.django_db
def test_the_job_change_page_shows_when_it_was_dead_lettered(admin_client):
    dead = letter()
    Job.objects.filter(pk=dead.job_id).update(dead_lettered_at=timezone.now())
    response = admin_client.get(reverse("admin:results_job_change", args=[dead.job_id]))
    assert response.status_code == 200
    assert "dead_lettered_at" in response.context["adminform"].readonly_fields
    assert "Dead lettered at" in response.content.decode()


# -- actions -----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_replay_action_replays_open_dead_letters_and_reports_skipped_and_refused_ones(admin_client):
    first, second = letter(), letter()
    resolved = letter(status=DeadLetterStatus.RESOLVED)
    unknown = poison_dead_letter()
    response = run_action(admin_client, "replay", [first, second, resolved, unknown])
    assert response.status_code == 200
    shown = messages_of(response)
    assert "Replayed 2 dead letters as new jobs." in shown
    assert "Skipped 1 dead letter that is not open." in shown
    assert any(
        m.startswith(f"Could not replay 1 dead letter: {unknown.pk}: ") and "billing.nonexistent" in m for m in shown
    )
    for dead in (first, second):
        dead.refresh_from_db()
        assert dead.status == DeadLetterStatus.REPLAYED
        assert Job.objects.get(pk=dead.replay_job_id).retry_of_id == dead.job_id
    assert DeadLetter.objects.get(pk=unknown.pk).status == DeadLetterStatus.OPEN
    assert not Job.objects.filter(retry_of=resolved.job_id).exists()
    # Replaying the same ones again runs nothing twice
    again = messages_of(run_action(admin_client, "replay", [first, second]))
    assert again == ["Skipped 2 dead letters that are not open."]
    assert Job.objects.filter(retry_of__isnull=False).count() == 2


@pytest.mark.django_db
def test_replay_action_messages_are_singular_for_one_and_name_an_invalid_payload(admin_client):
    assert messages_of(run_action(admin_client, "replay", [letter()])) == ["Replayed 1 dead letter as a new job."]
    broken = letter(payload={"mode": "explode"})
    [message] = messages_of(run_action(admin_client, "replay", [broken]))
    assert message.startswith(f"Could not replay 1 dead letter: {broken.pk}: ") and "payload.mode" in message


@pytest.mark.django_db
def test_resolve_action_resolves_open_ones_records_who_and_reports_skipped(admin_client, admin_user):
    dead, replayed = letter(), letter()
    run_action(admin_client, "replay", [replayed])
    shown = messages_of(run_action(admin_client, "resolve", [dead, replayed]))
    assert shown == ["Resolved 1 dead letter.", "Skipped 1 dead letter that is not open."]
    dead.refresh_from_db()
    assert (dead.status, dead.resolved_by) == (DeadLetterStatus.RESOLVED, admin_user.get_username())
    assert DeadLetter.objects.get(pk=replayed.pk).status == DeadLetterStatus.REPLAYED


@pytest.mark.django_db
def test_an_action_refuses_a_selection_above_its_limit(admin_client, monkeypatch):
    monkeypatch.setattr("results.admin.base.MAX_ACTION_ROWS", 2)
    letters = [letter() for _ in range(3)]
    [message] = messages_of(run_action(admin_client, "resolve", letters))
    assert message == "Select at most 2 dead letters to resolve; narrow the filter."
    assert not DeadLetter.objects.exclude(status=DeadLetterStatus.OPEN).exists()


@pytest.mark.django_db
def test_staff_with_view_permission_only_get_no_actions(django_user_model):
    user = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="results", codename="view_deadletter"))
    client = Client()
    client.force_login(user)
    dead = letter()
    response = client.get(CHANGELIST)
    assert response.status_code == 200 and listed_ids(response) == {dead.pk}
    assert response.context["action_form"] is None
    assert client.get(change_url(dead)).status_code == 200  # the alerts inline is viewable too
    run_action(client, "replay", [dead])
    run_action(client, "resolve", [dead])
    assert DeadLetter.objects.get(pk=dead.pk).status == DeadLetterStatus.OPEN


# -- tenant scope ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_tenant_staff_see_and_act_on_their_tenants_dead_letters_and_alerts_only(
    tenant_staff_client, tenant_a, tenant_b
):
    mine, theirs, unknown = letter(tenant=tenant_a), letter(tenant=tenant_b), poison_dead_letter()
    my_alert = Alert.objects.create(key="k", channel="webhook", dead_letter=mine, subject="s", text="t")
    Alert.objects.create(key="k", channel="webhook", dead_letter=theirs, subject="s", text="t")
    Alert.objects.create(key="k", channel="webhook", dead_letter=None, count=5, subject="summary", text="t")
    AlertWindow.objects.create(key="diagnostics.fail|PermanentError", opened_at=timezone.now(), count=9, reported=1)

    assert listed_ids(tenant_staff_client.get(CHANGELIST)) == {mine.pk}
    assert listed_ids(tenant_staff_client.get(CHANGELIST, {"q": str(theirs.job_id)})) == set()
    assert listed_ids(tenant_staff_client.get(CHANGELIST, {"q": unknown.message_key})) == set()
    assert tenant_staff_client.get(change_url(mine)).status_code == 200
    assert tenant_staff_client.get(change_url(theirs)).status_code in (302, 404)
    assert listed_ids(tenant_staff_client.get(ALERTS)) == {my_alert.pk}
    assert listed_ids(tenant_staff_client.get(WINDOWS)) == set()
    # Acting on another tenant's dead letter does nothing
    run_action(tenant_staff_client, "resolve", [mine, theirs])
    assert DeadLetter.objects.get(pk=mine.pk).status == DeadLetterStatus.RESOLVED
    assert DeadLetter.objects.get(pk=theirs.pk).status == DeadLetterStatus.OPEN


@pytest.mark.django_db
def test_superusers_see_every_dead_letter_alert_and_window(admin_client, tenant_a, tenant_b):
    letters = [letter(tenant=tenant_a), letter(tenant=tenant_b), poison_dead_letter()]
    alerts = [
        Alert.objects.create(key="k", channel="mail", dead_letter=letters[0], subject="s", text="t"),
        Alert.objects.create(key="k", channel="webhook", dead_letter=None, count=5, subject="summary", text="t"),
    ]
    window = AlertWindow.objects.create(key="k", opened_at=timezone.now(), count=9, reported=1)
    assert listed_ids(admin_client.get(CHANGELIST)) == {d.pk for d in letters}
    assert listed_ids(admin_client.get(ALERTS)) == {a.pk for a in alerts}
    assert listed_ids(admin_client.get(f"{ALERTS}?channel=mail")) == {alerts[0].pk}
    assert listed_ids(admin_client.get(f"{ALERTS}?q=k")) == {a.pk for a in alerts}
    windows = admin_client.get(WINDOWS)
    assert listed_ids(windows) == {window.pk}
    assert ">8<" in windows.content.decode()  # failures still waiting for a summary
    summary = admin_client.get(reverse("admin:results_alert_change", args=[alerts[1].pk])).content.decode()
    assert "not about one dead letter" in summary


# -- end to end, with a real worker --------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_dead_letter_replayed_from_the_admin_runs_again_and_failing_again_is_a_new_dead_letter(
    worker, django_user_model
):
    # Given a job that failed for good on a real worker and was dead-lettered
    failed = submit("diagnostics.fail", {"mode": "permanent", "message": "still broken"})
    assert wait_terminal(failed.pk).status == Status.FAILED
    dead = wait_for(lambda: DeadLetter.objects.filter(job_id=failed.pk).first(), what="the dead letter")
    admin = django_user_model.objects.create_superuser("root", password="x")
    client = Client()
    client.force_login(admin)
    # When an operator replays it from the admin (the cause is not fixed yet)
    assert messages_of(run_action(client, "replay", [dead])) == ["Replayed 1 dead letter as a new job."]
    # Then the new job runs on the worker, linked to the first, and its failure is a dead letter of its own
    dead.refresh_from_db()
    assert dead.status == DeadLetterStatus.REPLAYED
    rerun = wait_terminal(dead.replay_job_id)
    assert (rerun.status, rerun.retry_of_id, rerun.attempts) == (Status.FAILED, failed.pk, 1)
    again = wait_for(lambda: DeadLetter.objects.filter(job_id=rerun.pk).first(), what="the rerun's dead letter")
    assert (again.status, again.error_message) == (DeadLetterStatus.OPEN, "still broken")
    assert listed_ids(client.get(CHANGELIST, {"status__exact": "open"})) == {again.pk}
