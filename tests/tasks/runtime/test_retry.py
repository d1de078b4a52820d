"""The retry policy: backoff math and the Celery options it emits."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from tasks.runtime.errors import PermanentError, TransientError
from tasks.runtime.retry import NEVER_RETRY, RetryPolicy, compute_backoff, no_retry


@pytest.mark.parametrize(
    ("retries", "base", "cap", "expected"),
    [
        (0, 2, 600, 2),
        (1, 2, 600, 4),
        (5, 2, 600, 64),
        (9, 2, 600, 600),  # 1024 capped
        (500, 2, 600, 600),  # no overflow on huge retry counts
        (3, 0.5, 3, 3),
    ],
)
def test_backoff_without_jitter_doubles_up_to_the_cap(retries, base, cap, expected):
    assert compute_backoff(retries, base=base, cap=cap, jitter=False) == expected


@pytest.mark.parametrize("retries", range(12))
def test_jittered_backoff_stays_between_half_the_step_and_the_step(retries):
    rng = random.Random(retries)
    ceiling = min(60, 1 * 2**retries)
    for _ in range(200):
        delay = compute_backoff(retries, base=1, cap=60, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_jitter_spreads_a_burst_of_retries():
    rng = random.Random(7)
    delays = {round(compute_backoff(4, base=1, cap=60, rng=rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_worst_case_wait_sums_the_capped_steps():
    policy = RetryPolicy(max_retries=4, backoff_base=1, backoff_max=5)
    assert policy.worst_case_wait() == 1 + 2 + 4 + 5


def test_policy_emits_celery_autoretry_options_without_celery_backoff():
    policy = RetryPolicy(max_retries=3, retry_on=(TransientError, TimeoutError))
    options = policy.task_options()
    assert options["autoretry_for"] == (TransientError, TimeoutError)
    assert options["max_retries"] == 3
    assert options["retry_backoff"] is False  # our countdown comes from compute_backoff
    assert PermanentError in options["dont_autoretry_for"]


@pytest.mark.parametrize("error", [PermanentError, ValidationError, TypeError, ValueError, KeyError, AttributeError])
def test_programming_and_validation_errors_are_never_retried(error):
    assert issubclass(error, NEVER_RETRY)


def test_no_retry_policy_runs_once():
    policy = no_retry()
    assert policy.max_retries == 0 and policy.task_options()["autoretry_for"] == ()
