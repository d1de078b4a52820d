"""``manage.py create_token``: API tokens for users, with tenant membership and staff flag."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from results.models import Membership, Tenant

pytestmark = pytest.mark.django_db


def create_token(*args: str) -> str:
    out = StringIO()
    call_command("create_token", *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_it_creates_a_user_in_a_new_tenant_and_prints_a_working_token():
    key = create_token("ops-bot", "--create", "--tenant", "acme")
    user = User.objects.get(username="ops-bot")
    assert Token.objects.get(user=user).key == key
    assert not user.has_usable_password()
    assert not user.is_staff
    assert Membership.objects.get(user=user).tenant == Tenant.objects.get(name="acme")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/jobs/").status_code == 200


def test_it_prints_the_same_token_again_and_reuses_an_existing_tenant():
    Tenant.objects.create(name="acme")
    first = create_token("ops-bot", "--create", "--tenant", "acme")
    second = create_token("ops-bot", "--tenant", "acme")
    assert first == second
    assert Tenant.objects.filter(name="acme").count() == 1
    assert Token.objects.count() == 1


def test_it_moves_a_user_to_another_tenant_and_makes_it_staff():
    create_token("ops-bot", "--create", "--tenant", "acme")
    create_token("ops-bot", "--tenant", "globex", "--staff")
    user = User.objects.get(username="ops-bot")
    assert user.is_staff
    assert Membership.objects.get(user=user).tenant.name == "globex"
    assert Membership.objects.count() == 1


def test_it_gives_an_existing_user_a_token_without_touching_its_password():
    user = User.objects.create_user("alice", password="s3cret-pass")
    key = create_token("alice")
    user.refresh_from_db()
    assert Token.objects.get(user=user).key == key
    assert user.check_password("s3cret-pass")
    assert not Membership.objects.filter(user=user).exists()


def test_it_refuses_an_unknown_user_without_create():
    with pytest.raises(CommandError, match="no user 'ghost'; pass --create"):
        create_token("ghost")
    assert not User.objects.filter(username="ghost").exists()
    assert not Token.objects.exists()


def test_it_refuses_an_empty_tenant_name():
    with pytest.raises(CommandError, match="--tenant must not be empty"):
        create_token("ops-bot", "--create", "--tenant", " ")
    assert not User.objects.exists()
