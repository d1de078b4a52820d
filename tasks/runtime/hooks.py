"""``on_terminal`` hooks: a job type's code that runs after every terminal transition, at least once.

``@job(..., on_terminal=fn)`` marks each job of the type ``terminal_hook = pending`` at submit.
Whoever makes the terminal transition runs the hook right after it: the worker (success, failure,
worker lost), the reaper (lost, deadline exceeded). Anything else (an API cancel, a worker killed
between its transition and its hook, a hook that raised) is picked up by the reaper's sweep of
terminal jobs whose hook is still pending. Each run is claimed with one guarded UPDATE and a lease,
so two runners never run it at the same moment; a runner that dies mid-hook leaves it to be run
again once the lease expires. Hooks must therefore be idempotent. A hook's exception never changes
the job's state: it is recorded on the job, retried, and alerted once it keeps failing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from results.models import Job
from tasks.failure.ops_alerts import ops_alert
from tasks.runtime.types import get_job_type

logger = logging.getLogger(__name__)


def has_hook(type_name: str) -> bool:
    job_type = get_job_type(type_name)
    return job_type is not None and job_type.on_terminal is not None


def run_terminal_hook(job_id: Any, *, type_name: str | None = None) -> bool | None:
    """Run the job's on_terminal hook if it is due; True: it ran, False: it raised, None: not run here.

    ``type_name`` (when the caller knows it) skips the database entirely for types without a hook.
    """
    if type_name is not None and not has_hook(type_name):
        return None
    lease_before = timezone.now() - timedelta(seconds=settings.TERMINUS_HOOK_LEASE)
    if not Job(pk=job_id).claim_terminal_hook(lease_before=lease_before):
        return None
    job = Job.objects.get(pk=job_id)
    job_type = get_job_type(job.type)
    if job_type is None or job_type.on_terminal is None:
        job.finish_terminal_hook(error="the job type no longer declares an on_terminal hook", give_up=True)
        return None
    try:
        job_type.on_terminal(job)
    except Exception as exc:  # a hook's failure never changes the job or stops the caller
        give_up = job.terminal_hook_attempts >= settings.TERMINUS_HOOK_MAX_ATTEMPTS
        error = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "on_terminal hook of job %s (%s) failed (run %s): %s",
            job.pk,
            job.type,
            job.terminal_hook_attempts,
            error,
            exc_info=True,
            extra={"job_id": str(job.pk), "job_type": job.type},
        )
        if job.finish_terminal_hook(error=error, give_up=give_up) and give_up:
            ops_alert(
                f"hook|{job.type}",
                f"on_terminal hook of {job.type} keeps failing",
                f"The on_terminal hook of job {job.pk} ({job.type}, {job.status}) failed "
                f"{job.terminal_hook_attempts} times; it is not retried again.\nLast error: {error[:500]}\n"
                f"Inspect: {settings.TERMINUS_BASE_URL}/admin/results/job/{job.pk}/change/",
            )
        return False
    job.finish_terminal_hook()
    return True
