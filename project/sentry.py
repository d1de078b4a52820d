"""Sentry wiring: one event per final failure, beat crons as cron monitors, and no payloads or PII.

A tracked job's exceptions are not sent by the Celery integration (it would report every retry
and every attempt); the alerting path sends one event per dead letter instead. Celery-native
tasks (crons, alerting) and web errors are reported as usual.

Every event is scrubbed before it leaves the process: request bodies, cookies, query strings and
all headers but a few harmless ones are dropped; the Celery integration's copy of a task's args
and kwargs (a job's payload) is replaced; stack frames carry no local variables; breadcrumbs keep
what happened (category, message, level) but not their data, and Celery's "Task … succeeded"
lines, which print the return value, are dropped. ``send_default_pii`` stays off.

Beat: every periodic task with a crontab or a whole-minute interval is reported as a Sentry cron
monitor named after its beat entry (check-ins: in progress when beat sends it, ok or error when a
worker finishes it). Intervals under a minute are not supported by Sentry Crons and are skipped.
"""

from __future__ import annotations

from typing import Any

TRACKED_TAG = "terminus.tracked"
FILTERED = "[Filtered]"
#: Request headers an event may keep; every other header (Authorization, Cookie, ...) is dropped.
SAFE_HEADERS = frozenset({"accept", "content-length", "content-type", "host", "user-agent", "x-correlation-id"})
#: Log breadcrumbs from these loggers print a task's arguments or return value: dropped.
NOISY_LOGGERS = frozenset({"celery.app.trace", "celery.worker.strategy"})


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    tags = event.get("tags") or {}
    if tags.get(TRACKED_TAG) == "1":
        mechanisms = {
            (value.get("mechanism") or {}).get("type") for value in (event.get("exception") or {}).get("values", [])
        }
        if "celery" in mechanisms:
            return None
    return scrub(event)


def scrub(event: dict[str, Any]) -> dict[str, Any]:
    """Remove payloads and personal data from an event (see the module docstring)."""
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string", "env"):
            request.pop(key, None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {name: value for name, value in headers.items() if name.lower() in SAFE_HEADERS}
    user = event.get("user")
    if isinstance(user, dict):
        event["user"] = {"id": user["id"]} if "id" in user else {}
    job = (event.get("extra") or {}).get("celery-job")
    if isinstance(job, dict):
        for key in ("args", "kwargs"):
            if key in job:
                job[key] = FILTERED
    for value in (event.get("exception") or {}).get("values", []) or []:
        for frame in (value.get("stacktrace") or {}).get("frames", []) or []:
            frame.pop("vars", None)
    for thread in (event.get("threads") or {}).get("values", []) or []:
        for frame in (thread.get("stacktrace") or {}).get("frames", []) or []:
            frame.pop("vars", None)
    breadcrumbs = event.get("breadcrumbs")
    if isinstance(breadcrumbs, dict) and isinstance(breadcrumbs.get("values"), list):
        breadcrumbs["values"] = [crumb for crumb in map(_scrub_breadcrumb, breadcrumbs["values"]) if crumb]
    return event


def _scrub_breadcrumb(crumb: dict[str, Any]) -> dict[str, Any] | None:
    if crumb.get("category") in NOISY_LOGGERS:
        return None
    data = crumb.get("data")
    if isinstance(data, dict):
        # An HTTP call's method and status say what happened; its URL may carry tokens or ids.
        kept = {key: data[key] for key in ("method", "status_code") if key in data}
        crumb = {**crumb, "data": kept} if kept else {k: v for k, v in crumb.items() if k != "data"}
    return crumb


def init(*, dsn: str, environment: str | None, release: str | None) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        send_default_pii=False,
        include_local_variables=False,  # a job's payload is a local variable of every frame that runs it
        max_request_body_size="never",
        before_send=before_send,
        integrations=[DjangoIntegration(), CeleryIntegration(monitor_beat_tasks=True)],
    )
