"""webhook.deliver: POST a JSON body to a URL; retried on timeouts, connection errors, 5xx, 408 and 429.

The URL is the submitter's, so the worker connects only where tasks.runtime.outbound allows (public
addresses, and TERMINUS_OUTBOUND_ALLOW), and the job's result says how the receiver answered (its
status code and how many bytes it sent), not what: a receiver's body never reaches the client
that submitted the job, so an internal answer could not be read back even through an allowed
receiver. Error messages carry a short, escaped excerpt, for the operator reading the dead letter.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings
from pydantic import AnyHttpUrl, BaseModel, Field, field_validator

from results.storable import storable_text
from tasks.runtime import outbound
from tasks.runtime.base import TrackedTask
from tasks.runtime.errors import PermanentError, TransientError
from tasks.runtime.registry import job
from tasks.runtime.retry import RetryPolicy

#: 4xx answers that mean "not now" rather than "never" (timeout, too early, rate limited): retried.
RETRYABLE_4XX = frozenset({408, 425, 429})
#: Bytes of the receiver's answer read at most (to count them, and for the excerpt of an error).
RESPONSE_READ_BYTES = 1024 * 1024
#: Characters of the receiver's answer quoted in an error message.
ERROR_EXCERPT_CHARS = 500
#: Headers a payload may not set: the runtime sets them, and a second copy would corrupt the request.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "idempotency-key"})
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class WebhookInput(BaseModel):
    url: AnyHttpUrl
    body: dict[str, Any] | list[Any] = Field(default_factory=dict, description="JSON body to POST.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    timeout: float | None = Field(None, gt=0, le=60, description="Seconds; default TERMINUS_WEBHOOK_TIMEOUT.")

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        # Checked here, not at send time: a malformed header would fail every attempt the same way.
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by Terminus")
            if any(char in value for char in "\r\n\0"):
                raise ValueError(f"header {name!r} has a line break or NUL in its value")
        return headers


class WebhookError(TransientError):
    """The receiver timed out, refused the connection, or answered 5xx, 408 or 429: worth another try."""


class WebhookRejected(PermanentError):
    """The receiver answered another 4xx, or a redirect: the same request would get the same answer."""


@job(
    "webhook.deliver",
    input=WebhookInput,
    retry=RetryPolicy(retry_on=(WebhookError,)),
    secret_fields=("headers",),  # an Authorization or signature header is a credential
    time_limit=120,
    soft_time_limit=110,
)
def deliver(task: TrackedTask, data: WebhookInput) -> dict[str, Any]:
    """POST once per attempt; receivers get an Idempotency-Key (the job id) to drop duplicates."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Terminus-Webhook/1.0",
        **data.headers,
        "Idempotency-Key": task.job_id,
    }
    timeout = data.timeout or settings.TERMINUS_WEBHOOK_TIMEOUT
    answer = _post(str(data.url), data.body, headers, timeout)
    if answer.status >= 500 or answer.status in RETRYABLE_4XX:
        raise WebhookError(f"receiver answered {answer.status}: {answer.excerpt}")
    if 300 <= answer.status < 400:
        location = storable_text(answer.location, 200)
        raise WebhookRejected(
            f"receiver answered {answer.status} (redirect to {location!r}); redirects are not followed"
        )
    if answer.status >= 400:
        raise WebhookRejected(f"receiver answered {answer.status}: {answer.excerpt}")
    result = {"status_code": answer.status, "response_bytes": answer.size}
    if answer.cut:
        result["response_bytes_read_up_to"] = RESPONSE_READ_BYTES
    return result


@dataclass(frozen=True)
class Answer:
    status: int
    size: int  #: bytes of the body read (at most RESPONSE_READ_BYTES)
    cut: bool  #: the body was longer than what was read
    excerpt: str  #: its start, escaped and bounded, for error messages
    location: str


def _post(url: str, body: Any, headers: dict[str, str], timeout: float) -> Answer:
    """How the receiver answered one POST; WebhookError if no answer came, OutboundRefused if not allowed."""
    try:
        with (
            outbound.client(timeout=timeout) as client,
            client.stream("POST", url, json=body, headers=headers) as response,
        ):
            received, cut = _read(response, timeout)
            text = bytes(received[:ERROR_EXCERPT_CHARS]).decode(response.encoding or "utf-8", errors="replace")
            return Answer(
                status=response.status_code,
                size=len(received),
                cut=cut,
                excerpt=storable_text(text, ERROR_EXCERPT_CHARS),
                location=response.headers.get("location", ""),
            )
    except httpx.TimeoutException as exc:
        raise WebhookError(f"timed out after {timeout}s: {exc}") from exc
    except httpx.TransportError as exc:
        raise WebhookError(f"connection failed: {exc}") from exc


def _read(response: httpx.Response, timeout: float) -> tuple[bytearray, bool]:
    """The body's first RESPONSE_READ_BYTES, read for at most ``timeout`` seconds, and whether it went on.

    The status line is the receiver's answer: a huge, slow or broken body does not change it, so
    it is neither read to the end nor allowed to fail a delivery that already succeeded.
    """
    received = bytearray()
    cut = False
    deadline = time.monotonic() + timeout
    with contextlib.suppress(httpx.HTTPError):
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > RESPONSE_READ_BYTES or time.monotonic() > deadline:
                cut = True
                break
    return received[:RESPONSE_READ_BYTES], cut


# A malformed TERMINUS_OUTBOUND_ALLOW stops every process at start, not the first delivery.
outbound.current_policy()
