"""One error shape for every error the API returns.

Every 4xx answer, whatever raised it (a serializer, the submit pipeline, authentication, a
throttle, an unknown URL, a body too large), has the body::

    {"detail": "<one human-readable sentence>", "errors": {"<field>": ["<message>", ...]}}

``errors`` is always an object. It maps a field to its messages for bad input: request-body
fields (``type``, ``payload.seconds``, ``countdown``), query parameters (``status``,
``created_after``), headers (``X-Correlation-ID``), ``body`` for the request body as a whole
(malformed JSON, not an object, too large) and ``query`` for the query string as a whole (too
many parameters). It is ``{}`` when no field is to blame (401, 403, 404, 405, 429). Nested
serializer errors are flattened to dotted keys (``status.1``).

Status codes: 400 bad input, 401 no or bad credentials, 403 not allowed, 404 unknown (or
another tenant's) job, 405 wrong method, 409 the job's state forbids the action, 413 payload or
request body too large, 415 not JSON, 429 throttled (with ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tasks.submit.validation import IdempotencyKeyRetired, PayloadTooLarge, SubmissionError

DETAIL_MAX_CHARS = 1000


class Conflict(exceptions.APIException):
    """409: the job's current state does not allow the action (cancel a finished job, ...)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The job's current state does not allow this action."
    default_code = "conflict"

    def __init__(self, errors: Mapping[str, Any], detail: str | None = None):
        self.errors = dict(errors)
        super().__init__(detail or _summary(flatten(self.errors)) or self.default_detail)


class RequestTooLarge(exceptions.APIException):
    """413: the payload or the whole request body is over its limit."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"

    def __init__(self, errors: Mapping[str, Any] | None = None, detail: str | None = None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        self.errors = dict(errors or {"body": [f"the request body is larger than the limit of {limit} bytes"]})
        super().__init__(detail or _summary(flatten(self.errors)))


def flatten(errors: Any, prefix: str = "") -> dict[str, list[str]]:
    """``{"a": {"b": ["x"]}, "c": "y"}`` -> ``{"a.b": ["x"], "c": ["y"]}`` (DRF nests list/child errors)."""
    flat: dict[str, list[str]] = {}
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for sub_key, messages in flatten(value, name).items():
                flat.setdefault(sub_key, []).extend(messages)
    elif isinstance(errors, list | tuple):
        strings = [str(item) for item in errors if not isinstance(item, Mapping | list | tuple)]
        if strings:
            flat.setdefault(prefix or "body", []).extend(strings)
        for index, item in enumerate(errors):
            if isinstance(item, Mapping | list | tuple):
                for sub_key, messages in flatten(item, f"{prefix}.{index}" if prefix else str(index)).items():
                    flat.setdefault(sub_key, []).extend(messages)
    elif errors is not None:
        flat.setdefault(prefix or "body", []).append(str(errors))
    return flat


def _summary(errors: Mapping[str, list[str]]) -> str:
    text = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"


def error_body(detail: str, errors: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    return {"detail": detail, "errors": dict(errors or {})}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, WWW-Authenticate, Retry-After), with every body in the one shape."""
    if isinstance(exc, RequestDataTooBig):  # something read request.body past the limit
        exc = RequestTooLarge()
    elif isinstance(exc, TooManyFieldsSent):  # more than DATA_UPLOAD_MAX_NUMBER_FIELDS query parameters
        exc = exceptions.ValidationError({"query": [f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} parameters"]})
    elif isinstance(exc, PayloadTooLarge):
        exc = RequestTooLarge(exc.errors)
    elif isinstance(exc, SubmissionError):
        exc = exceptions.ValidationError(exc.errors)
    elif isinstance(exc, IdempotencyKeyRetired):
        exc = Conflict(exc.errors)

    response = drf_exception_handler(exc, context)
    if response is None:  # not an API error: a bug, left to Django's 500 handling and Sentry
        return None

    if isinstance(exc, exceptions.ValidationError):
        errors = flatten(exc.detail)
        detail = "Invalid input. " + _summary(errors)
    elif isinstance(exc, exceptions.ParseError):
        detail = str(exc.detail)
        errors = {"body": [detail]}
    else:
        errors = flatten(getattr(exc, "errors", {}))
        detail = str(exc.detail) if isinstance(exc, exceptions.APIException) else str(exc)
    response.data = error_body(detail, errors)
    return response
