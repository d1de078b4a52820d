"""The "submit" throttle: job submissions and reruns, per user, at REST_FRAMEWORK's rate."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle


class SubmitRateThrottle(ScopedRateThrottle):
    """ScopedRateThrottle reading the rate when a request comes, not when DRF was imported.

    DRF copies DEFAULT_THROTTLE_RATES into a class attribute at import, so a changed setting
    (an override in a test, a reloaded configuration) would never apply.
    """

    def get_rate(self) -> str | None:
        try:
            return api_settings.DEFAULT_THROTTLE_RATES[self.scope]
        except KeyError:
            raise ImproperlyConfigured(f"no throttle rate for scope {self.scope!r} in DEFAULT_THROTTLE_RATES") from None
