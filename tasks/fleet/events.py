"""Worker-side event metrics, counted where they happen, with prometheus_client's multiprocess mode.

The pool child that runs an attempt (or the worker's main process, for a hard time limit) counts:
attempt duration histogram, retries, failures. Each worker writes them under
``PROMETHEUS_MULTIPROC_DIR/<node>/`` (wiped when that worker starts; one file per pool slot, see
``_process_slot``) and serves the sum of its processes on ``TERMINUS_WORKER_METRICS_PORT``;
``/metrics`` (results.ops.metrics) adds up every worker directory it can see, so on one host
(systemd, ``make run``) it shows them too. Counting these from JobAttempt rows at scrape time
instead would mean scanning every attempt ever made on every scrape.

The signal handlers connect when this module is imported (tasks.apps imports it in every process).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from billiard.process import current_process
from celery.signals import task_failure, task_postrun, task_prerun, task_retry, worker_init, worker_ready
from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

#: Attempt durations, seconds: from sub-second webhooks to hour-long exports.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Celery task states as attempt outcomes.
OUTCOMES = {"SUCCESS": "succeeded", "RETRY": "retried", "FAILURE": "failed", "IGNORED": "ignored"}

# -- events (worker side) ------------------------------------------------------------------------
ATTEMPT_DURATION = Histogram(
    "terminus_job_attempt_duration_seconds",
    "How long one attempt of a job ran, by job type and outcome (succeeded, retried, failed, ignored).",
    ["type", "outcome"],
    buckets=DURATION_BUCKETS,
    registry=None,
)
RETRIES = Counter(
    "terminus_job_retries", "Attempts that failed with a transient error and were retried.", ["type"], registry=None
)
FAILURES = Counter(
    "terminus_job_failures",
    "Jobs that failed for good while running (retries exhausted, non-retryable error, time limit).",
    ["type", "error_type"],
    registry=None,
)
_started: dict[str, float] = {}


@task_prerun.connect
def _attempt_started(task_id: str | None = None, **_: Any) -> None:
    _started[str(task_id)] = time.monotonic()


@task_postrun.connect
def _attempt_finished(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(str(task_id), None)
    if started is not None and task is not None:
        outcome = OUTCOMES.get(state or "", (state or "unknown").lower())
        ATTEMPT_DURATION.labels(task.name, outcome).observe(time.monotonic() - started)


@task_retry.connect
def _attempt_retried(sender: Any = None, **_: Any) -> None:
    RETRIES.labels(getattr(sender, "name", "?")).inc()


@task_failure.connect
def _job_failed(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    FAILURES.labels(getattr(sender, "name", "?"), type(exception).__name__ if exception else "?").inc()


# -- worker hooks: metrics directory, exporter ---------------------------------------------------


def _node_dir(base: str, node: str) -> Path:
    return Path(base) / re.sub(r"[^A-Za-z0-9_.@-]", "_", node)


def _process_slot() -> str:
    """Which file a process counts in: its pool slot, not its pid.

    Pool processes are recycled (CELERY_WORKER_MAX_TASKS_PER_CHILD), and prometheus_client keeps
    one file per pid forever: a busy worker would leave thousands, each read on every scrape. The
    replacement of a pool process takes over its slot (billiard reuses the index only once the old
    process has exited) and continues its counts, so a worker has at most pool size + 1 files.
    """
    index = getattr(current_process(), "index", None)
    return f"pool{index}" if index is not None else f"main{os.getpid()}"


@worker_init.connect
def _worker_metrics_dir(sender: Any = None, **_: Any) -> None:
    """Before the pool forks: this worker's processes write their counts to a directory of its own."""
    base = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or (
        str(Path(settings.VAR_DIR) / "metrics") if settings.TERMINUS_WORKER_METRICS_PORT else None
    )
    if not base:
        return
    node_dir = _node_dir(base, getattr(sender, "hostname", None) or f"worker-{os.getpid()}")
    shutil.rmtree(node_dir, ignore_errors=True)  # a restarted worker's counters start again
    node_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(node_dir)
    # Before any value exists in this process (metrics are labelled: values appear on first use).
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_slot)


@worker_ready.connect
def _start_exporter(sender: Any = None, **_: Any) -> None:
    """Serve this worker's event metrics (all its processes) on TERMINUS_WORKER_METRICS_PORT."""
    port = settings.TERMINUS_WORKER_METRICS_PORT
    if not port:
        return
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    start_http_server(port, addr=settings.TERMINUS_WORKER_METRICS_ADDR, registry=registry)
    logger.info("worker metrics on %s:%s/metrics", settings.TERMINUS_WORKER_METRICS_ADDR, port)
