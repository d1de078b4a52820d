"""Prometheus metrics (``GET /metrics``): the fleet's state read at scrape time, plus the workers' events.

Each figure comes from the place that knows it for the whole fleet, however many workers and pool
processes run:

* **State, read at scrape time** from the database and the broker, which every process shares:
  jobs by type and status, open jobs past their deadline, jobs never published, the oldest queued
  job per queue, messages waiting per queue (job queues, dead_letter, crons), dead letters open
  and the oldest one's age, workers alive and consumers per queue (one broadcast to the workers,
  tasks.fleet.probes). Nothing to lose on a restart, nothing to add up across processes.
* **Events, counted where they happen** by the workers (tasks.fleet.events): attempt durations,
  retries, failures, in prometheus_client's multiprocess files; this view adds up every worker
  directory under ``PROMETHEUS_MULTIPROC_DIR`` that it can see.
* **HTTP requests, counted by the web processes** (results.ops.http_metrics, django-prometheus):
  latency by view and method, responses by status, view and method; in files under the same
  directory when the web runs several processes (gunicorn), else in this process's memory.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from results.models import REPAIR_PASS, TERMINAL_STATUSES, Job, RepairLease, Status
from results.ops import http_metrics
from results.ops.access import bearer_token_matches
from tasks.failure.dead_letters import queue_stats
from tasks.fleet.probes import broker_queue_depths, fleet_snapshot, known_queues

logger = logging.getLogger(__name__)


# -- state (scrape time) ----------------------------------------------------------------------------
TERMINAL_COUNTS_KEY = "terminus:metrics:terminal-job-counts"


def terminal_job_counts() -> list[tuple[str, str, int]]:
    """(type, status, count) of terminal jobs: a scan of the whole table (about 0.2 s per million
    rows on PostgreSQL), so it is shared through the cache for TERMINUS_METRICS_CACHE_SECONDS.
    Open jobs are few and counted on every scrape through the partial open-jobs index."""
    seconds = settings.TERMINUS_METRICS_CACHE_SECONDS
    rows = cache.get(TERMINAL_COUNTS_KEY) if seconds else None
    if rows is None:
        terminal = Job.objects.filter(status__in=sorted(TERMINAL_STATUSES)).order_by()
        rows = [tuple(row) for row in terminal.values_list("type", "status").annotate(n=Count("pk"))]
        if seconds:
            cache.set(TERMINAL_COUNTS_KEY, rows, seconds)
    return rows


class StateCollector:
    """The fleet's state, read from the database and the broker on every scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "terminus_metrics_source_up", "1 if this scrape could read the source.", labels=["source"]
        )
        took = GaugeMetricFamily(
            "terminus_metrics_source_duration_seconds", "Time this scrape spent reading the source.", labels=["source"]
        )
        for source, read in (("database", self._database), ("broker", self._broker), ("workers", self._workers)):
            started = time.monotonic()
            try:
                families = list(read())
            except Exception:  # a source down must not take the other figures with it
                logger.warning("metrics: cannot read the %s", source, exc_info=True)
                up.add_metric([source], 0)
            else:
                up.add_metric([source], 1)
                yield from families
            took.add_metric([source], time.monotonic() - started)
        yield up
        yield took

    def _database(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "terminus_jobs",
            "Job records by type and status (terminal statuses: at most TERMINUS_METRICS_CACHE_SECONDS old).",
            labels=["type", "status"],
        )
        open_jobs = Job.objects.open().order_by().values_list("type", "status").annotate(n=Count("pk"))
        for job_type, status, count in [*open_jobs, *terminal_job_counts()]:
            jobs.add_metric([job_type, status], count)
        yield jobs
        yield GaugeMetricFamily(
            "terminus_jobs_past_deadline",
            "Open jobs past their terminal_by deadline (must stay 0; the reaper fails them).",
            value=Job.objects.past_deadline().count(),
        )
        yield GaugeMetricFamily(
            "terminus_jobs_undispatched",
            "Queued jobs whose message never reached the broker (it was down at submit).",
            value=Job.objects.undispatched().count(),
        )
        oldest = GaugeMetricFamily(
            "terminus_queue_oldest_job_age_seconds", "Age of the oldest queued job, per queue.", labels=["queue"]
        )
        now = timezone.now()
        queued = Job.objects.filter(status=Status.QUEUED).order_by().values("queue").annotate(first=Min("created_at"))
        for row in queued:
            oldest.add_metric([row["queue"]], max(0.0, (now - row["first"]).total_seconds()))
        yield oldest
        stats = queue_stats()
        yield GaugeMetricFamily("terminus_dead_letters_open", "Dead letters waiting for a human.", value=stats["open"])
        yield GaugeMetricFamily(
            "terminus_dead_letter_oldest_age_seconds",
            "Age of the oldest open dead letter (0 when none is open).",
            value=stats["oldest_age_seconds"],
        )
        age = RepairLease.seconds_since_completed(REPAIR_PASS)
        yield GaugeMetricFamily(
            "terminus_repair_pass_age_seconds",
            "Seconds since the workers last completed a repair pass (+Inf: none ever did; see the next metric).",
            value=float("inf") if age is None else max(0.0, age),
        )
        yield GaugeMetricFamily(
            "terminus_repair_interval_seconds",
            "TERMINUS_REPAIR_INTERVAL: how often the workers run the repair pass (0: beat's reaper cron runs it).",
            value=settings.TERMINUS_REPAIR_INTERVAL,
        )

    def _broker(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "terminus_queue_depth", "Messages waiting in the broker, per queue.", labels=["queue"]
        )
        for queue, count in broker_queue_depths(known_queues()).items():
            depth.add_metric([queue], count)
        yield depth

    def _workers(self) -> Iterator[GaugeMetricFamily]:
        workers = fleet_snapshot(timeout=settings.TERMINUS_METRICS_INSPECT_TIMEOUT)
        yield GaugeMetricFamily(
            "terminus_workers_alive", "Workers that answered this scrape's broadcast.", value=len(workers)
        )
        consumers = GaugeMetricFamily(
            "terminus_queue_consumers", "Workers consuming each queue (0: paused or no worker).", labels=["queue"]
        )
        running = GaugeMetricFamily(
            "terminus_jobs_running_on_workers", "Jobs the answering workers are running, per queue.", labels=["queue"]
        )
        for queue in known_queues():
            consumers.add_metric([queue], sum(queue in w["consuming"] for w in workers.values()))
            running.add_metric([queue], sum(t["queue"] == queue for w in workers.values() for t in w["active"]))
        yield consumers
        yield running


