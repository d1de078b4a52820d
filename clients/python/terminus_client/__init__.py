"""A Python client for the Terminus jobs API: submit, wait for the terminal state, act on jobs and dead letters.

from terminus_client import Client

with Client("http://127.0.0.1:8000", token="...") as terminus:
    job = terminus.submit("diagnostics.sleep", {"seconds": 1})
    done = terminus.wait(job, timeout=60, raise_on_failure=True)
    print(done.status, done.result)
"""

from .client import Client, DeadLetters
from .errors import (
    APIError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    JobCancelled,
    JobError,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TerminusError,
    Unauthorized,
    UnsupportedMediaType,
    WaitTimeout,
)
from .models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATUSES,
    Attempt,
    BulkJob,
    BulkResult,
    DeadLetter,
    DeadLetterStats,
    Job,
    JobSpec,
)
from .retry import RetryPolicy, compute_backoff

__all__ = [
    "CANCELLED",
    "FAILED",
    "QUEUED",
    "RETRYING",
    "RUNNING",
    "SUCCEEDED",
    "TERMINAL_STATUSES",
    "APIError",
    "Attempt",
    "BadRequest",
    "BulkJob",
    "BulkResult",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DeadLetter",
    "DeadLetterStats",
    "DeadLetters",
    "Forbidden",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobSpec",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "TerminusError",
    "Unauthorized",
    "UnsupportedMediaType",
    "WaitTimeout",
    "compute_backoff",
]
