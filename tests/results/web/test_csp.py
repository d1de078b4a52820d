"""The watch page and the admin work under the Content-Security-Policy, in a real Chromium: no violation."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User

from tests.results.web.helpers import PASSWORD, WebServer, artifact

PAGES = (
    "/jobs/",
    "/admin/",
    "/admin/results/job/",
    "/admin/results/deadletter/",
    "/admin/results/cronrun/",
    "/admin/results/healthstate/",
)


@pytest.mark.django_db(transaction=True)
def test_the_watch_page_and_the_admin_raise_no_csp_violation(page: Any, web: WebServer) -> None:
    User.objects.create(
        username="root", is_staff=True, is_superuser=True,
        password=PBKDF2PasswordHasher().encode(PASSWORD, "websalt", 1000),
    )  # fmt: skip
    violations: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    page.goto(f"{web.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{web.url}/admin/")
    for path in PAGES:
        response = page.goto(f"{web.url}{path}")
        assert response is not None and response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifact("csp-admin.png")))
    assert violations == []
