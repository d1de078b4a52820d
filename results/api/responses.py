"""The error responses every endpoint documents: one description and one example per status code.

The body is always ``ErrorSerializer`` (results.api.errors writes it); only the noun changes.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse

from .serializers import ErrorSerializer

#: What each error status means, with ``{resource}`` standing for "job" or "dead letter".
ERROR_DESCRIPTIONS = {
    400: "Bad input: errors maps each field (body field, query parameter or header) to its messages.",
    401: "No or invalid credentials (send Authorization: Token <key>).",
    404: "No such {resource}, or a {resource} the user may not see (another tenant's).",
    409: "The {resource}'s state does not allow this action (errors says why).",
    413: "The payload or the request body is over its size limit.",
    415: "The body is not application/json.",
    429: "Too many requests (submissions, or long polls held at once); retry after Retry-After seconds.",
}


_UNKNOWN_FIELD = "unknown field; diagnostics.sleep takes: seconds, heartbeat_every, leak_mb"
_CONFLICT = {
    "job": "the job is already succeeded; only queued, running or retrying jobs can be cancelled",
    "dead letter": "dead letter 12 is resolved; only open dead letters can be replayed",
}
_TOO_LARGE = "payload is 300000 bytes; the limit is 262144"


def error_example(code: int, resource: str) -> OpenApiExample:
    """An example body for ``code`` (what results.api.errors answers), about ``resource``."""
    errors: dict[str, list[str]] = {}
    if code == 400:
        errors = {"payload.secs": [_UNKNOWN_FIELD]}
        detail = f"Invalid input. payload.secs: {_UNKNOWN_FIELD}"
    elif code == 401:
        detail = "Authentication credentials were not provided."
    elif code == 404:
        detail = f"No {resource} {'12' if resource == 'dead letter' else '7f9c1f8e-3c1a-4c57-9a57-8f0e6f7f6f2b'}."
    elif code == 409:
        errors = {"status": [_CONFLICT[resource]]}
        detail = f"status: {_CONFLICT[resource]}"
    elif code == 413:
        errors = {"payload": [_TOO_LARGE]}
        detail = f"payload: {_TOO_LARGE}"
    elif code == 415:
        detail = 'Unsupported media type "text/plain" in request.'
    else:
        detail = "Request was throttled. Expected available in 12 seconds."
    value = {"detail": detail, "errors": errors}
    return OpenApiExample(str(code), value=value, status_codes=[str(code)], response_only=True)


def error_responses(*codes: int, resource: str = "job") -> dict[int, OpenApiResponse]:
    """The OpenAPI responses for ``codes``, described for ``resource``, each with an example body."""
    return {
        code: OpenApiResponse(
            ErrorSerializer,
            description=ERROR_DESCRIPTIONS[code].format(resource=resource),
            examples=[error_example(code, resource)],
        )
        for code in codes
    }
