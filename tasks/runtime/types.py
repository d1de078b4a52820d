"""Job types, by name: what the ``@job`` decorator (tasks.runtime.registry) registered.

Everything that looks a job type up by name (submit, the reaper, hooks, the API, the admin) reads
it here; only the decorator writes. Kept apart from the decorator so that a lookup never imports
the task base class, which itself runs hooks that look job types up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from celery import Task
from django.conf import settings
from pydantic import BaseModel

from tasks.runtime.retry import RetryPolicy


class Audience(StrEnum):
    """Who may submit a job type through the API, the bulk API and the watch page (code always may)."""

    #: Every signed-in user (within ``JobType.tenants`` when that is set).
    EVERYONE = "everyone"
    #: Staff and superusers: job types that can harm a worker (diagnostics: crash, leak, hold it).
    STAFF = "staff"
    #: Superusers only.
    SUPERUSER = "superuser"
    #: No one: the type exists for code and for messages already queued (diagnostics in production).
    NOBODY = "nobody"


@dataclass(frozen=True)
class JobType:
    name: str
    input: type[BaseModel]
    retry: RetryPolicy
    queue: str
    time_limit: int
    soft_time_limit: int
    description: str
    task: Task
    #: Runs after every terminal transition of a job of this type, at least once (tasks.runtime.hooks).
    on_terminal: Callable[[Any], Any] | None = None
    #: Who may submit it through a face (tasks.submit takes ``by=`` the acting user): an Audience, or
    #: a function returning one when it is read (diagnostics follow TERMINUS_DIAGNOSTICS_AUDIENCE).
    audience: Audience | Callable[[], Audience] = Audience.EVERYONE
    #: When set, only users acting for one of these tenants (by name) may submit it; superusers always.
    tenants: frozenset[str] = field(default_factory=frozenset)
    #: Payload fields whose values are secret (a webhook's headers carry its Authorization): shown
    #: as REDACTED wherever a payload is shown (dead letters in the API and the admin, the job admin).
    secret_fields: frozenset[str] = field(default_factory=frozenset)
    #: Payload fields the input model does not declare are accepted (as the model's own ``extra``
    #: config says: kept or dropped) instead of refused with a 400 naming them. Off by default: a
    #: typo in a field name must not silently run the job with its defaults.
    extra_fields: bool = False

    def redact(self, payload: Any) -> Any:
        """``payload`` with the values of its secret fields replaced (a mapping keeps its keys)."""
        if not self.secret_fields or not isinstance(payload, dict):
            return payload
        shown = dict(payload)
        for name in self.secret_fields & set(shown):
            value = shown[name]
            shown[name] = {key: REDACTED for key in value} if isinstance(value, dict) else REDACTED
        return shown

    def allows(self, user: Any) -> bool:
        """May ``user`` (signed in) submit a job of this type? Superusers may submit anything but NOBODY's."""
        audience = self.audience() if callable(self.audience) else self.audience
        if user is None or not getattr(user, "is_authenticated", False) or audience == Audience.NOBODY:
            return False
        if user.is_superuser:
            return True
        if audience == Audience.SUPERUSER or (audience == Audience.STAFF and not user.is_staff):
            return False
        if self.tenants:
            membership = getattr(user, "membership", None)
            return membership is not None and membership.tenant.name in self.tenants
        return True

    def deadline_budget(self, countdown: float = 0) -> float:
        """Seconds a job of this type may take, from submit to terminal, before it is overdue."""
        attempts = self.retry.max_retries + 1
        return countdown + settings.TERMINUS_QUEUE_TIMEOUT + attempts * self.time_limit + self.retry.worst_case_wait()


_REGISTRY: dict[str, JobType] = {}
#: What a secret value is shown as.
REDACTED = "[redacted]"


def redacted_payload(type_name: str, payload: Any) -> Any:
    """``payload`` as a person may see it: its job type's secret fields redacted (unknown types: as is)."""
    job_type = _REGISTRY.get(type_name)
    return job_type.redact(payload) if job_type is not None else payload


def redacted_message_body(type_name: str, body: Any) -> Any:
    """A task message's body (``{"args", "kwargs", …}``) as a person may see it: its payload redacted."""
    if isinstance(body, dict) and "kwargs" in body:
        return {**body, "kwargs": redacted_payload(type_name, body["kwargs"])}
    return body


def get_job_type(name: str) -> JobType | None:
    return _REGISTRY.get(name)


def job_type_for_input(model: type[BaseModel]) -> JobType | None:
    """The one job type whose input model is ``model`` (what ``submit(SleepInput(...))`` runs); None when
    no type, or more than one, takes it (the caller must then name the type)."""
    matches = [job_type for job_type in _REGISTRY.values() if job_type.input is model]
    return matches[0] if len(matches) == 1 else None


def job_types() -> dict[str, JobType]:
    return dict(sorted(_REGISTRY.items()))


def job_types_for(user: Any) -> dict[str, JobType]:
    """The job types ``user`` may submit (``GET /api/job-types/``, the watch page)."""
    return {name: job_type for name, job_type in job_types().items() if job_type.allows(user)}


def register(job_type: JobType) -> None:
    """Add a job type; a name is registered once (names are wire protocol)."""
    if job_type.name in _REGISTRY:
        raise ValueError(f"job type {job_type.name!r} is registered twice")
    _REGISTRY[job_type.name] = job_type
