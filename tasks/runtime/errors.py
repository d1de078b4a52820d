"""Exceptions job code raises to tell the runtime what a failure means."""

from __future__ import annotations

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.exceptions import Ignore


class TransientError(Exception):
    """Worth retrying: a timeout, a dropped connection, a 5xx from a dependency."""


class PermanentError(Exception):
    """Never worth retrying: the job fails for good at once with this error."""


class JobCancelled(Ignore):
    """Raised from a heartbeat when the job was cancelled: the attempt stops, nothing is recorded twice."""


class AttemptSuperseded(JobCancelled):
    """Raised from a heartbeat when a later attempt has taken the job over (this worker was presumed
    dead): the stale body stops without touching the record, which belongs to the new attempt."""


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(error_type, error_message) as stored on the record and shown to clients."""
    if isinstance(exc, TimeLimitExceeded):
        limit = exc.args[0] if exc.args else "?"
        return "TimeLimitExceeded", f"hard time limit ({limit}s) exceeded: the worker killed the attempt"
    if isinstance(exc, SoftTimeLimitExceeded):
        return "SoftTimeLimitExceeded", "soft time limit exceeded: the attempt was interrupted"
    return type(exc).__name__, (str(exc) or repr(exc))[:10_000]
