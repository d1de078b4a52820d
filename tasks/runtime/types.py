"""Job types, by name: what the ``@job`` decorator (tasks.runtime.registry) registered.

Everything that looks a job type up by name (submit, the reaper, hooks, the API, the admin) reads
it here; only the decorator writes. Kept apart from the decorator so that a lookup never imports
the task base class, which itself runs hooks that look job types up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from django.conf import settings
from pydantic import BaseModel

from tasks.runtime.retry import RetryPolicy


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

    def deadline_budget(self, countdown: float = 0) -> float:
        """Seconds a job of this type may take, from submit to terminal, before it is overdue."""
        attempts = self.retry.max_retries + 1
        return countdown + settings.TERMINUS_QUEUE_TIMEOUT + attempts * self.time_limit + self.retry.worst_case_wait()


_REGISTRY: dict[str, JobType] = {}


def get_job_type(name: str) -> JobType | None:
    return _REGISTRY.get(name)


def job_types() -> dict[str, JobType]:
    return dict(sorted(_REGISTRY.items()))


def register(job_type: JobType) -> None:
    """Add a job type; a name is registered once (names are wire protocol)."""
    if job_type.name in _REGISTRY:
        raise ValueError(f"job type {job_type.name!r} is registered twice")
    _REGISTRY[job_type.name] = job_type