class WorkerEventsCollector:
    """The event metrics every worker on this host wrote under PROMETHEUS_MULTIPROC_DIR, summed."""

    def __init__(self, base: str):
        self.base = base

    def collect(self) -> Iterator[Any]:
        files = glob.glob(os.path.join(self.base, "*.db")) + glob.glob(os.path.join(self.base, "*", "*.db"))
        yield from MultiProcessCollector.merge(files, accumulate=True)


def registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector())
    if settings.PROMETHEUS_MULTIPROC_DIR and Path(settings.PROMETHEUS_MULTIPROC_DIR).is_dir():
        # The workers' directories, and the web processes' slot files when they count in files.
        registry.register(WorkerEventsCollector(settings.PROMETHEUS_MULTIPROC_DIR))
    if not http_metrics.counted_in_files():
        registry.register(http_metrics.REGISTRY)  # one web process: its own counts
    return registry


def authorized(request: HttpRequest) -> bool:
    """Open when no token is set (production refuses to start so unless TERMINUS_METRICS_PUBLIC)."""
    return not settings.TERMINUS_METRICS_TOKEN or bearer_token_matches(request)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition; a bearer token is required only when TERMINUS_METRICS_TOKEN is set."""
    if not authorized(request):
        response = HttpResponse("a bearer token is required (TERMINUS_METRICS_TOKEN)\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))  # text 0.0.4 unless asked
    return HttpResponse(encode(registry()), content_type=content_type)
