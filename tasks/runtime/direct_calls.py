"""A job type's Celery task called the Celery way (``.delay()``, ``.apply_async()``): it goes through submit().

A message that names no recorded job is dropped by the worker's claim (TrackedTask.before_start),
so publishing one directly would run nothing and leave no trace. A direct call is therefore a
submission: the job is recorded, then published, exactly as ``submit()`` does, and the caller
gets a ``JobResult`` (an AsyncResult whose id is the job's id, with ``.job`` and ``.job_id``) that
reads the job's record. What a submission cannot express (positional arguments, links, an ETA,
a caller's own task id for a job that does not exist) raises at the call, naming ``submit()``.

The runtime sits below ``tasks.submit`` (imports go downward), so ``tasks.submit.outbox`` installs
its ``submit_or_get`` here when it is imported (every process imports it: tasks.apps).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import states
from celery.result import AsyncResult

from results.models import Job, Status

if TYPE_CHECKING:
    from celery import Task

#: The Celery state each job status reads as through a JobResult.
CELERY_STATES = {
    Status.QUEUED: states.PENDING,
    Status.RUNNING: states.STARTED,
    Status.RETRYING: states.RETRY,
    Status.SUCCEEDED: states.SUCCESS,
    Status.FAILED: states.FAILURE,
    Status.CANCELLED: states.REVOKED,
}
#: Options of ``apply_async`` a submission takes (the rest raise: see ``submit_direct_call``).
SUBMIT_OPTIONS = frozenset({"queue", "countdown"})
#: What every refusal points to.
USE_SUBMIT = "record and publish jobs with tasks.submit.outbox.submit(type_name, payload) or submit(InputModel(...))"

_submitter: Callable[..., tuple[Job, bool]] | None = None


class JobNotSucceeded(Exception):
    """``JobResult.get()`` on a job that ended failed or cancelled (its error type and message)."""

    def __init__(self, job: Job):
        self.job = job
        super().__init__(f"job {job.pk} {job.status}: {job.error_type}: {job.error_message}")


def install_submitter(submitter: Callable[..., tuple[Job, bool]]) -> None:
    """Called once by tasks.submit.outbox with its ``submit_or_get``."""
    global _submitter  # the one seam between the runtime and the floor above it
    _submitter = submitter


class JobResult(AsyncResult):
    """The AsyncResult of a job submitted by ``.delay()``: its state and result come from the job's record.

    Job types keep no result in Celery's result backend (the record is the result), so a plain
    AsyncResult would stay PENDING forever.
    """

    job: Job

    @property
    def job_id(self) -> Any:
        return self.job.pk

    def _get_task_meta(self) -> dict[str, Any]:
        job = Job.objects.only("status", "result", "error_type", "error_message", "traceback").get(pk=self.id)
        failed = job.status in (Status.FAILED, Status.CANCELLED)
        return {
            "task_id": self.id,
            "status": CELERY_STATES[Status(job.status)],
            "result": JobNotSucceeded(job) if failed else job.result,
            "traceback": job.traceback or None,
            "children": [],
        }

    def get(  # type: ignore[override]
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5, **_: Any
    ) -> Any:
        """Wait for the job to be terminal (polling its record every ``interval`` s) and return its result;
        a failed or cancelled job raises JobNotSucceeded (returned instead with ``propagate=False``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta = self._get_task_meta()
            if meta["status"] in states.READY_STATES:
                if propagate and isinstance(meta["result"], JobNotSucceeded):
                    raise meta["result"]
                return meta["result"]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} is not terminal after {timeout}s")
            time.sleep(interval)


def submit_direct_call(task: Task, args: Any, kwargs: Any, options: dict[str, Any]) -> JobResult:
    """``task.delay(**payload)`` / ``task.apply_async(kwargs=payload, queue=, countdown=)`` as a submission."""
    if args:
        raise TypeError(f"{task.name}: a job's input is keyword arguments (its input model's fields); {USE_SUBMIT}")
    unsupported = sorted(name for name, value in options.items() if value is not None and name not in SUBMIT_OPTIONS)
    if unsupported:
        raise TypeError(
            f"{task.name}.apply_async(): {', '.join(unsupported)} cannot be given to a job type's task "
            f"(it takes kwargs, queue and countdown); {USE_SUBMIT}"
        )
    if _submitter is None:
        raise RuntimeError(f"{task.name}: tasks.submit is not loaded in this process; {USE_SUBMIT}")
    job, _ = _submitter(task.name, dict(kwargs or {}), queue=options.get("queue"), countdown=options.get("countdown"))
    result = JobResult(str(job.pk), app=task.app, task_name=task.name)
    result.job = job
    return result


def is_recorded(task_id: str) -> bool:
    """Is there a job with this id (a message for it would be claimed, not dropped)?"""
    try:
        job_id = uuid.UUID(str(task_id))
    except ValueError:
        return False
    return Job.objects.filter(pk=job_id).exists()


def refuse_unrecorded(task: Task, task_id: str) -> None:
    """A message with a caller's own task id that names no job: the worker would drop it, so refuse it here."""
    raise ValueError(
        f"{task.name}.apply_async(task_id={task_id!r}): no job {task_id} is recorded, so a worker would "
        f"drop this message (chains, groups and chords freeze such ids); {USE_SUBMIT}"
    )
