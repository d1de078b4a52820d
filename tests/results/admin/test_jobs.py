"""The job admin: read-only, tenant-scoped, exact indexed search, and no full-table count per page."""

from __future__ import annotations

import re
import uuid
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
from results.models import AttemptOutcome, Job, JobAttempt, Membership, Status, Tenant
from tests.helpers import wait_terminal

CHANGELIST = reverse("admin:results_job_changelist")


def change_url(job: Job) -> str:
    return reverse("admin:results_job_change", args=[job.pk])


def make_job(**fields: Any) -> Job:
    now = timezone.now()
    defaults: dict[str, Any] = {
        "type": "diagnostics.sleep",
        "payload": {"seconds": 0},
        "terminal_by": now + timedelta(hours=1),
        "correlation_id": uuid.uuid4().hex,
    }
    return Job.objects.create(**{**defaults, **fields})


def listed_ids(response: Any) -> set[str]:
    return {str(job.pk) for job in response.context["cl"].result_list}


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def run_action(client: Client, action: str, jobs: list[Job]) -> Any:
    return client.post(CHANGELIST, {"action": action, "_selected_action": [str(job.pk) for job in jobs]}, follow=True)


@pytest.fixture
def tenant_a() -> Tenant:
    return Tenant.objects.create(name="tenant-a")


@pytest.fixture
def tenant_b() -> Tenant:
    return Tenant.objects.create(name="tenant-b")


@pytest.fixture
def tenant_staff_client(django_user_model: Any, tenant_a: Tenant) -> Client:
    """A staff user (not superuser) acting for tenant A, allowed to view and operate jobs."""
    user = django_user_model.objects.create_user("ops-a", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="results", codename__in=["view_job", "change_job"])
    )
    Membership.objects.create(user=user, tenant=tenant_a)
    client = Client()
    client.force_login(user)
    return client


# -- change list -----------------------------------------------------------------------------
@pytest.mark.django_db
def test_changelist_renders_and_filters_by_status_type_queue_and_date(admin_client):
    # Given jobs that differ in one filtered attribute each
    wanted = make_job(type="webhook.deliver", status=Status.FAILED, queue="default")
    other_status = make_job(type="webhook.deliver", status=Status.SUCCEEDED)
    other_type = make_job(type="diagnostics.sleep", status=Status.FAILED)
    other_queue = make_job(type="webhook.deliver", status=Status.FAILED, queue="slow")
    old = make_job(type="webhook.deliver", status=Status.FAILED, created_at=timezone.now() - timedelta(days=30))

    # When the list is shown unfiltered, then every job is on it with every filter offered
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert listed_ids(response) == {str(j.pk) for j in (wanted, other_status, other_type, other_queue, old)}
    content = response.content.decode()
    for parameter in ("status__exact=failed", "type=webhook.deliver", "queue=slow", "created_at__gte="):
        assert parameter in content

    # When every filter is applied (the date one as its "Past 7 days" link), only the matching job is listed
    date_filter = next(spec for spec in response.context["cl"].filter_specs if spec.title == "created at")
    past_week = next(
        choice for choice in date_filter.choices(response.context["cl"]) if choice["display"] == "Past 7 days"
    )
    response = admin_client.get(
        CHANGELIST + past_week["query_string"] + "&status__exact=failed&type=webhook.deliver&queue=default"
    )
    assert response.status_code == 200
    assert listed_ids(response) == {str(wanted.pk)}


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["id", "correlation_id", "idempotency_key"])
def test_search_finds_a_job_by_exact_id_correlation_id_or_idempotency_key(admin_client, field):
    target = make_job(idempotency_key="order-42-refund")
    make_job(idempotency_key="order-43-refund")
    term = str(getattr(target, field))

    response = admin_client.get(CHANGELIST, {"q": term})
    assert response.status_code == 200
    assert listed_ids(response) == {str(target.pk)}

    # Exact match, not a substring scan: a prefix of the same value finds nothing
    response = admin_client.get(CHANGELIST, {"q": term[:8]})
    assert listed_ids(response) == set()


@pytest.mark.django_db
def test_search_by_id_is_an_indexed_equality_not_a_text_scan(admin_client):
    target = make_job()
    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(CHANGELIST, {"q": str(target.pk)})
    assert listed_ids(response) == {str(target.pk)}
    job_queries = [q["sql"] for q in ctx.captured_queries if '"results_job"' in q["sql"]]
    assert job_queries
    for sql in job_queries:
        assert not re.search(r"LIKE|CAST\(|UPPER\(|::text", sql, re.IGNORECASE), sql
    if connection.vendor == "postgresql":
        # With sequential scans priced out, the plan uses an index only if one can serve the search.
        queryset = response.context["cl"].queryset
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
        plan = queryset.explain()
        assert "Seq Scan on results_job" not in plan, plan


