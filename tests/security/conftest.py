"""Shared pieces of the security suite: tenants, users, tokens, jobs in every state, the error shape.

Two tenants (``acme`` and ``globex``) each have a user; tests act as acme's user and use globex's
jobs as the objects that must stay invisible. Jobs are put in their states through the record's
own state machine (results.models.Job), never by writing a status by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from results.models import Job, Membership, Tenant
from tasks.submit.outbox import submit

#: A traceback line that only staff may ever see (it names internals).
SECRET_TRACEBACK = "Traceback (most recent call last):\n  File internals.py: STAFF-ONLY-TRACEBACK"

#: Filled by the fuzz tests, printed at the end of the session (the number of generated cases).
FUZZ_REPORT: dict[str, int] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FUZZ_REPORT:
        terminalreporter.section("security fuzz")
        for name, count in FUZZ_REPORT.items():
            terminalreporter.write_line(f"{name}: {count} generated requests")
        terminalreporter.write_line(f"total: {sum(FUZZ_REPORT.values())} generated requests")


def assert_error_shape(response: Any, status: int | None = None) -> dict[str, Any]:
    """The API's one error shape: JSON ``{"detail": "<sentence>", "errors": {field: [messages]}}``."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["errors"], dict), body
    for messages in body["errors"].values():
        assert messages and all(isinstance(m, str) and m for m in messages), body
    return body


def token_for(user: User) -> str:
    return Token.objects.get_or_create(user=user)[0].key


def client_for(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user)}")
    return client


@pytest.fixture(autouse=True)
def _fresh_throttle_counts() -> Iterator[None]:
    # Throttle history lives in the cache, keyed by user id: ids are reused between tests.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    def make(username: str, *, tenant: str | None = None, staff: bool = False, superuser: bool = False) -> User:
        user = User.objects.create_user(username, password="pw-" + username, is_staff=staff or superuser)
        if superuser:
            user.is_superuser = True
            user.save(update_fields=["is_superuser"])
        if tenant is not None:
            Membership.objects.create(user=user, tenant=Tenant.objects.get_or_create(name=tenant)[0])
        return user

    return make


@dataclass
class TenantJobs:
    """One job in each state, owned by ``user`` in the user's tenant."""

    user: User
    queued: Job
    running: Job
    retrying: Job
    succeeded: Job
    failed: Job
    cancelled: Job
    extra: list[Job] = field(default_factory=list)

    @property
    def all(self) -> list[Job]:
        return [self.queued, self.running, self.retrying, self.succeeded, self.failed, self.cancelled, *self.extra]

    @property
    def ids(self) -> set[str]:
        return {str(job.pk) for job in self.all}


def job_for(user: User, type_name: str = "diagnostics.sleep", payload: dict[str, Any] | None = None) -> Job:
    """A queued job of ``user``'s tenant (unpublished unless the test's transaction commits)."""
    membership = Membership.objects.filter(user=user).select_related("tenant").first()
    return submit(type_name, payload or {}, owner=user, tenant=membership.tenant if membership else None)


def jobs_in_every_state(user: User) -> TenantJobs:
    from datetime import timedelta

    from django.utils import timezone

    def started(job: Job) -> int:
        claim = Job(pk=job.pk).mark_started(worker="w1@test")
        assert claim is not None
        return claim.attempt

    queued = job_for(user)
    running = job_for(user)
    started(running)
    retrying = job_for(user, "diagnostics.fail", {"mode": "always"})
    started(retrying)
    assert Job(pk=retrying.pk).mark_retrying(
        error_type="TransientError", error_message="try again", next_retry_at=timezone.now()
    )
    succeeded = job_for(user)
    started(succeeded)
    assert Job(pk=succeeded.pk).mark_succeeded(result={"slept": 0.0})
    failed = job_for(user, "diagnostics.fail", {"mode": "permanent"})
    started(failed)
    assert Job(pk=failed.pk).mark_failed(
        error_type="PermanentError", error_message="bad input", traceback=SECRET_TRACEBACK
    )
    cancelled = job_for(user)
    assert Job(pk=cancelled.pk).mark_cancelled(reason="drill")
    Job.objects.filter(pk=running.pk).update(terminal_by=timezone.now() + timedelta(hours=1))
    return TenantJobs(
        user=user,
        **{
            name: Job.objects.get(pk=job.pk)
            for name, job in {
                "queued": queued,
                "running": running,
                "retrying": retrying,
                "succeeded": succeeded,
                "failed": failed,
                "cancelled": cancelled,
            }.items()
        },
    )


@pytest.fixture
def alice(make_user: Callable[..., User]) -> User:
    """A plain user of tenant acme: the one acting in most tests."""
    return make_user("alice", tenant="acme")


@pytest.fixture
def bob(make_user: Callable[..., User]) -> User:
    """A plain user of tenant globex: the owner of the jobs alice must never see."""
    return make_user("bob", tenant="globex")


@pytest.fixture
def acme_jobs(alice: User) -> TenantJobs:
    return jobs_in_every_state(alice)


@pytest.fixture
def globex_jobs(bob: User) -> TenantJobs:
    return jobs_in_every_state(bob)
