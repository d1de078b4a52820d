"""Who may see more than a verdict on the operational endpoints: the metrics token's bearer, or staff."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest


def bearer_token_matches(request: HttpRequest) -> bool:
    """The request carries ``Authorization: Bearer <TERMINUS_METRICS_TOKEN>`` (False when no token is set)."""
    token = settings.TERMINUS_METRICS_TOKEN
    if not token:
        return False
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())


def sees_details(request: HttpRequest) -> bool:
    """Staff signed in, or the metrics token: what /readyz says beyond ok or failing."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff) or bearer_token_matches(request)
