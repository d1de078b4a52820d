"""What can go wrong, as exception types a caller can catch one by one.

Every answer of the API with status 400 or more becomes an ``APIError`` subclass chosen by the
status code, carrying the server's error body as is: ``detail`` (one sentence) and ``errors``
(``{field: [messages]}``, e.g. ``{"payload.seconds": ["..."]}``; ``{}`` when no field is to blame).
A request that never got an answer, after the retries, is a ``ConnectionFailed``. A job that
ended failed or cancelled is a ``JobFailed`` / ``JobCancelled`` only when ``wait`` is asked to
raise; a wait that ran out of time is a ``WaitTimeout``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Job


class TerminusError(Exception):
    """Base of every error this client raises."""


class APIError(TerminusError):
    """The server answered with an error status; ``errors`` maps each field to blame to its messages."""

    status_code: int = 0

    def __init__(
        self,
        status_code: int,
        detail: str,
        errors: Mapping[str, list[str]] | None = None,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ):
        self.status_code = status_code
        self.detail = detail
        self.errors: dict[str, list[str]] = dict(errors or {})
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(f"{status_code}: {detail}")

    @property
    def fields(self) -> list[str]:
        """The names the server blamed (body fields, query parameters, headers), e.g. ``["payload.seconds"]``."""
        return sorted(self.errors)


class BadRequest(APIError):
    """400: bad input; ``errors`` names each bad field."""


class Unauthorized(APIError):
    """401: no token, or a token the server does not know."""


class Forbidden(APIError):
    """403: authenticated, but not allowed."""


class NotFound(APIError):
    """404: no such job or dead letter, or one this token may not see."""


class Conflict(APIError):
    """409: the state forbids the action (cancel a finished job, a retired idempotency key, ...)."""


class PayloadTooLarge(APIError):
    """413: the payload or the request body is over the server's limit."""


class UnsupportedMediaType(APIError):
    """415: the body was not JSON."""


class RateLimited(APIError):
    """429: too many submissions (or long polls held at once); try again after ``retry_after`` seconds."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the server failed; 503 (and connection errors) are retried before this is raised."""


class ServiceUnavailable(ServerError):
    """503 after every retry."""


class ConnectionFailed(TerminusError):
    """No answer from the server (refused, reset, timed out) after every retry allowed."""


class JobError(TerminusError):
    """The job ended, but not with success (raised by ``wait(..., raise_on_failure=True)``)."""

    def __init__(self, job: Job):
        self.job = job
        reason = f": {job.error_type}: {job.error_message}" if job.error_type or job.error_message else ""
        super().__init__(f"job {job.id} ({job.type}) {job.status}{reason}")


class JobFailed(JobError):
    """The job ended ``failed``: ``job.error_type`` and ``job.error_message`` say why."""


class JobCancelled(JobError):
    """The job ended ``cancelled``: ``job.error_message`` holds the reason given."""


class WaitTimeout(TerminusError, TimeoutError):
    """``wait`` ran out of time; ``job`` is the job as last seen (not terminal)."""

    def __init__(self, job: Job, timeout: float):
        self.job = job
        self.timeout = timeout
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")


#: The exception for each status code; other 4xx are APIError, other 5xx ServerError.
BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class(status_code: int) -> type[APIError]:
    """The exception type for an error status."""
    if status_code in BY_STATUS:
        return BY_STATUS[status_code]
    return ServerError if status_code >= 500 else APIError
