"""Factories for the records tests need: users in tenants, their API tokens and clients.

One definition for every suite (the API, dead letters, security, admin, the watch page), so a
"user of tenant acme" is built the same way everywhere.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from results.models import DeadLetter, DeadLetterReason, DeadLetterStatus, Job, Membership, Tenant
from tasks.failure.dead_letters import message_for_job, poison_message, store
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


def dead_letter_of(
    job: Job,
    *,
    reason: str = DeadLetterReason.NON_RETRYABLE,
    status: str = DeadLetterStatus.OPEN,
    age: timedelta | None = None,
) -> DeadLetter:
    """The dead letter of ``job`` (failed), recorded as the dead-letter task records it, ``age`` old, in ``status``."""
    letter, _ = store(message_for_job(job, reason=reason))
    fields: dict[str, Any] = {"status": status}
    if age is not None:
        fields["created_at"] = timezone.now() - age
    DeadLetter.objects.filter(pk=letter.pk).update(**fields)
    return DeadLetter.objects.get(pk=letter.pk)


def poison_dead_letter(task: str = "billing.nonexistent") -> DeadLetter:
    """A message that never became a job run (an unknown task): no job, no tenant, seen by staff only."""
    message = poison_message(
        reason=DeadLetterReason.UNKNOWN_TASK,
        body=[[], {"invoice": 7}, {}],
        raw=None,
        headers={"id": str(uuid.uuid4()), "task": task},
        queue="default",
        error=f"no task named {task}",
    )
    return store(message)[0]