@pytest.mark.django_db
def test_changelist_never_counts_the_whole_table(admin_client):
    for _ in range(3):
        make_job()
    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    counts = [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "expected the capped count query"
    for sql in counts:
        # Every count is bounded: COUNT(*) over a LIMITed subquery, never a bare COUNT(*) of the table.
        assert "LIMIT" in sql.upper(), sql
        assert not re.match(r'SELECT COUNT\(\*\)( AS "__count")? FROM "results_job"\s*$', sql.strip()), sql


@pytest.mark.django_db
def test_changelist_does_not_load_payload_result_or_traceback(admin_client):
    make_job(payload={"seconds": 0, "pad": "x" * 1000}, traceback="Traceback ...", result={"big": "y"})
    with CaptureQueriesContext(connection) as ctx:
        admin_client.get(CHANGELIST)
    page = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("SELECT") and "ORDER BY" in q["sql"]]
    assert page
    for sql in page:
        for column in ("payload", "result", "traceback"):
            assert f'"results_job"."{column}"' not in sql, sql


@pytest.mark.django_db
def test_changelist_query_count_does_not_grow_with_rows(
    admin_client, admin_user, django_assert_max_num_queries, tenant_a
):
    def render() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(CHANGELIST).status_code == 200
        return len(ctx.captured_queries)

    # Given one job, then 30 more, each with its own tenant and an owner (the columns that join)
    make_job(tenant=tenant_a, owner=admin_user)
    few = render()
    for _ in range(30):
        make_job(tenant=Tenant.objects.create(name=f"t-{uuid.uuid4().hex[:6]}"), owner=admin_user)
    assert render() == few
    with django_assert_max_num_queries(few):
        admin_client.get(CHANGELIST)


