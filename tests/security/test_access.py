"""Who may reach what: authentication on every route, tenant isolation on every object, staff-only admin.

The routes are read from the URL conf itself (``get_resolver()``, recursively), so a route added
later is covered without editing these tests: it either requires authentication, or it is in
PUBLIC_ROUTES below, or a test fails. Routes that address an object by id must be listed in
ID_ROUTES with the kind of object they address, or the tenant-isolation test fails.
"""

from __future__ import annotations

import re
import re._constants as sre_constants
import re._parser as sre_parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from rest_framework.test import APIClient

from results.models import Alert, DeadLetter, Job, Membership, Tenant
from tests.factories import client_for
from tests.security.helpers import TenantJobs, assert_error_shape, jobs_in_every_state

METHODS = ("get", "head", "post", "put", "patch", "delete", "options")

#: Routes anyone may call, by URL name: probes, the schema (documented as public), sign-in/out.
PUBLIC_ROUTES = {
    "healthz": "liveness probe, no data",
    "readyz": "readiness probe, no data",
    "metrics": "Prometheus scrape (token-protected by its own setting where configured)",
    "api-schema": "the OpenAPI document is public: it describes the API, it holds no data",
    "api-docs": "Swagger UI over that same public schema (try-it-out needs a token)",
    "api-redoc": "Redoc over that same public schema",
    "admin:login": "the admin's sign-in form",
    "admin:logout": "signing out needs no account (an anonymous call is sent to the sign-in page)",
    "login": "the browser sign-in form",
    "logout": "signing out needs no account",
}

#: Routes with an object id in the path -> the kind of object the id names.
ID_ROUTES = {
    "api-job-detail": "job",
    "api-job-cancel": "job",
    "api-job-retry": "job",
    "web-job": "job",
    "api-dead-letter-detail": "dead_letter",
    "api-dead-letter-replay": "dead_letter",
    "api-dead-letter-resolve": "dead_letter",
}


# -- the URL conf, enumerated -----------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    name: str  # "namespace:name", or the regex when the route has no name
    regex: str
    pattern: URLPattern
    params: tuple[str, ...]

    def sample_path(self, value: str | None = None) -> str:
        """A path this route (and no earlier one) resolves, with every parameter set to ``value``."""
        path = "/" + sample(self.regex, value)
        match = resolve(path)
        assert match.func is self.pattern.callback, f"sample {path!r} of {self.name} resolved to {match.view_name}"
        return path


def routes() -> list[Route]:
    def walk(resolver: URLResolver, prefix: str, namespace: str) -> Iterator[Route]:
        for entry in resolver.url_patterns:
            regex = prefix + _strip_anchors(entry.pattern.regex.pattern)
            if isinstance(entry, URLResolver):
                inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
                yield from walk(entry, regex, inner)
            else:
                name = f"{namespace}{entry.name}" if entry.name else regex
                yield Route(name, regex, entry, tuple(re.compile(regex).groupindex))

    return list(walk(get_resolver(), "", ""))


def _strip_anchors(regex: str) -> str:
    return regex.removeprefix("^").removesuffix(r"\Z").removesuffix("$")


def sample(regex: str, value: str | None = None) -> str:
    """The shortest-ish string ``regex`` matches; named groups become ``value`` when given."""
    return _emit(sre_parse.parse(regex), value)


def _emit(parsed: Any, value: str | None) -> str:
    out = []
    for op, arg in parsed:
        if op is sre_constants.LITERAL:
            out.append(chr(arg))
        elif op is sre_constants.NOT_LITERAL:
            out.append("x" if chr(arg) != "x" else "y")
        elif op is sre_constants.ANY:
            out.append("x")
        elif op is sre_constants.IN:
            out.append(_pick(arg))
        elif op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
            low, _high, body = arg
            out.append(_emit(body, value) * max(low, 1))
        elif op is sre_constants.SUBPATTERN:
            group, *_flags, body = arg
            out.append(value if value is not None and group is not None else _emit(body, value))
        elif op is sre_constants.BRANCH:
            out.append(_emit(arg[1][0], value))
        elif op is sre_constants.AT:
            continue
        else:
            raise AssertionError(f"teach sample() the regex construct {op}")
    return "".join(out)


