"""Operational alerts (a failing cron, a health check that flips, a hook that keeps failing).

They travel the same channels as dead-letter alerts (tasks/failure/alerting.py: the log, Sentry, the
webhook and mail), recorded as ``Alert`` rows before sending, so ``terminus.alerts.flush`` resends
what a channel refused. Callers alert on *transitions* (see ``HealthState.record``), never on every
tick, so one outage is one alert and one recovery.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import connection

from results.models import Alert
from tasks.failure.alerting import AlertError, channels, deliver

logger = logging.getLogger("terminus.alerts")


def ops_alert(key: str, subject: str, text: str, *, recovered: bool = False, background: bool = False) -> None:
    """Tell people once: log (ERROR, or WARNING for a recovery), Sentry, then every alert channel.

    ``background`` delivers from a thread (a web request must not wait on a webhook); a delivery
    that does not happen is resent by the alert flush cron from its recorded row.
    """
    subject = f"[Terminus] {subject}"[:300]
    log = logger.warning if recovered else logger.error
    log("%s: %s", subject, text, extra={"alert_key": key})
    _to_sentry(key, subject, text, recovered=recovered)
    alerts = [
        Alert.objects.create(key=key[:300], channel=channel.name, count=1, subject=subject, text=text)
        for channel in channels()
    ]
    if not alerts:
        return
    if background:
        threading.Thread(target=_deliver_and_close, args=(alerts,), daemon=True, name=f"alert {key}").start()
    else:
        _deliver_quietly(alerts)


def _deliver_quietly(alerts: list[Alert]) -> None:
    try:
        deliver(alerts)
    except AlertError:
        logger.warning("some operational alerts were not delivered; the alert flush retries them")


def _deliver_and_close(alerts: list[Alert]) -> None:
    try:
        _deliver_quietly(alerts)
    finally:
        connection.close()  # this thread's own connection


def _to_sentry(key: str, subject: str, text: str, *, recovered: bool) -> None:
    if not settings.SENTRY_DSN:
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = ["terminus-ops", key]
        scope.set_tag("alert_key", key)
        scope.set_level("info" if recovered else "error")
        sentry_sdk.capture_message(f"{subject}\n{text}")
