"""Probes: ``/healthz`` says the process is alive; ``/readyz`` says whether the system can do its job."""

from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from results.ops.access import sees_details
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
    Anonymous callers get the verdict only; staff and the metrics token's bearer get every check.
    """
    asked = [name for value in request.GET.getlist("check") for name in value.split(",") if name]
    unknown = sorted(set(asked) - set(CHECKS))
    if unknown:
        return JsonResponse({"error": f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}"}, status=400)
    body = cached_readiness(tuple(name for name in CHECKS if name in asked) if asked else CHECKS)
    status = 200 if body["status"] == "ok" else 503
    if not sees_details(request):
        # Node names, the database vendor and error strings are for operators, not for anyone.
        return JsonResponse({"status": body["status"]}, status=status)
    return JsonResponse(body, status=status)


def cached_readiness(names: tuple[str, ...]) -> dict[str, Any]:
    """The checks' answer, shared for TERMINUS_READY_CACHE_SECONDS through the cache.

    Each run pings every worker and writes the verdicts: without this, every probe (and anyone
    calling /readyz in a loop) would fan out to the whole fleet.
    """
    seconds = settings.TERMINUS_READY_CACHE_SECONDS
    key = "terminus:readyz:" + ",".join(names)
    body = cache.get(key) if seconds else None
    if body is None:
        body = readiness(names, background_alerts=True)
        if seconds:
            cache.set(key, body, seconds)
    return body
