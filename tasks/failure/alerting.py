"""Alerting: every dead letter reaches a human, once.

Sentry gets one event per final failure (fingerprinted by job type + error type so they group) and
the log one structured ERROR line. People-facing channels (a Slack-compatible webhook, mail to
ADMINS, each apprise URL of TERMINUS_ALERT_URLS: tasks.failure.apprise_urls) are throttled: one
alert per (job type, error type) per window, then a summary with the count of the rest. Each
delivery is an ``Alert`` row written before sending and updated after, so a retried alerting task
never sends the same channel twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from celery import shared_task
from django.conf import settings
from django.core.mail import mail_admins
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from results.models import Alert, AlertStatus, AlertWindow, DeadLetter
from tasks.failure import apprise_urls
from tasks.failure.apprise_urls import AlertError

logger = logging.getLogger("terminus.alerts")

FLUSH_TASK = "terminus.alerts.flush"


@dataclass(frozen=True)
class Notice:
    key: str
    subject: str
    text: str
    count: int
    dead_letter: DeadLetter | None


# -- channels -------------------------------------------------------------------------------
class Channel:
    name = "channel"

    def enabled(self) -> bool:
        return True

    def send(self, notice: Notice) -> None:
        raise NotImplementedError


class WebhookChannel(Channel):
    """A Slack-compatible incoming webhook: ``{"text": ...}`` plus structured fields."""

    name = "webhook"

    def enabled(self) -> bool:
        return bool(settings.TERMINUS_ALERT_WEBHOOK_URL)

    def send(self, notice: Notice) -> None:
        letter = notice.dead_letter
        body = {
            # Escaped: an error message is the job's or a receiver's text, and "<!channel>" or
            # "<https://evil|a link>" in it must reach people as text, not as a ping or a link.
            "text": f"*{slack_escaped(notice.subject)}*\n{slack_escaped(notice.text)}",
            "terminus": {
                "key": notice.key,
                "count": notice.count,
                "dead_letter": letter.pk if letter else None,
                "job_id": str(letter.job_id) if letter and letter.job_id else None,
                "reason": letter.reason if letter else None,
            },
        }
        try:
            response = httpx.post(settings.TERMINUS_ALERT_WEBHOOK_URL, json=body, timeout=10)
        except httpx.HTTPError as exc:
            raise AlertError(f"webhook unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise AlertError(f"webhook answered {response.status_code}")
        if response.status_code >= 400:
            raise AlertError(f"webhook refused the alert: {response.status_code}", permanent=True)


def slack_escaped(text: str) -> str:
    """``text`` with Slack's three control characters escaped (&, <, >), as Slack asks for untrusted text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class MailChannel(Channel):
    name = "mail"

    def enabled(self) -> bool:
        return settings.TERMINUS_ALERT_MAIL and bool(settings.ADMINS)

    def send(self, notice: Notice) -> None:
        try:
            mail_admins(notice.subject, notice.text, fail_silently=False)
        except OSError as exc:
            raise AlertError(f"mail failed: {exc}") from exc


class AppriseChannel(Channel):
    """One apprise URL (TERMINUS_ALERT_URLS): Teams, PagerDuty, Opsgenie, Discord, Telegram, a JSON webhook, …"""

    def __init__(self, target: apprise_urls.Target):
        self.target = target
        self.name = target.name

    def send(self, notice: Notice) -> None:
        self.target.send(title=notice.subject, body=notice.text, failure=notice.dead_letter is not None)


def channels() -> list[Channel]:
    fixed = [channel for channel in (WebhookChannel(), MailChannel()) if channel.enabled()]
    return fixed + [AppriseChannel(target) for target in apprise_urls.targets()]


# -- the per-dead-letter path -----------------------------------------------------------------
def throttle_key(dead_letter: DeadLetter) -> str:
    return f"{dead_letter.task_name or '?'}|{dead_letter.error_type or dead_letter.reason}"[:300]


def describe(dead_letter: DeadLetter) -> tuple[str, str]:
    job_part = f"job {dead_letter.job_id}" if dead_letter.job_id else f"message {dead_letter.message_key}"
    subject = (
        f"[Terminus] {dead_letter.task_name or 'unknown task'} failed: {dead_letter.error_type or dead_letter.reason}"
    )
    lines = [
        f"{job_part} is dead-lettered ({dead_letter.reason}) after {dead_letter.attempts} attempt(s).",
        f"Error: {dead_letter.error_type}: {dead_letter.error_message[:500]}",
        f"Inspect: {settings.TERMINUS_BASE_URL}/admin/results/deadletter/{dead_letter.pk}/change/",
        f"Replay: POST {settings.TERMINUS_BASE_URL}/api/dead-letters/{dead_letter.pk}/replay/",
    ]
    return subject[:300], "\n".join(lines)


def alert_dead_letter(dead_letter: DeadLetter) -> None:
    """Tell people about one dead letter; safe to call again for the same one (task retries).

    The claim (alerted_at), the throttle count and the Alert rows are one transaction, so a crash
    can neither lose the alert nor send it twice; a retry only resends rows not yet sent.
    """
    summaries: list[Alert] = []
    with transaction.atomic():
        first_time = DeadLetter.objects.filter(pk=dead_letter.pk, alerted_at__isnull=True).update(alerted_at=Now()) == 1
        if first_time:
            due, summaries = _count_in_window(dead_letter)
            if due:
                subject, text = describe(dead_letter)
                for channel in channels():
                    Alert.objects.create(
                        key=throttle_key(dead_letter),
                        channel=channel.name,
                        dead_letter=dead_letter,
                        count=1,
                        subject=subject,
                        text=text,
                    )
    if first_time:
        _log_and_sentry(dead_letter)
    pending = list(Alert.objects.filter(dead_letter=dead_letter).exclude(status=AlertStatus.SENT))
    deliver(pending + summaries)