def _pick(items: list[tuple[Any, Any]]) -> str:
    if items and items[0][0] is sre_constants.NEGATE:
        excluded = {chr(arg) for op, arg in items[1:] if op is sre_constants.LITERAL}
        return next(char for char in "xyz0" if char not in excluded)
    op, arg = items[0]
    if op is sre_constants.LITERAL:
        return chr(arg)
    if op is sre_constants.RANGE:
        return chr(arg[0])
    if op is sre_constants.CATEGORY:
        return "0" if "DIGIT" in str(arg) else "x"
    raise AssertionError(f"teach _pick() the set construct {op}")


def login_urls() -> set[str]:
    return {reverse("admin:login"), str(settings.LOGIN_URL)}


def assert_denied(response: Any, path: str, method: str) -> None:
    """Anonymous (or not allowed): 401 in the API's error shape, or a redirect to a sign-in page."""
    where = f"{method.upper()} {path}"
    if path.startswith("/api/"):
        assert response.status_code == 401, (where, response.status_code)
        assert response["WWW-Authenticate"] == "Token", where
        if method != "head":
            assert_error_shape(response, 401)
        return
    assert response.status_code in {301, 302, 303, 307}, (where, response.status_code)
    assert urlsplit(response["Location"]).path in login_urls(), (where, response["Location"])


# -- authentication ---------------------------------------------------------------------------
def test_the_url_conf_is_enumerated_with_a_sample_path_for_every_route():
    found = routes()
    names = {route.name for route in found}
    assert {"healthz", "api-schema", "api-job-list", "api-job-detail", "admin:index"} <= names
    for route in found:
        route.sample_path()  # each resolves to its own view: the tests below reach every route


@pytest.mark.django_db
def test_every_route_refuses_anonymous_callers_except_the_public_ones():
    client = Client()
    public_seen = set()
    for route in routes():
        if route.name in PUBLIC_ROUTES:
            public_seen.add(route.name)
            path = route.sample_path()
            response = client.get(path)
            # Answered to anyone: no sign-in asked (a probe may say 503: not ready).
            assert response.status_code not in {401, 403, 500}, (path, response.status_code)
            assert urlsplit(response.get("Location", "")).path not in login_urls(), path
            continue
        path = route.sample_path()
        for method in METHODS:
            assert_denied(getattr(client, method)(path), path, method)
    assert {"healthz", "api-schema"} <= public_seen
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_the_public_routes_answer_without_an_account():
    client = Client()
    assert client.get(reverse("healthz")).json() == {"status": "ok"}
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200 and "/api/jobs/" in schema.json()["paths"]
    assert client.get(reverse("admin:login")).status_code == 200


@pytest.mark.django_db
def test_every_admin_route_sends_a_signed_in_non_staff_user_to_the_sign_in_page(make_user):
    client = Client()
    client.force_login(make_user("mallory", tenant="acme"))
    admin_routes = [route for route in routes() if route.name.startswith("admin:") or route.regex.startswith("admin/")]
    assert len(admin_routes) > 10
    for route in admin_routes:
        if route.name in PUBLIC_ROUTES:
            continue
        path = route.sample_path()
        for method in ("get", "post"):
            response = getattr(client, method)(path)
            assert response.status_code == 302, (method, path, response.status_code)
            assert urlsplit(response["Location"]).path == reverse("admin:login"), (method, path)


@pytest.mark.django_db
def test_a_non_staff_user_cannot_sign_in_to_the_admin(make_user):
    make_user("mallory", tenant="acme")
    client = Client()
    response = client.post(reverse("admin:login"), {"username": "mallory", "password": "pw-mallory"})
    assert response.status_code == 200  # the form again, with an error
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("admin:index")).status_code == 302


@pytest.mark.django_db
def test_a_deactivated_users_token_and_session_are_refused(make_user):
    mallory = make_user("mallory", tenant="acme")
    api = client_for(mallory)
    session = APIClient()
    session.force_login(mallory)
    mallory.is_active = False
    mallory.save(update_fields=["is_active"])
    assert_error_shape(api.get("/api/jobs/"), 401)
    assert session.get("/api/jobs/").status_code in {401, 403}


@pytest.mark.django_db
def test_a_signed_in_browser_cannot_submit_without_a_csrf_token(alice):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(alice)
    response = browser.post("/api/jobs/", {"type": "diagnostics.sleep", "payload": {}}, format="json")
    body = assert_error_shape(response, 403)
    assert "CSRF" in body["detail"]
    assert not Job.objects.exists()


