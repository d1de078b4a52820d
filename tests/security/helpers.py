"""Helpers for the security tests (imported by its test modules and its conftest's fixtures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User

from results.models import Job
from tests.factories import job_for

#: A traceback line that only staff may ever see (it names internals).
SECRET_TRACEBACK = "Traceback (most recent call last):\n  File internals.py: STAFF-ONLY-TRACEBACK"


#: Filled by the fuzz tests, printed at the end of the session (the number of generated cases).
FUZZ_REPORT: dict[str, int] = {}


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