def _log_and_sentry(dead_letter: DeadLetter) -> None:
    job_id = str(dead_letter.job_id) if dead_letter.job_id else None
    correlation_id = (dead_letter.headers or {}).get("correlation_id", "")
    logger.error(
        "dead letter: %s %s failed for good (%s): %s",
        dead_letter.task_name,
        job_id or dead_letter.message_key,
        dead_letter.reason,
        dead_letter.error_type,
        extra={
            "job_id": job_id,
            "job_type": dead_letter.task_name,
            "attempts": dead_letter.attempts,
            "reason": dead_letter.reason,
            "error_type": dead_letter.error_type,
            "correlation_id": correlation_id,
            "dead_letter_id": dead_letter.pk,
        },
    )
    if not settings.SENTRY_DSN:
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = ["terminus-dead-letter", dead_letter.task_name or "?", dead_letter.error_type or "?"]
        scope.set_tag("job_type", dead_letter.task_name or "?")
        scope.set_tag("error_type", dead_letter.error_type or "?")
        scope.set_tag("dead_letter_reason", dead_letter.reason)
        if job_id:
            scope.set_tag("job_id", job_id)
        if correlation_id:
            scope.set_tag("correlation_id", correlation_id)
        scope.set_extra("attempts", dead_letter.attempts)
        scope.set_extra("dead_letter_id", dead_letter.pk)
        scope.set_level("error")
        sentry_sdk.capture_message(
            f"{dead_letter.task_name or 'message'} failed for good: {dead_letter.error_type}: "
            f"{dead_letter.error_message[:200]}"
        )


def _count_in_window(dead_letter: DeadLetter) -> tuple[bool, list[Alert]]:
    """Count the failure in its throttle window: (alert now?, summary alerts of a window just closed)."""
    key = throttle_key(dead_letter)
    now = timezone.now()
    window = timedelta(seconds=settings.TERMINUS_ALERT_WINDOW)
    row, created = AlertWindow.objects.select_for_update().get_or_create(
        key=key, defaults={"opened_at": now, "count": 1, "reported": 1}
    )
    if created:
        return True, []
    if row.opened_at > now - window:
        AlertWindow.objects.filter(pk=row.pk).update(count=F("count") + 1)
        return False, []
    leftover = row.count - row.reported
    AlertWindow.objects.filter(pk=row.pk).update(opened_at=now, count=1, reported=1)
    return True, _summary_alerts(key, leftover, row.opened_at) if leftover > 0 else []


def _summary_alerts(key: str, count: int, since: Any) -> list[Alert]:
    job_type, error_type = key.split("|", 1)
    subject = f"[Terminus] {count} more {job_type} failures: {error_type}"
    text = (
        f"{count} more jobs of type {job_type} failed for good with {error_type} since "
        f"{since:%Y-%m-%d %H:%M:%S} UTC (alerts were throttled to one per {settings.TERMINUS_ALERT_WINDOW} s).\n"
        f"List them: GET {settings.TERMINUS_BASE_URL}/api/dead-letters/?type={job_type}&error_type={error_type}"
    )
    return [
        Alert.objects.create(key=key, channel=channel.name, count=count, subject=subject[:300], text=text)
        for channel in channels()
    ]


def deliver(alerts: list[Alert]) -> None:
    """Send each recorded alert; raise (so the task retries) if any failed transiently."""
    by_name = {channel.name: channel for channel in channels()}
    retry: list[str] = []
    for alert in alerts:
        channel = by_name.get(alert.channel)
        if channel is None:
            continue
        started = time.monotonic()
        notice = Notice(alert.key, alert.subject, alert.text, alert.count, alert.dead_letter)
        try:
            channel.send(notice)
        except AlertError as exc:
            error = f"permanent: {exc}" if exc.permanent else str(exc)
            Alert.objects.filter(pk=alert.pk).update(status=AlertStatus.FAILED, error=error)
            logger.warning("alert %s via %s failed: %s", alert.pk, alert.channel, exc)
            if not exc.permanent:
                retry.append(f"{alert.channel}: {exc}")
            continue
        Alert.objects.filter(pk=alert.pk).update(
            status=AlertStatus.SENT, sent_at=Now(), error="", duration_ms=int((time.monotonic() - started) * 1000)
        )
    if retry:
        raise AlertError("; ".join(retry))


@shared_task(name=FLUSH_TASK)
def flush_alerts() -> dict[str, int]:
    """Beat, every minute: summaries of throttle windows that closed with unreported failures,
    and another try for alerts a channel refused earlier."""
    cutoff = timezone.now() - timedelta(seconds=settings.TERMINUS_ALERT_WINDOW)
    summaries: list[Alert] = []
    for window_id in AlertWindow.objects.filter(opened_at__lte=cutoff, count__gt=F("reported")).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            row = AlertWindow.objects.select_for_update().get(pk=window_id)
            leftover = row.count - row.reported
            if leftover > 0:
                AlertWindow.objects.filter(pk=row.pk).update(reported=row.count)
                summaries += _summary_alerts(row.key, leftover, row.opened_at)
    stale = timezone.now() - timedelta(seconds=60)
    retries = list(
        Alert.objects.filter(status__in=[AlertStatus.PENDING, AlertStatus.FAILED], created_at__lt=stale)
        .exclude(error__startswith="permanent: ")
        .select_related("dead_letter")[:500]
    )
    try:
        deliver(summaries + retries)
    except AlertError:
        logger.warning("some alerts are still failing; the next flush tries again")
    return {"summaries": len(summaries), "retried": len(retries)}


# A malformed TERMINUS_ALERT_URLS stops every process at start, not the first alert.
apprise_urls.targets()
