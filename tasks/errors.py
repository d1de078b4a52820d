"""Exceptions job code raises to tell the runtime what a failure means."""

from __future__ import annotations

from celery.exceptions import Ignore


class TransientError(Exception):
    """Worth retrying: a timeout, a dropped connection, a 5xx from a dependency."""


class PermanentError(Exception):
    """Never worth retrying: the job fails for good at once with this error."""


class JobCancelled(Ignore):
    """Raised from a heartbeat when the job was cancelled: the attempt stops, nothing is recorded twice."""
