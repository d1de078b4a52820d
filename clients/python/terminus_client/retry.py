"""When to send a request again, and how long to wait first.

A request is sent again when it got no answer (the connection was refused, reset or timed out)
or the answer was 503, up to ``RetryPolicy.max_attempts`` times, waiting a capped, jittered,
exponentially growing delay in between (``compute_backoff``); a 503's ``Retry-After`` is honoured
up to the same cap. Only requests that cannot do a thing twice are sent again after the server
may have read them (see ``Transport``): a refused connection never reached it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

#: Attempts per request, the first included.
DEFAULT_MAX_ATTEMPTS = 5
#: Delay before the first retry, seconds; it doubles with each one.
DEFAULT_BACKOFF_BASE = 0.5
#: Longest delay between two attempts, seconds (a Retry-After above it is cut to it).
DEFAULT_BACKOFF_MAX = 10.0


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently a request is retried; ``RetryPolicy(max_attempts=1)`` never retries."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be 1 or more")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must be 0 or more")

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first): the server's advice, or backoff."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.backoff_max)
        return compute_backoff(retry, base=self.backoff_base, cap=self.backoff_max)


def compute_backoff(retry: int, *, base: float, cap: float) -> float:
    """Jittered exponential backoff: uniform between base/2 and min(cap, base * 2**(retry-1)).

    The jitter spreads out clients that failed together, so they do not all come back at once.
    """
    ceiling = min(cap, base * 2 ** max(0, retry - 1))
    return random.uniform(min(base / 2, ceiling), ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP date (RFC 9110); None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
