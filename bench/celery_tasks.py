"""Benchmark-only tasks, loaded by the bench workers only (``celery -A project worker -I bench.celery_tasks``).

Every variant runs the same no-op body on the same worker command:

- ``bench.bare``: plain Celery, no result stored (``ignore_result=True``);
- ``bench.dcr``: plain Celery storing its result with django-celery-results (``django-db``),
  STARTED included, as ``CELERY_TASK_TRACK_STARTED`` configures it;
- ``bench.dcr_nostarted``: the same without the STARTED write (reported as an extra variant);
- ``bench.noop``: a Terminus tracked job type (``tasks.runtime.registry.job``): claim and success records.

One ``task_postrun`` handler serves all of them, so every variant pays the same extra cost: one
pipelined Redis round trip that counts the task and appends ``"<task id> <time.time()>"`` to a
list. It runs after the variant's own record writes (Celery sends ``task_postrun`` after
``on_success`` and after the result backend's ``mark_as_done``), so its timestamp is "terminal as
the worker sees it", which the latency measurement subtracts the submit time from.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import shared_task
from celery.signals import task_postrun
from pydantic import BaseModel

from tasks.runtime.base import TrackedTask
from tasks.runtime.registry import job

from .common import DONE_COUNTER, DONE_LIST, TRACKED_QUEUE, VARIANTS  # noqa: F401 - VARIANTS re-exported


@shared_task(name="bench.bare", ignore_result=True)
def bare(**_: Any) -> None:
    """No-op, no result backend: bare Celery."""
    return None


@shared_task(name="bench.dcr", ignore_result=False)
def dcr(**_: Any) -> None:
    """No-op whose result (and STARTED state, per settings) django-celery-results stores."""
    return None


@shared_task(name="bench.dcr_nostarted", ignore_result=False, track_started=False)
def dcr_nostarted(**_: Any) -> None:
    """No-op whose result django-celery-results stores, without the STARTED write."""
    return None


class NoopInput(BaseModel):
    """No input: the job does nothing."""


@job("bench.noop", input=NoopInput, queue=TRACKED_QUEUE)
def noop(task: TrackedTask, data: NoopInput) -> None:
    """No-op tracked job (benchmarks only); idempotent, no side effects."""
    return None


_client: tuple[int, redis.Redis] | None = None


def redis_client() -> redis.Redis:
    """One client per process (pool children are forked: never share the parent's sockets)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")))
    return _client[1]


@task_postrun.connect
def _record_done(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """Count the task and note when it finished (worker clock; the runner runs on the same host)."""
    if sender is None or not str(getattr(sender, "name", "")).startswith("bench."):
        return
    pipe = redis_client().pipeline(transaction=False)
    pipe.incr(DONE_COUNTER)
    pipe.rpush(DONE_LIST, f"{task_id} {time.time():.6f}")
    pipe.execute()


def _apply_experiments() -> None:
    """A worker started with BENCH_EXPERIMENTS measures a candidate change (bench/experiments.py)."""
    from . import experiments

    experiments.apply_from_env()


_apply_experiments()
