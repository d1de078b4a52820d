"""Sign-in is locked after repeated wrong passwords, and every HTML page carries a Content-Security-Policy.

In-process for the lockout (Django's client, the real database, the real middleware); the CSP
check of a real browser is tests/results/web/test_csp.py.
"""

from __future__ import annotations

import pytest
from django.test import Client

LOGIN_PAGES = ("/accounts/login/", "/admin/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("login", LOGIN_PAGES)
def test_repeated_wrong_passwords_lock_the_sign_in_with_429_even_for_the_right_one(login, make_user, settings):
    # Given a user, and the default limit
    make_user("victim", staff=True, password="the-right-one")
    limit = settings.AXES_FAILURE_LIMIT
    client = Client()
    # When 15 wrong passwords arrive in a row
    answers = [client.post(login, {"username": "victim", "password": f"wrong-{n}"}).status_code for n in range(15)]
    # Then the first ones are refused as wrong (200: the form again) and the rest locked (429)
    assert answers[: limit - 1] == [200] * (limit - 1)
    assert set(answers[limit:]) == {429}, answers
    # And the right password is refused while locked
    assert client.post(login, {"username": "victim", "password": "the-right-one"}).status_code == 429


@pytest.mark.django_db
def test_a_lockout_is_per_user_and_address_and_a_success_resets_the_count(make_user):
    make_user("victim", password="the-right-one")
    make_user("bystander", password="also-right")
    client = Client()
    for n in range(10):
        client.post("/accounts/login/", {"username": "victim", "password": f"wrong-{n}"})
    # Another user signing in from the same address is not locked out with the victim
    assert client.post("/accounts/login/", {"username": "bystander", "password": "also-right"}).status_code == 302
    # Two wrong tries then a right one: the count starts again
    other = Client()
    for n in range(2):
        other.post("/accounts/login/", {"username": "bystander", "password": f"wrong-{n}"})
    assert other.post("/accounts/login/", {"username": "bystander", "password": "also-right"}).status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/", "/jobs/"])
def test_html_pages_carry_a_content_security_policy_without_inline_scripts(path):
    response = Client().get(path, follow=True)
    policy = response.headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
