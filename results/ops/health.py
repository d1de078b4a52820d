"""Probes: ``/healthz`` says the process is alive; ``/readyz`` says whether the system can do its job."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from tasks.fleet.readiness import CHECKS, readiness


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving requests; it touches neither the database nor the broker."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Database, broker, a worker answering a ping, beat ticking, DLQ under its thresholds, every
    queue's canary consumed, no job past its deadline: 200 when all hold, else 503 naming the failing ones.

    ``?check=database&check=broker`` (or ``?check=database,broker``) runs only those, e.g. for a
    load balancer that should keep sending API traffic while the broker is down (submissions are
    recorded and published later). Each verdict change alerts once (tasks.fleet.readiness.record).
    """
    asked = [name for value in request.GET.getlist("check") for name in value.split(",") if name]
    unknown = sorted(set(asked) - set(CHECKS))
    if unknown:
        return JsonResponse({"error": f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}"}, status=400)
    body = readiness(tuple(name for name in CHECKS if name in asked) if asked else CHECKS, background_alerts=True)
    return JsonResponse(body, status=200 if body["status"] == "ok" else 503)
