"""Correlation ids: one id per request, from the client's ``X-Correlation-ID`` or a new one.

The id is bound to the request's log context (every line logged while serving it carries
``correlation_id``) and echoed in the response header. A request without the header gets a new id,
set on the request as if the client had sent it, so the API records it on the jobs it submits and
the worker's lines for those jobs carry the same id. A malformed header is left for the API to
refuse (400 naming the header, no id echoed); the request's log lines get a fresh id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import structlog
from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

HEADER = "X-Correlation-ID"
META_KEY = "HTTP_X_CORRELATION_ID"
#: Same rule as the API's (results/api/views.py): 1-100 printable ASCII characters.
MAX_CHARS = 100


def valid_correlation_id(value: str) -> bool:
    return 1 <= len(value) <= MAX_CHARS and all(" " <= char <= "~" for char in value)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


class CorrelationIdMiddleware:
    """Outermost middleware, so redirects and errors of every layer below carry the id too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get(HEADER, "").strip()
        echo = True
        if not supplied:
            correlation_id = new_correlation_id()
            request.META[META_KEY] = correlation_id
        elif valid_correlation_id(supplied):
            correlation_id = supplied
        else:
            correlation_id, echo = new_correlation_id(), False
        request.correlation_id = correlation_id
        # Bound until the response is closed (request_finished), not just while the middleware runs:
        # Django logs a 4xx/5xx ("Not Found: …") after the whole middleware chain has returned.
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        response = self.get_response(request)
        if echo and HEADER not in response:
            response[HEADER] = correlation_id
        return response


@receiver(request_finished)
def _unbind_correlation_id(**_: object) -> None:
    structlog.contextvars.unbind_contextvars("correlation_id")
