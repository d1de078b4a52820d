"""The page shells over Django's test client: sign-in, tenant scoping, what the page is given."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from results.models import Membership, Tenant
from results.web.views import example_payload
from tasks.runtime.types import job_types
from tasks.submit.outbox import submit
from tests.results.web.helpers import PASSWORD


@pytest.fixture
def ada(db: None) -> User:
    user = User.objects.create_user("ada", password=PASSWORD)
    Membership.objects.create(user=user, tenant=Tenant.objects.create(name="acme"))
    return user


@pytest.fixture
def signed_in(ada: User) -> Client:
    client = Client()
    client.force_login(ada)
    return client


def job_of(tenant_name: str, owner: User | None = None) -> Any:
    tenant = Tenant.objects.get_or_create(name=tenant_name)[0]
    return submit("diagnostics.sleep", {}, owner=owner, tenant=tenant)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/jobs/", "/jobs/3f0c7a52-8d0e-4c4f-9a43-2f1d2b9b0a11/"])
def test_a_signed_out_visitor_is_sent_to_sign_in(path: str) -> None:
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


def test_signing_in_leads_to_the_jobs_page_and_a_wrong_password_says_so(ada: User) -> None:
    client = Client()
    form = client.get("/accounts/login/?next=/jobs/")
    assert form.status_code == 200
    assert b'name="next" value="/jobs/"' in form.content
    wrong = client.post("/accounts/login/", {"username": "ada", "password": "nope", "next": "/jobs/"})
    assert wrong.status_code == 200
    assert "didn't match" in wrong.content.decode()
    right = client.post("/accounts/login/", {"username": "ada", "password": PASSWORD, "next": "/jobs/"})
    assert right.status_code == 302
    assert right["Location"] == "/jobs/"
    # without next, too; and a signed-in user asking for the form goes straight to the page
    assert client.get("/accounts/login/")["Location"] == "/jobs/"


def test_signing_out_needs_a_post_and_ends_the_session(signed_in: Client) -> None:
    assert signed_in.get("/accounts/logout/").status_code == 405
    response = signed_in.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert signed_in.get("/jobs/").status_code == 302


def test_the_page_offers_every_job_type_with_an_example_payload_and_sets_the_csrf_cookie(signed_in: Client) -> None:
    response = signed_in.get("/jobs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "csrftoken" in response.cookies
    options = re.findall(r'<option value="([^"]+)">', html)
    assert options == list(job_types())
    catalogue = json.loads(re.search(r'<script id="job-types" type="application/json">(.*?)</script>', html, re.S)[1])
    assert [entry["name"] for entry in catalogue] == options
    fail = next(entry for entry in catalogue if entry["name"] == "diagnostics.fail")
    assert fail["example"]["mode"] == "always"
    assert fail["max_retries"] >= 1
    assert 'src="/static/terminus/jobs.js"' in html
    assert 'type="module"' in html
    assert "http://" not in html.replace('"http://www.w3.org', "")  # nothing from a CDN
    assert 'data-job-id=""' in html


def test_a_job_page_opens_the_tenants_job_and_is_404_for_another_tenants(signed_in: Client, ada: User) -> None:
    ours = job_of("acme")
    theirs = job_of("globex")
    page = signed_in.get(f"/jobs/{ours.pk}/")
    assert page.status_code == 200
    assert f'data-job-id="{ours.pk}"' in page.content.decode()
    assert signed_in.get(f"/jobs/{theirs.pk}/").status_code == 404
    assert signed_in.get("/jobs/not-a-uuid/").status_code == 404


@pytest.mark.parametrize(
    ("schema", "example"),
    [
        ({"properties": {"seconds": {"type": "number", "default": 0}}}, {"seconds": 0}),
        (
            {
                "properties": {"url": {"type": "string"}, "body": {"type": "object"}, "x": {"anyOf": []}},
                "required": ["url", "body", "x"],
            },
            {"url": "", "body": {}, "x": None},
        ),
        ({"properties": {"note": {"type": "string"}}}, {}),  # optional without default: left out
        ({}, {}),
    ],
)
def test_the_example_payload_has_defaults_and_empty_required_fields(schema: dict, example: dict) -> None:
    assert example_payload(schema) == example
