"""One HTTP exchange with the API: token header, retries on no answer and 503, errors as exceptions.

``Transport.request`` returns a 2xx or 304 answer, or raises the ``APIError`` subclass of the
status (carrying the server's ``{"detail", "errors"}`` body) or ``ConnectionFailed``.

What is sent again: a request whose connection was never made (refused, connect timeout) and any
request answered 503, whatever it does; a request that may have reached the server before the
connection broke (read timeout, reset) only when doing it twice is harmless (``idempotent``:
reads, and writes the server deduplicates, such as a submission with an idempotency key).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

from .errors import APIError, ConnectionFailed, RateLimited, error_class
from .retry import RetryPolicy, parse_retry_after

try:
    USER_AGENT = f"terminus-client/{version('terminus-client')}"
except PackageNotFoundError:  # imported from a checkout without being installed
    USER_AGENT = "terminus-client"

#: The request never reached the server: sending it again cannot do anything twice.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: The connection broke or timed out after the request may have been read.
MAYBE_SENT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


class Transport:
    """An ``httpx.Client`` with the token, the retry policy and the error mapping."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float,
        retry: RetryPolicy,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
    ):
        sent_headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **dict(headers or {})}
        if token:
            sent_headers["Authorization"] = f"Token {token}"
        self.timeout = timeout
        self.retry = retry
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=sent_headers, timeout=timeout, verify=verify, follow_redirects=False
        )

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> httpx.Response:
        """The answer (2xx or 304), after up to ``retry.max_attempts`` attempts; raises on anything else."""
        timeout = httpx.Timeout(self.timeout, read=read_timeout) if read_timeout is not None else None
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except NEVER_SENT + MAYBE_SENT as exc:
                retryable = isinstance(exc, NEVER_SENT) or idempotent
                if not retryable or attempt >= self.retry.max_attempts:
                    raise ConnectionFailed(f"{method} {url}: {type(exc).__name__}: {exc} (attempt {attempt})") from exc
                time.sleep(self.retry.delay(attempt))
                continue
            if response.status_code == 503 and attempt < self.retry.max_attempts:
                response.close()
                time.sleep(self.retry.delay(attempt, parse_retry_after(response.headers.get("Retry-After"))))
                continue
            if response.status_code >= 400:
                raise api_error(response)
            return response


def api_error(response: httpx.Response) -> APIError:
    """The exception for an error answer, with the server's ``detail`` and ``errors`` when it sent them."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = response.reason_phrase or f"HTTP {response.status_code}"
    errors: dict[str, list[str]] = {}
    if isinstance(body, Mapping):
        detail = str(body.get("detail") or detail)
        raw_errors = body.get("errors")
        if isinstance(raw_errors, Mapping):
            errors = {str(name): _messages(messages) for name, messages in raw_errors.items()}
    elif isinstance(body, str) and body.strip():
        detail = body.strip()[:500]
    cls = error_class(response.status_code)
    options: dict[str, Any] = {"body": body, "headers": dict(response.headers)}
    if cls is RateLimited:
        options["retry_after"] = parse_retry_after(response.headers.get("Retry-After"))
    return cls(response.status_code, detail, errors, **options)


def _messages(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    return [str(value)]
