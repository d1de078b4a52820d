"""What a person does to a job after it was submitted: cancel it, run it again, replay or resolve its dead letter.

The API, the admin and the CLI all call these, so each action means the same thing wherever it is
taken from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.db import transaction

from results.models import DeadLetter, DeadLetterStatus, Job, Status
from tasks.runtime.types import get_job_type
from tasks.submit.outbox import submit
from tasks.submit.validation import SubmissionError

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)


def cancel(job: Job, *, reason: str = "cancelled by request") -> bool:
    """Cancel a job that is not terminal; the worker stops it at its next heartbeat or claim."""
    if not Job(pk=job.pk).mark_cancelled(reason=reason):
        return False
    job_type = get_job_type(job.type)
    try:
        if job_type is not None:
            job_type.task.app.control.revoke(str(job.pk))
    except Exception:
        logger.info("revoke for job %s not broadcast", job.pk, exc_info=True)
    return True


def rerun(job: Job, *, owner: AbstractBaseUser | None = None, by: AbstractBaseUser | None = None) -> Job:
    """Run a failed or cancelled job again as a new job linked to the original.

    ``by``: the user asking through a face; the job type's audience applies to a rerun as to a submission.
    """
    if job.status not in (Status.FAILED, Status.CANCELLED):
        raise SubmissionError({"status": [f"only failed or cancelled jobs can be retried; this one is {job.status}"]})
    return submit(
        job.type,
        job.payload,
        owner=owner or job.owner,
        tenant=job.tenant,
        queue=job.queue,
        correlation_id=job.correlation_id,
        retry_of=job,
        idempotency_key=f"rerun-of-{job.pk}",  # a double-clicked retry returns the first rerun
        by=by,
    )


class ReplayError(Exception):
    """The dead letter cannot be replayed (no job type to run, or not open)."""


def replay(
    dead_letter: DeadLetter, *, payload: dict[str, Any] | None = None, owner: Any = None, by: Any = None
) -> tuple[Job, bool]:
    """Run a dead letter again as a new job with a fresh retry budget, linked to the original.

    Returns (job, created): replaying twice returns the first replay's job instead of a second run.
    ``payload`` (optional) replaces the original input and is validated like a new submission.
    """
    with transaction.atomic():
        locked = DeadLetter.objects.select_for_update().get(pk=dead_letter.pk)
        if locked.status == DeadLetterStatus.REPLAYED and locked.replay_job is not None:
            return locked.replay_job, False
        if locked.status != DeadLetterStatus.OPEN:
            raise ReplayError(f"dead letter {locked.pk} is {locked.status}; only open dead letters can be replayed")
        original = locked.job
        type_name = original.type if original else locked.task_name
        if get_job_type(type_name) is None:
            raise ReplayError(f"dead letter {locked.pk} names no known job type ({type_name or 'none'}); resolve it")
        if payload is None:
            payload = original.payload if original else ((locked.body or {}).get("kwargs") or {})
        job = submit(
            type_name,
            payload,
            owner=owner if owner is not None else (original.owner if original else None),
            tenant=original.tenant if original else None,
            queue=original.queue if original else None,
            correlation_id=original.correlation_id if original else None,
            retry_of=original,
            by=by,
        )
        locked.mark_replayed(job)
    return job, True


def resolve(dead_letter: DeadLetter, *, by: str = "") -> bool:
    return dead_letter.mark_resolved(by=by)