@pytest.mark.django_db
def test_paginator_reports_an_estimate_or_a_cap_past_its_count_limit(admin_client, monkeypatch):
    # Given more jobs than the paginator counts exactly
    monkeypatch.setattr(CheapCountPaginator, "exact_count_limit", 5)
    Job.objects.bulk_create(
        Job(type="diagnostics.sleep", terminal_by=timezone.now() + timedelta(hours=1)) for _ in range(12)
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE results_job")
    # When the unfiltered list is shown
    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(CHANGELIST, {"p": 2})
    assert response.status_code == 200
    cl = response.context["cl"]
    assert cl.paginator.approximate
    if connection.vendor == "postgresql":
        # Then PostgreSQL's estimate stands in for the count: no COUNT query at all
        assert cl.result_count == 12
        assert not [q for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()]
        assert "About 12 jobs" in response.content.decode()
    else:
        # Then the count stops at the limit and says so
        assert cl.result_count == 5
        assert "More than 5 jobs match" in response.content.decode()
    # And a filtered list is counted by a capped query whatever the database
    response = admin_client.get(CHANGELIST, {"status__exact": "queued"})
    assert response.context["cl"].result_count == 5
    assert response.context["cl"].paginator.approximate


@pytest.mark.django_db
def test_paginator_counts_exactly_below_its_limit(admin_client):
    for _ in range(3):
        make_job()
    response = admin_client.get(CHANGELIST)
    cl = response.context["cl"]
    assert cl.result_count == 3
    assert not cl.paginator.approximate
    assert "More than" not in response.content.decode()


# -- change view -----------------------------------------------------------------------------
@pytest.mark.django_db
def test_change_view_shows_pretty_json_traceback_and_attempts_read_only(admin_client):
    job = make_job(
        status=Status.FAILED,
        payload={"url": "https://example.test/hook", "body": {"order": 42}},
        result={"status_code": 500},
        error_type="WebhookError",
        traceback='Traceback (most recent call last):\n  File "x.py"\n<script>alert(1)</script>',
    )
    JobAttempt.objects.create(job=job, number=1, outcome=AttemptOutcome.RETRIED, error_type="WebhookError")
    JobAttempt.objects.create(job=job, number=2, outcome=AttemptOutcome.FAILED, error_type="WebhookError")

    response = admin_client.get(change_url(job))
    assert response.status_code == 200
    content = response.content.decode()
    # JSON is indented, keys sorted, inside <pre>, and HTML-escaped
    assert "{\n  &quot;body&quot;: {\n    &quot;order&quot;: 42\n  },\n  &quot;url&quot;:" in content
    assert "&quot;status_code&quot;: 500" in content
    assert re.search(r"<pre[^>]*>Traceback \(most recent call last\):\n", content)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content and "<script>alert(1)" not in content
    # Read-only: no form inputs for the record, attempts listed, no save button
    assert 'name="payload"' not in content and 'name="status"' not in content
    assert 'name="_save"' not in content
    assert content.count("WebhookError") >= 3  # the job and both attempts
    assert history_outcomes(content) == ["retried", "failed"]


def history_outcomes(content: str) -> list[str]:
    """The outcome column of the change page's attempt history table."""
    table = re.search(r'<table class="attempt-history">.*?<tbody>(.*?)</tbody>', content, re.S)
    assert table, "no attempt history on the page"
    return re.findall(r"<tr><td>\d+</td><td>(\w+)</td>", table.group(1))


@pytest.mark.django_db
def test_change_view_lists_the_attempt_the_job_row_describes(admin_client):
    running = make_job(status=Status.RUNNING, attempts=2, worker="w2", started_at=timezone.now())
    JobAttempt.objects.create(job=running, number=1, outcome=AttemptOutcome.LOST, error_type="worker_lost")
    assert history_outcomes(admin_client.get(change_url(running)).content.decode()) == ["lost", "running"]
    Job(pk=running.pk).mark_succeeded(result={})
    assert history_outcomes(admin_client.get(change_url(running)).content.decode()) == ["lost", "succeeded"]
    assert "no attempt yet" in admin_client.get(change_url(make_job(status=Status.QUEUED))).content.decode()


@pytest.mark.django_db
def test_admin_cannot_add_edit_or_delete_jobs_even_as_superuser(admin_client):
    job = make_job(status=Status.FAILED)
    assert admin_client.get(reverse("admin:results_job_add")).status_code == 403
    assert admin_client.post(change_url(job), {"type": "x", "status": "succeeded"}).status_code == 403
    assert admin_client.get(reverse("admin:results_job_delete", args=[job.pk])).status_code == 403
    response = admin_client.get(CHANGELIST)
    actions = [value for value, _label in response.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in actions
    assert {"retry", "cancel"} <= set(actions)
    job.refresh_from_db()
    assert (job.type, job.status) == ("diagnostics.sleep", Status.FAILED)


# -- actions ---------------------------------------------------------------------------------
@pytest.mark.django_db
def test_retry_action_reruns_failed_and_cancelled_jobs_and_reports_skipped_ones(admin_client):
    failed = make_job(status=Status.FAILED, payload={"seconds": 0.5})
    cancelled = make_job(status=Status.CANCELLED)
    succeeded = make_job(status=Status.SUCCEEDED)

    response = run_action(admin_client, "retry", [failed, cancelled, succeeded])

    assert response.status_code == 200
    assert "Retried 2 jobs as new jobs." in messages_of(response)
    assert "Skipped 1 job that is not failed or cancelled." in messages_of(response)
    reruns = Job.objects.filter(retry_of__isnull=False)
    assert {r.retry_of_id for r in reruns} == {failed.pk, cancelled.pk}
    rerun_of_failed = reruns.get(retry_of=failed)
    assert rerun_of_failed.status == Status.QUEUED
    assert rerun_of_failed.payload == {"seconds": 0.5, "heartbeat_every": 1.0, "leak_mb": 0}
    assert rerun_of_failed.correlation_id == failed.correlation_id
    assert not Job.objects.filter(retry_of=succeeded).exists()


@pytest.mark.django_db
def test_retry_action_message_is_singular_for_one_job(admin_client):
    response = run_action(admin_client, "retry", [make_job(status=Status.FAILED)])
    assert messages_of(response) == ["Retried 1 job as a new job."]


@pytest.mark.django_db(transaction=True)
def test_a_job_retried_from_the_admin_runs_to_success_on_a_worker(worker, django_user_model):
    # Given a failed job and a logged-in superuser
    admin = django_user_model.objects.create_superuser("root", password="x")
    client = Client()
    client.force_login(admin)
    failed = make_job(status=Status.FAILED, payload={"seconds": 0.1, "heartbeat_every": 0.1})
    # When it is retried from the admin
    response = run_action(client, "retry", [failed])
    assert "Retried 1 job as a new job." in messages_of(response)
    # Then the new job is published and a real worker runs it to success
    rerun = Job.objects.get(retry_of=failed)
    done = wait_terminal(rerun.pk)
    assert done.status == Status.SUCCEEDED
    assert done.result["slept"] >= 0.1


@pytest.mark.django_db
def test_cancel_action_cancels_open_jobs_and_reports_finished_ones(admin_client):
    queued = make_job(status=Status.QUEUED)
    running = make_job(status=Status.RUNNING, attempts=1, worker="w1")
    retrying = make_job(status=Status.RETRYING)
    done = make_job(status=Status.SUCCEEDED)

    response = run_action(admin_client, "cancel", [queued, running, retrying, done])

    assert "Cancelled 3 jobs." in messages_of(response)
    assert "Skipped 1 job that had already finished." in messages_of(response)
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses == {
        queued.pk: Status.CANCELLED,
        running.pk: Status.CANCELLED,
        retrying.pk: Status.CANCELLED,
        done.pk: Status.SUCCEEDED,
    }
    assert Job.objects.get(pk=queued.pk).error_message == "cancelled by admin in the admin"
    assert JobAttempt.objects.filter(job=running).values_list("number", "worker", "outcome").get() == (
        1,
        "w1",
        AttemptOutcome.CANCELLED,
    )


@pytest.mark.django_db
def test_cancel_action_message_is_singular_for_one_job(admin_client):
    response = run_action(admin_client, "cancel", [make_job(status=Status.QUEUED)])
    assert messages_of(response) == ["Cancelled 1 job."]


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_an_action_refuses_a_selection_above_its_limit(admin_client, monkeypatch, action):
    # Given a limit of 2 jobs per action and 3 matching jobs, all selected with "select all"
    monkeypatch.setattr("results.admin.base.MAX_ACTION_ROWS", 2)
    jobs = [make_job(status=Status.FAILED if action == "retry" else Status.QUEUED) for _ in range(3)]
    response = admin_client.post(
        CHANGELIST,
        {"action": action, "select_across": "1", "_selected_action": [str(jobs[0].pk)]},
        follow=True,
    )
    assert messages_of(response) == [f"Select at most 2 jobs to {action}; narrow the filter."]
    assert not Job.objects.filter(retry_of__isnull=False).exists()
    assert not Job.objects.filter(status=Status.CANCELLED).exists()


@pytest.mark.django_db
def test_staff_with_view_permission_only_gets_no_actions(django_user_model):
    user = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="results", codename="view_job"))
    client = Client()
    client.force_login(user)
    job = make_job(status=Status.QUEUED)
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert listed_ids(response) == {str(job.pk)}
    assert response.context["action_form"] is None
    # Posting the action anyway does nothing
    response = run_action(client, "cancel", [job])
    assert response.status_code == 200
    assert Job.objects.get(pk=job.pk).status == Status.QUEUED


