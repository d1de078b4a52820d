"""Liveness for probes: answers without touching the database or the broker."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving requests; /readyz (a later check) says whether it can work."""
    return JsonResponse({"status": "ok"})
