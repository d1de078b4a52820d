"""webhook.deliver: POST a JSON body to a URL; retried on timeouts, connection errors and 5xx."""

from __future__ import annotations

from typing import Any

import httpx
from django.conf import settings
from pydantic import AnyHttpUrl, BaseModel, Field

from tasks.base import TrackedTask
from tasks.errors import PermanentError, TransientError
from tasks.registry import job
from tasks.retry import RetryPolicy


class WebhookInput(BaseModel):
    url: AnyHttpUrl
    body: dict[str, Any] | list[Any] = Field(default_factory=dict, description="JSON body to POST.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    timeout: float | None = Field(None, gt=0, le=60, description="Seconds; default TERMINUS_WEBHOOK_TIMEOUT.")


class WebhookError(TransientError):
    """The receiver timed out, refused the connection or answered 5xx: worth another try."""


class WebhookRejected(PermanentError):
    """The receiver answered 4xx: sending the same request again would get the same answer."""


@job("webhook.deliver", input=WebhookInput, retry=RetryPolicy(retry_on=(WebhookError,)), time_limit=120, soft_time_limit=110)
def deliver(task: TrackedTask, data: WebhookInput) -> dict[str, Any]:
    """POST once per attempt; receivers get an Idempotency-Key (the job id) to drop duplicates."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Terminus-Webhook/1.0",
        **data.headers,
        "Idempotency-Key": task.job_id,
    }
    timeout = data.timeout or settings.TERMINUS_WEBHOOK_TIMEOUT
    try:
        response = httpx.post(str(data.url), json=data.body, headers=headers, timeout=timeout, follow_redirects=False)
    except httpx.TimeoutException as exc:
        raise WebhookError(f"timed out after {timeout}s: {exc}") from exc
    except httpx.TransportError as exc:
        raise WebhookError(f"connection failed: {exc}") from exc
    if response.status_code >= 500:
        raise WebhookError(f"receiver answered {response.status_code}")
    if response.status_code >= 400:
        raise WebhookRejected(f"receiver answered {response.status_code}: {response.text[:500]}")
    return {"status_code": response.status_code, "response": response.text[:2000]}