# -- tenant isolation: API and browser pages --------------------------------------------------
def foreign_objects(kind: str, jobs: TenantJobs) -> list[Any]:
    """Objects of another tenant that the route's id may name, in every state an action accepts."""
    if kind == "job":
        return jobs.all
    if kind == "dead_letter":
        letter, _ = DeadLetter.objects.get_or_create(
            message_key=str(jobs.failed.pk), defaults={"job": jobs.failed, "reason": "non_retryable"}
        )
        return [letter]
    raise AssertionError(f"no foreign objects of kind {kind!r}")


@pytest.mark.django_db
def test_every_id_route_answers_404_for_another_tenants_object_exactly_as_for_an_unknown_id(
    alice, acme_jobs: TenantJobs, globex_jobs: TenantJobs
):
    api = client_for(alice)
    browser = Client()
    browser.force_login(alice)
    # The admin's routes are covered by the tenant-staff tests below.
    id_routes = [route for route in routes() if route.params and not route.regex.startswith("admin/")]
    unmapped = sorted(route.name for route in id_routes if route.name not in ID_ROUTES)
    assert not unmapped, f"routes with an id that these tests do not know: add them to ID_ROUTES: {unmapped}"
    assert {route.name for route in id_routes} >= {"api-job-detail", "api-job-cancel", "api-job-retry"}
    before = {job.pk: (job.status, job.version) for job in Job.objects.all()}
    for route in id_routes:
        client = api if route.regex.startswith("api/") else browser
        for target in foreign_objects(ID_ROUTES[route.name], globex_jobs):
            path = route.sample_path(str(target.pk))
            unknown_id = str(uuid.uuid4())
            unknown = route.sample_path(unknown_id)
            answered = set()
            for method in ("get", "post", "put", "patch", "delete"):
                response = getattr(client, method)(path)
                answered.add(response.status_code)
                assert response.status_code in {404, 405}, (method, path, response.status_code)
                if response.status_code == 404 and client is api:
                    # Indistinguishable from a job that does not exist: same status, same message.
                    detail = assert_error_shape(response, 404)["detail"].replace(str(target.pk), "<id>")
                    control = getattr(client, method)(unknown)
                    assert detail == assert_error_shape(control, 404)["detail"].replace(unknown_id, "<id>")
            assert 404 in answered, f"{route.name}: no method reached the view"
    # Nothing of the other tenant moved, and nothing was created from it.
    assert {job.pk: (job.status, job.version) for job in Job.objects.all()} == before


@pytest.mark.parametrize("query", ["", "?status=queued,running,retrying,succeeded,failed,cancelled", "?page_size=500"])
@pytest.mark.django_db
def test_the_job_list_never_shows_another_tenants_jobs(alice, acme_jobs: TenantJobs, globex_jobs: TenantJobs, query):
    api = client_for(alice)
    seen: set[str] = set()
    url: str | None = f"/api/jobs/{query}"
    while url:
        page = api.get(url).json()
        seen |= {row["id"] for row in page["results"]}
        url = page["next"]
    assert seen == acme_jobs.ids


@pytest.mark.parametrize("field", ["tenant", "owner", "status", "id"])
@pytest.mark.django_db
def test_a_submission_cannot_choose_its_tenant_owner_status_or_id(alice, bob, field):
    tenant = Tenant.objects.get(name="globex")
    value = {"tenant": tenant.pk, "owner": bob.pk, "status": "succeeded", "id": str(uuid.uuid4())}[field]
    api = client_for(alice)
    single = api.post("/api/jobs/", {"type": "diagnostics.sleep", "payload": {}, field: value}, format="json")
    assert field in assert_error_shape(single, 400)["errors"]
    bulk = api.post(
        "/api/jobs/bulk/", {"jobs": [{"type": "diagnostics.sleep", "payload": {}, field: value}]}, format="json"
    )
    assert f"jobs.0.{field}" in assert_error_shape(bulk, 400)["errors"]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_submitted_jobs_belong_to_the_submitters_tenant(alice):
    api = client_for(alice)
    single = api.post("/api/jobs/", {"type": "diagnostics.sleep", "payload": {}}, format="json")
    bulk = api.post("/api/jobs/bulk/", {"jobs": [{"type": "diagnostics.sleep", "payload": {}}]}, format="json")
    assert (single.status_code, bulk.status_code) == (202, 202)
    acme = Tenant.objects.get(name="acme")
    assert set(Job.objects.values_list("tenant_id", "owner_id")) == {(acme.pk, alice.pk)}


