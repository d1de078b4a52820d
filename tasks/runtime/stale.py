"""Stale writes: a worker writing about an attempt that is no longer the job's current one.

It happens when a worker was paused (SIGSTOP, a long GC pause, a partitioned host) past the time
its node was declared dead, and its job was given to another attempt. The record refuses the
write (results.models.jobs.fence); this module says so in the log and in
``terminus_stale_writes_total``, so an operator sees zombies instead of silently lost results.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from results.models import Job

logger = logging.getLogger(__name__)

# Labelled, so its values are created after the worker chose multiprocess mode (tasks.fleet.events).
STALE_WRITES = Counter(
    "terminus_stale_writes",
    "Writes refused because the attempt that made them was no longer the job's current one, by job type and write.",
    ["type", "write"],
    registry=None,
)


def refused_as_stale(job_id: str, *, attempt: int, type_name: str, write: str) -> bool:
    """After a fenced write changed nothing: True (logged, counted) if a later attempt superseded ours."""
    if not attempt or not Job(id=job_id).superseded(attempt=attempt):
        return False
    logger.warning(
        "job %s: %s from attempt %s refused: a later attempt has started (this worker was presumed dead)",
        job_id,
        write,
        attempt,
    )
    STALE_WRITES.labels(type_name, write).inc()
    return True
