"""The error responses every endpoint documents: one description per status code, for jobs and dead letters alike.

The body is always ``ErrorSerializer`` (results.api.errors writes it); only the noun changes.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse

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


def error_responses(*codes: int, resource: str = "job") -> dict[int, OpenApiResponse]:
    """The OpenAPI responses for ``codes``, described for ``resource``."""
    return {
        code: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[code].format(resource=resource))
        for code in codes
    }