@pytest.mark.django_db
def test_tenant_staff_see_only_their_tenants_jobs_in_the_api_as_in_the_admin(make_user, bob):
    # Staff who act for a tenant are scoped to it in the admin (results.admin.jobs.JobAdmin); the API
    # must not give them more: another tenant's jobs, and their tracebacks.
    ops = make_user("ops-acme", tenant="acme", staff=True)
    own = jobs_in_every_state(ops)
    foreign = jobs_in_every_state(bob)
    api = client_for(ops)
    listed = {row["id"] for row in api.get("/api/jobs/?page_size=500").json()["results"]}
    assert listed == own.ids
    assert_error_shape(api.get(f"/api/jobs/{foreign.failed.pk}/"), 404)
    assert_error_shape(api.post(f"/api/jobs/{foreign.queued.pk}/cancel/", {}, format="json"), 404)
    assert Job.objects.get(pk=foreign.queued.pk).status == "queued"


# -- admin: tenant staff ----------------------------------------------------------------------
#: Project models whose rows belong to no tenant (operations data), so none is "another tenant's".
TENANTLESS_MODELS = {
    "AlertWindow": "alert throttle counters per job type and error",
    "CronRun": "one row per tick of a periodic task",
    "HealthState": "the last verdict of each health check",
    "QueueCanary": "canary bookkeeping per broker queue",
    "MetricsRollup": "hourly counts per job type",
    "WorkerNode": "one row per worker incarnation: hostname, pid, last seen",
    "RepairLease": "which node runs the repair pass, and when it last completed",
}


def foreign_admin_rows(model: type, tenant: Tenant) -> list[Any]:
    """The rows of ``model`` that belong to ``tenant`` (the other tenant, for the staff under test)."""
    if model is Tenant:
        return [tenant.pk]
    if model.__name__ in TENANTLESS_MODELS:
        return []
    names = {f.name for f in model._meta.get_fields()}
    for path in ("tenant", "job__tenant", "dead_letter__job__tenant"):
        if path.split("__")[0] in names:
            return list(model.objects.filter(**{path: tenant}).values_list("pk", flat=True))
    raise AssertionError(f"{model.__name__}: say how its rows belong to a tenant in foreign_admin_rows()")


@pytest.fixture
def tenant_staff(make_user) -> Client:
    """Staff acting for acme with every permission of the project's own admin (the ops role)."""
    user = make_user("ops-acme", tenant="acme", staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="results"))
    client = Client()
    client.force_login(user)
    return client


def project_admins() -> list[tuple[type, admin.ModelAdmin]]:
    return [
        (model, model_admin)
        for model, model_admin in admin.site._registry.items()
        if model._meta.app_label == "results"
    ]


@pytest.mark.django_db
def test_tenant_staff_see_no_row_of_another_tenant_on_any_project_admin_page(tenant_staff, bob):
    globex = jobs_in_every_state(bob)
    letter = DeadLetter.objects.create(message_key=str(globex.failed.pk), job=globex.failed, reason="non_retryable")
    Alert.objects.create(key="diagnostics.fail|x", channel="webhook", dead_letter=letter, subject="s", text="t")
    globex_tenant = Tenant.objects.get(name="globex")
    leaks = []
    for model, _model_admin in project_admins():
        opts = model._meta
        changelist = tenant_staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        foreign = {str(pk) for pk in foreign_admin_rows(model, globex_tenant)}
        if changelist.status_code == 200:
            shown = {str(obj.pk) for obj in changelist.context["cl"].result_list}
            if shown & foreign:
                leaks.append(f"{opts.label} change list shows {sorted(shown & foreign)}")
        for pk in foreign:
            page = tenant_staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk]))
            if page.status_code == 200:
                leaks.append(f"{opts.label} change page of {pk} is open")
    assert not leaks, "tenant staff reach another tenant's rows:\n" + "\n".join(leaks)


