"""Sentry wiring: one event per final failure, not one per failed attempt.

A tracked job's exceptions are not sent by the Celery integration (it would report every retry
and every attempt); the alerting path sends one event per dead letter instead. Celery-native
tasks (crons, alerting) and web errors are reported as usual.
"""

from __future__ import annotations

from typing import Any

TRACKED_TAG = "terminus.tracked"


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    tags = event.get("tags") or {}
    if tags.get(TRACKED_TAG) == "1":
        mechanisms = {
            (value.get("mechanism") or {}).get("type") for value in (event.get("exception") or {}).get("values", [])
        }
        if "celery" in mechanisms:
            return None
    return event


def init(*, dsn: str, environment: str | None, release: str | None) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        send_default_pii=False,
        before_send=before_send,
        integrations=[DjangoIntegration(), CeleryIntegration()],
    )
