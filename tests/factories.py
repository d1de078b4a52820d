"""Factories for the records tests need: users in tenants, their API tokens and clients.

One definition for every suite (the API, dead letters, security, admin, the watch page), so a
"user of tenant acme" is built the same way everywhere.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from results.models import Job, Membership, Tenant
from tasks.submit.outbox import submit


def make_tenant(name: str) -> Tenant:
    """The tenant called ``name`` (created once)."""
    return Tenant.objects.get_or_create(name=name)[0]


def make_user(
    username: str,
    *,
    tenant: str | Tenant | None = None,
    staff: bool = False,
    superuser: bool = False,
    password: str | None = None,
) -> User:
    """A user (password ``pw-<username>`` unless given), acting for ``tenant`` when one is named."""
    user = User.objects.create_user(
        username, password=password or f"pw-{username}", is_staff=staff or superuser, is_superuser=superuser
    )
    if tenant is not None:
        Membership.objects.create(user=user, tenant=tenant if isinstance(tenant, Tenant) else make_tenant(tenant))
    return user


def token_for(user: User) -> str:
    """The user's API token (created once)."""
    return Token.objects.get_or_create(user=user)[0].key


def client_for(user: User | None) -> APIClient:
    """An API client authenticated as ``user`` by token (anonymous for None)."""
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user)}")
    return client


def job_for(
    user: User, type_name: str = "diagnostics.sleep", payload: dict[str, Any] | None = None, **options: Any
) -> Job:
    """A queued job submitted by ``user`` for its tenant (published on commit, as the API does)."""
    membership = Membership.objects.filter(user=user).select_related("tenant").first()
    return submit(type_name, payload or {}, owner=user, tenant=membership.tenant if membership else None, **options)