# -- tenant scope ----------------------------------------------------------------------------
@pytest.mark.django_db
def test_tenant_staff_see_only_their_tenants_jobs(tenant_staff_client, tenant_a, tenant_b):
    mine = make_job(tenant=tenant_a)
    theirs = make_job(tenant=tenant_b)
    untenanted = make_job()

    response = tenant_staff_client.get(CHANGELIST)
    assert response.status_code == 200
    assert listed_ids(response) == {str(mine.pk)}
    # Not even by searching for the other tenant's id
    assert listed_ids(tenant_staff_client.get(CHANGELIST, {"q": str(theirs.pk)})) == set()
    assert listed_ids(tenant_staff_client.get(CHANGELIST, {"q": str(untenanted.pk)})) == set()
    assert tenant_staff_client.get(change_url(mine)).status_code == 200


@pytest.mark.django_db
def test_tenant_staff_get_no_change_page_for_another_tenants_job(tenant_staff_client, tenant_b):
    theirs = make_job(tenant=tenant_b, payload={"secret": "tenant-b-data"})
    response = tenant_staff_client.get(change_url(theirs))
    # Django's admin answers a missing object with a redirect to the index and a message
    assert response.status_code in (302, 404)
    if response.status_code == 302:
        assert response["Location"] == reverse("admin:index")
    assert "tenant-b-data" not in response.content.decode()


@pytest.mark.django_db
def test_tenant_staff_cannot_cancel_another_tenants_job(tenant_staff_client, tenant_a, tenant_b):
    mine = make_job(tenant=tenant_a, status=Status.QUEUED)
    theirs = make_job(tenant=tenant_b, status=Status.QUEUED)
    run_action(tenant_staff_client, "cancel", [mine, theirs])
    assert Job.objects.get(pk=mine.pk).status == Status.CANCELLED
    assert Job.objects.get(pk=theirs.pk).status == Status.QUEUED


@pytest.mark.django_db
def test_superuser_sees_every_tenants_jobs(admin_client, tenant_a, tenant_b):
    jobs = [make_job(tenant=tenant_a), make_job(tenant=tenant_b), make_job()]
    assert listed_ids(admin_client.get(CHANGELIST)) == {str(j.pk) for j in jobs}
