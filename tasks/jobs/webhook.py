"""webhook.deliver: POST a JSON body to a URL; retried on timeouts, connection errors, 5xx, 408 and 429."""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any

import httpx
from django.conf import settings
from pydantic import AnyHttpUrl, BaseModel, Field, field_validator

from tasks.runtime.base import TrackedTask
from tasks.runtime.errors import PermanentError, TransientError
from tasks.runtime.registry import job
from tasks.runtime.retry import RetryPolicy

#: 4xx answers that mean "not now" rather than "never" (timeout, too early, rate limited): retried.
RETRYABLE_4XX = frozenset({408, 425, 429})
#: Bytes of the receiver's answer kept in the result (the rest is not even read).
RESPONSE_PREVIEW_BYTES = 2000
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
    status, preview, location = _post(str(data.url), data.body, headers, timeout)
    if status >= 500 or status in RETRYABLE_4XX:
        raise WebhookError(f"receiver answered {status}: {preview[:500]}")
    if 300 <= status < 400:
        raise WebhookRejected(f"receiver answered {status} (redirect to {location!r}); redirects are not followed")
    if status >= 400:
        raise WebhookRejected(f"receiver answered {status}: {preview[:500]}")
    return {"status_code": status, "response": preview}


def _post(url: str, body: Any, headers: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """(status, start of the body, Location) of one POST; WebhookError if no answer came."""
    try:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=timeout, follow_redirects=False) as response:
            return response.status_code, _preview(response, timeout), response.headers.get("location", "")
    except httpx.TimeoutException as exc:
        raise WebhookError(f"timed out after {timeout}s: {exc}") from exc
    except httpx.TransportError as exc:
        raise WebhookError(f"connection failed: {exc}") from exc


def _preview(response: httpx.Response, timeout: float) -> str:
    """The first RESPONSE_PREVIEW_BYTES of the body, read for at most ``timeout`` seconds.

    The status line is the receiver's answer: a huge, slow or broken body does not change it, so
    it is neither read to the end nor allowed to fail a delivery that already succeeded.
    """
    received = bytearray()
    deadline = time.monotonic() + timeout
    with contextlib.suppress(httpx.HTTPError):
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) >= RESPONSE_PREVIEW_BYTES or time.monotonic() > deadline:
                break
    return bytes(received[:RESPONSE_PREVIEW_BYTES]).decode(response.encoding or "utf-8", errors="replace")
