"""Retry policy: which errors are retried, how often, and how long to wait between attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from django.conf import settings
from pydantic import ValidationError

from tasks.runtime.errors import PermanentError, TransientError

#: Errors that mean "the code or the input is wrong": retrying them only burns the budget.
NEVER_RETRY: tuple[type[BaseException], ...] = (
    PermanentError,
    ValidationError,
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    NameError,
    LookupError,
    NotImplementedError,
)


def _default_max_retries() -> int:
    return settings.TERMINUS_DEFAULT_MAX_RETRIES


def _default_backoff_base() -> float:
    return settings.TERMINUS_RETRY_BACKOFF_BASE


def _default_backoff_max() -> float:
    return settings.TERMINUS_RETRY_BACKOFF_MAX


def compute_backoff(
    retries: int, *, base: float, cap: float, jitter: bool = True, rng: random.Random | None = None
) -> float:
    """Seconds before retry number ``retries + 1``: ``base * 2**retries`` capped, with equal jitter.

    Equal jitter (half fixed, half random) spreads a burst of retries apart while keeping every
    delay at least half its exponential step, so delays still grow from one retry to the next.
    """
    ceiling = min(cap, base * (2 ** min(retries, 62)))
    if not jitter:
        return ceiling
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """A job type's retry rules, turned into Celery's own ``autoretry_for`` options."""

    max_retries: int = field(default_factory=_default_max_retries)
    backoff_base: float = field(default_factory=_default_backoff_base)
    backoff_max: float = field(default_factory=_default_backoff_max)
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (TransientError,)
    never_retry: tuple[type[BaseException], ...] = NEVER_RETRY

    def countdown(self, retries: int) -> float:
        return compute_backoff(retries, base=self.backoff_base, cap=self.backoff_max, jitter=self.jitter)

    def worst_case_wait(self) -> float:
        """Longest total time spent waiting between attempts, for the job's deadline."""
        return sum(min(self.backoff_max, self.backoff_base * 2 ** min(n, 62)) for n in range(self.max_retries))

    def task_options(self) -> dict[str, object]:
        # retry_backoff stays off: TrackedTask.retry() fills the countdown from compute_backoff,
        # whose jitter never drops a delay to 0 the way Celery's full jitter can.
        return {
            "autoretry_for": self.retry_on,
            "dont_autoretry_for": self.never_retry,
            "max_retries": self.max_retries,
            "retry_backoff": False,
            "retry_jitter": False,
        }


def no_retry() -> RetryPolicy:
    """For jobs that must run at most once per submission."""
    return RetryPolicy(max_retries=0, retry_on=())
