"""HTTP request metrics: django-prometheus's middleware, counted so that ``/metrics`` adds up every web process.

django-prometheus measures each request (latency histogram by view and method, responses by
status, view and method, exceptions by type). Its metrics go to a registry of their own, not
prometheus_client's global one, so ``/metrics`` (results.ops.metrics) shows them and nothing else
a library may have registered there.

gunicorn runs several worker processes, and a scrape lands on one of them. When
``PROMETHEUS_MULTIPROC_DIR`` is set (``deploy/start-web.sh`` sets one by default), every web
process counts in files under it and ``/metrics`` adds up those files, as it does the Celery
workers'. Each web process takes a *slot* (``web0``, ``web1``, …: one file per slot, as the Celery
pool processes do in tasks.fleet.events), held with a lock for the process's lifetime: gunicorn
replaces a worker after ``--max-requests``, and files named by pid would pile up, each read on every
scrape. The replacement takes the free slot and continues its counts. Without the variable
(``runserver``, the test client: one process) the counts stay in this process's memory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Any

from django_prometheus.middleware import Metrics, PrometheusAfterMiddleware, PrometheusBeforeMiddleware
from prometheus_client import CollectorRegistry, values

#: The registry django-prometheus's metrics are created in (read by /metrics when they stay in memory).
REGISTRY = CollectorRegistry(auto_describe=True)
#: How many slots a host's web processes may take: far above any GUNICORN_WORKERS.
MAX_SLOTS = 256

_slot: tuple[int, str, IO[bytes]] | None = None  # (pid, slot name, the lock held while the process lives)
_in_files = False  # HttpMetrics chose the shared files in this process


def shared_directory() -> Path | None:
    """Where web processes count, if they share their counts through files (prometheus_client's own variable)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(directory) if directory else None


def web_slot() -> str:
    """This process's slot (``web<n>``): the lowest one no living process holds.

    prometheus_client calls it on every update to notice a fork, so it answers from a cache
    while the pid is the same; a forked child takes a slot of its own.
    """
    global _slot
    pid = os.getpid()
    if _slot is not None and _slot[0] == pid:
        return _slot[1]
    directory = shared_directory()
    assert directory is not None, "web_slot is used only when PROMETHEUS_MULTIPROC_DIR is set"
    for index in range(MAX_SLOTS):
        lock = (directory / f"web{index}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _slot = (pid, f"web{index}", lock)  # the lock is released when this process exits
        return _slot[1]
    raise RuntimeError(f"all {MAX_SLOTS} web metric slots under {directory} are taken")


class HttpMetrics(Metrics):
    """django-prometheus's metrics, in REGISTRY; shared through files when the web runs several processes."""

    _instance = None

    def __init__(self, *args: Any, **kwargs: Any):
        global _in_files
        directory = shared_directory()
        if directory is not None:
            # Before the first value exists: this process's values go to its slot's files.
            directory.mkdir(parents=True, exist_ok=True)
            values.ValueClass = values.MultiProcessValue(process_identifier=web_slot)
            _in_files = True
        super().__init__(*args, **kwargs)

    def register_metric(
        self, metric_cls: Any, name: str, documentation: str, labelnames: Any = (), **kwargs: Any
    ) -> Any:
        return metric_cls(name, documentation, labelnames=labelnames, registry=REGISTRY, **kwargs)


def counted_in_files() -> bool:
    """True when this process's HTTP counts are in the shared files (read there, not from REGISTRY)."""
    return _in_files


class BeforeMiddleware(PrometheusBeforeMiddleware):
    """First in MIDDLEWARE: the latency including every middleware."""

    metrics_cls = HttpMetrics


class AfterMiddleware(PrometheusAfterMiddleware):
    """Last in MIDDLEWARE: latency by view and method, responses by status, view and method."""

    metrics_cls = HttpMetrics
