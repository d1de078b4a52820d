"""The job-type registry: ``@job("name", input=Schema, retry=Policy)`` makes a tracked Celery task.

Adding a job type is one module: a pydantic input schema and a function decorated with ``@job``.
The name is wire protocol (messages, the API, the DLQ and ops scripts use it): never rename one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from celery import shared_task
from django.conf import settings
from pydantic import BaseModel

from tasks.runtime.base import TrackedTask
from tasks.runtime.retry import RetryPolicy
from tasks.runtime.types import Audience, JobType, get_job_type, register


def job(
    name: str,
    *,
    input: type[BaseModel],
    retry: RetryPolicy | None = None,
    queue: str = "default",
    time_limit: int | None = None,
    soft_time_limit: int | None = None,
    on_terminal: Callable[[Any], Any] | None = None,
    audience: Audience | Callable[[], Audience] = Audience.EVERYONE,
    tenants: Iterable[str] = (),
    secret_fields: Iterable[str] = (),
    extra_fields: bool = False,
) -> Callable[[Callable[..., Any]], TrackedTask]:
    """Register ``fn(task, data)`` as job type ``name``; ``data`` is the validated ``input``.

    ``on_terminal(job)`` runs after every terminal transition (succeeded, failed, cancelled), including
    the reaper's after a worker vanished: at least once, so it must be idempotent (tasks.runtime.hooks).

    A submission naming a field ``input`` does not declare is refused (400 naming it) unless
    ``extra_fields=True``, or the model states its own ``model_config["extra"]`` ("allow" keeps
    such fields, "ignore" drops them).
    """
    policy = retry or RetryPolicy()
    # TERMINUS_MAX_TIME_LIMIT caps every job type: the Redis visibility timeout is derived from
    # it, so no attempt may outlive it (or its message would be handed to a second worker).
    hard = min(time_limit or settings.TERMINUS_DEFAULT_TIME_LIMIT, settings.TERMINUS_MAX_TIME_LIMIT)
    soft = soft_time_limit or settings.TERMINUS_DEFAULT_SOFT_TIME_LIMIT
    soft = min(soft, max(1, hard - 1)) if hard > 1 else soft
    if soft >= hard:
        raise ValueError(f"{name}: soft_time_limit must be below time_limit")

    def decorator(fn: Callable[..., Any]) -> TrackedTask:
        if get_job_type(name) is not None:
            raise ValueError(f"job type {name!r} is registered twice")

        def run(self: TrackedTask, **payload: Any) -> Any:
            data = input.model_validate(payload)
            result = fn(self, data)
            result = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
            try:  # a result that cannot be stored fails the job now, not its record write later
                json.dumps(result)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name} returned a value that is not JSON: {exc}") from None
            return result

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        task = shared_task(
            bind=True,
            base=TrackedTask,
            name=name,
            queue=queue,
            time_limit=hard,
            soft_time_limit=soft,
            job_retry_policy=policy,
            **policy.task_options(),
        )(run)
        register(
            JobType(
                name=name,
                input=input,
                retry=policy,
                queue=queue,
                time_limit=hard,
                soft_time_limit=soft,
                description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
                task=task,
                on_terminal=on_terminal,
                audience=audience,
                tenants=frozenset(tenants),
                secret_fields=frozenset(secret_fields),
                extra_fields=extra_fields or "extra" in input.model_config,
            )
        )
        return task

    return decorator
