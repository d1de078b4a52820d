"""Alert channels from apprise URLs (``TERMINUS_ALERT_URLS``): Slack, Teams, PagerDuty, Opsgenie,
Discord, Telegram, mail, a generic JSON webhook, … — every service apprise knows, with no bridge.

Each URL is a channel of its own (tasks.failure.alerting.AppriseChannel), so a channel that fails
is retried alone and never resends to the others. The channel's name carries the scheme and a hash
of the URL, never the URL: URLs hold tokens.

The generic webhooks (``json://``, ``xml://``, ``form://`` and their ``s`` forms) name the host they
post to, so they obey the outbound policy (tasks.runtime.outbound, ``TERMINUS_OUTBOUND_ALLOW``) as
jobs' webhooks do: a loopback, private or metadata address must be listed there. The check resolves
the host before apprise connects (apprise opens its own connection, so unlike a job's webhook the
address is checked, not pinned); the URLs are the operator's, not a user's. The other services post
to their vendor's public endpoint.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import apprise
import httpcore
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

#: apprise's generic webhooks: the URL's host is the receiver, so the outbound policy judges it.
WEBHOOK_SCHEMES = frozenset({"json", "jsons", "xml", "xmls", "form", "forms"})

#: (host, port) -> why it may not be reached, or None. The outbound policy lives a floor above
#: (tasks.runtime.outbound), which installs its check here when imported (tasks.apps imports it in
#: every process); until then a generic webhook is refused rather than sent unchecked.
AddressGuard = Callable[[str, int], str | None]
_address_guard: AddressGuard | None = None


def install_address_guard(guard: AddressGuard) -> None:
    global _address_guard
    _address_guard = guard


class AlertError(Exception):
    """A channel failed to deliver; ``permanent`` ones (a refused address) are recorded and not retried.

    Defined here, the lowest module of alert delivery; tasks.failure.alerting's channels raise it too."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Target:
    """One apprise URL: its channel name and apprise's notifier for it."""

    name: str
    scheme: str
    plugin: Any

    def send(self, *, title: str, body: str, failure: bool) -> None:
        """Deliver one alert; AlertError says why not (apprise's own log lines, secrets masked by it)."""
        if self.scheme in WEBHOOK_SCHEMES:
            self._check_outbound()
        kind = apprise.NotifyType.FAILURE if failure else apprise.NotifyType.WARNING
        with apprise.LogCapture(level=logging.WARNING) as captured:
            delivered = self.plugin.notify(body=body, title=title, notify_type=kind)
        if not delivered:
            reason = " ".join(captured.getvalue().split())[-500:] or "no reason given"
            raise AlertError(f"{self.scheme}:// did not deliver: {reason}")

    def _check_outbound(self) -> None:
        if _address_guard is None:
            raise AlertError("no outbound policy installed (tasks.runtime.outbound was not imported)")
        port = self.plugin.port or (443 if self.plugin.secure else 80)
        try:
            refusal = _address_guard(self.plugin.host, port)
        except httpcore.ConnectError as exc:  # the name does not resolve (yet): try again later
            raise AlertError(f"{self.scheme}:// cannot be reached: {exc}") from exc
        if refusal:
            raise AlertError(refusal, permanent=True)


def channel_name(url: str) -> str:
    """``apprise-<scheme>-<8 hex>``: stable for the URL (Alert rows name it), and no secret in it."""
    scheme = urlsplit(url).scheme.lower()[:10]
    return f"apprise-{scheme}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


@lru_cache(maxsize=4)
def _targets(urls: tuple[str, ...]) -> tuple[Target, ...]:
    targets = []
    for position, url in enumerate(urls, start=1):
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
        scheme = urlsplit(url).scheme.lower()
        if plugin is None:
            # Never the URL itself in the message: it holds the service's token.
            raise ImproperlyConfigured(
                f"TERMINUS_ALERT_URLS: entry {position} ({scheme or 'no scheme'}://…) is not a URL apprise "
                "can use (see apprise's list of services for the scheme's form)"
            )
        targets.append(Target(name=channel_name(url), scheme=scheme, plugin=plugin))
    return tuple(targets)


def targets() -> tuple[Target, ...]:
    """The channels TERMINUS_ALERT_URLS names; ImproperlyConfigured for a URL apprise cannot use."""
    return _targets(tuple(settings.TERMINUS_ALERT_URLS))