@pytest.mark.django_db
def test_tenant_staff_cannot_move_themselves_into_another_tenant_through_the_admin(tenant_staff, bob):
    globex = Tenant.objects.get(name="globex")
    ops = User.objects.get(username="ops-acme")
    membership = Membership.objects.get(user=ops)
    url = reverse("admin:results_membership_change", args=[membership.pk])
    tenant_staff.post(url, {"user": ops.pk, "tenant": globex.pk})
    assert Membership.objects.get(user=ops).tenant.name == "acme"


@pytest.mark.django_db
def test_superusers_and_staff_without_a_tenant_see_every_tenant_tenant_staff_and_users_only_theirs(make_user, bob):
    # The one scoping rule (results.querysets): a Membership scopes staff like the tenant's users;
    # only superusers (with or without one) and staff acting for no tenant see every tenant.
    from results.querysets import scoped_by_job, sees_every_tenant

    globex = jobs_in_every_state(bob)
    letter = DeadLetter.objects.create(message_key=str(globex.failed.pk), job=globex.failed, reason="non_retryable")
    poison = DeadLetter.objects.create(message_key="poison-1", reason="unknown_task")
    loner = make_user("loner")
    own = jobs_in_every_state(loner)  # no tenant: their own jobs
    users = {
        "superuser with a tenant": (make_user("root-acme", tenant="acme", superuser=True), True),
        "staff without a tenant": (make_user("ops", staff=True), True),
        "staff with a tenant": (make_user("ops-acme", tenant="acme", staff=True), False),
        "user with a tenant": (make_user("carol", tenant="acme"), False),
        "user without a tenant": (loner, False),
    }
    for who, (user, everything) in users.items():
        assert sees_every_tenant(user) is everything, who
        jobs = {str(pk) for pk in Job.objects.visible_to(user).values_list("pk", flat=True)}
        letters = set(scoped_by_job(DeadLetter.objects.all(), user).values_list("pk", flat=True))
        if everything:
            assert jobs >= globex.ids | own.ids and letters == {letter.pk, poison.pk}, who
        else:
            assert jobs == (own.ids if user is loner else set()) and letters == set(), who
    # Through the API and the admin alike.
    for user, status in ((users["staff with a tenant"][0], 404), (users["superuser with a tenant"][0], 200)):
        assert client_for(user).get(f"/api/jobs/{globex.failed.pk}/").status_code == status
        assert client_for(user).get(f"/api/dead-letters/{letter.pk}/").status_code == status
        browser = Client()
        browser.force_login(user)
        user.user_permissions.add(*Permission.objects.filter(content_type__app_label="results"))
        page = browser.get(reverse("admin:results_job_change", args=[globex.failed.pk]))
        assert page.status_code == (200 if status == 200 else 302), (user, page.status_code)


@pytest.mark.django_db
def test_only_superusers_see_or_change_tenants_and_memberships_in_the_admin(make_user, bob):
    # Who belongs to which tenant decides what everyone sees: model permissions are not enough.
    membership = Membership.objects.get(user=bob)
    for user in (make_user("ops-acme", tenant="acme", staff=True), make_user("ops", staff=True)):
        user.user_permissions.add(*Permission.objects.filter(content_type__app_label="results"))
        browser = Client()
        browser.force_login(user)
        for url in (
            reverse("admin:results_tenant_changelist"),
            reverse("admin:results_tenant_add"),
            reverse("admin:results_tenant_change", args=[membership.tenant_id]),
            reverse("admin:results_membership_changelist"),
            reverse("admin:results_membership_add"),
            reverse("admin:results_membership_change", args=[membership.pk]),
            reverse("admin:results_membership_delete", args=[membership.pk]),
        ):
            assert browser.get(url).status_code in {302, 403}, (user.username, url)
        browser.post(reverse("admin:results_membership_add"), {"user": user.pk, "tenant": membership.tenant_id})
        assert not Membership.objects.filter(user=user, tenant=membership.tenant).exists()
        index = browser.get(reverse("admin:index")).content.decode()
        assert "/admin/results/membership/" not in index and "/admin/results/tenant/" not in index
    root = Client()
    root.force_login(make_user("root", superuser=True))
    assert root.get(reverse("admin:results_membership_changelist")).status_code == 200
    assert root.get(reverse("admin:results_tenant_change", args=[membership.tenant_id])).status_code == 200
