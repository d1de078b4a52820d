"""The "submit" throttle: job submissions and reruns, per user, at REST_FRAMEWORK's rate.

The rate counts jobs, not requests: a view may say what a request costs (``throttle_cost``), so a
batch of N jobs spends N submissions of the budget. A request that would go over the budget is
refused whole (429 with ``Retry-After``) and spends nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle


class SubmitRateThrottle(ScopedRateThrottle):
    """ScopedRateThrottle reading the rate when a request comes, and charging what the request costs.

    DRF copies DEFAULT_THROTTLE_RATES into a class attribute at import, so a changed setting
    (an override in a test, a reloaded configuration) would never apply. The history is DRF's
    (one timestamp per submission, newest first), so both count against the same budget.
    """

    cost = 1

    def get_rate(self) -> str | None:
        try:
            return api_settings.DEFAULT_THROTTLE_RATES[self.scope]
        except KeyError:
            raise ImproperlyConfigured(f"no throttle rate for scope {self.scope!r} in DEFAULT_THROTTLE_RATES") from None

    def allow_request(self, request: Request, view: Any) -> bool:
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        cost_of = getattr(view, "throttle_cost", None)
        self.cost = max(1, int(cost_of(request))) if cost_of is not None else 1
        if self.cost > max(1, self.num_requests):  # a batch never allowed, however long the client waits
            field = getattr(view, "throttle_cost_field", "body")
            raise exceptions.ValidationError(
                {
                    field: [
                        f"{self.cost} jobs are more than the submit rate allows ({self.rate}); "
                        f"send at most {self.num_requests} per request"
                    ]
                }
            )
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        if len(self.history) + self.cost > self.num_requests:
            return self.throttle_failure()
        self.history[:0] = [self.now] * self.cost
        self.cache.set(self.key, self.history, self.duration)
        return True

    def wait(self) -> float | None:
        """Seconds until enough of the oldest submissions leave the window for this request's cost."""
        expiring = len(self.history) + self.cost - self.num_requests  # that many must leave first
        if expiring <= 0:
            return 0.0
        return max(0.0, self.duration - (self.now - self.history[-expiring]))
