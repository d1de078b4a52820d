"""Prometheus metrics (``GET /metrics``) and the fleet probes behind them and ``manage.py fleet``.

Each figure comes from the place that knows it for the whole fleet, however many workers and pool
processes run:

* **State, read at scrape time** from the database and the broker, which every process shares:
  jobs by type and status, open jobs past their deadline, jobs never published, the oldest queued
  job per queue, messages waiting per queue (job queues, dead_letter, crons), dead letters open
  and the oldest one's age, workers alive and consumers per queue (one broadcast to the workers).
  Nothing to lose on a restart, nothing to add up across processes.
* **Events, counted where they happen** (the pool child that runs an attempt; the worker's main
  process for a hard time limit) with prometheus_client's multiprocess mode: attempt duration
  histogram, retries, failures. Each worker writes them under ``PROMETHEUS_MULTIPROC_DIR/<node>/``
  (wiped when that worker starts; one file per pool slot, see ``_process_slot``) and serves the sum
  of its processes on
  ``TERMINUS_WORKER_METRICS_PORT``; ``/metrics`` adds up every worker directory it can see, so on
  one host (systemd, ``make run``) it shows them too. Counting these from JobAttempt rows at
  scrape time instead would mean scanning every attempt ever made on every scrape.
"""

from __future__ import annotations

import glob
import hmac
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
    worker_ready,
)
from celery.worker.control import control_command, inspect_command
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

#: Attempt durations, seconds: from sub-second webhooks to hour-long exports.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Celery task states as attempt outcomes.
OUTCOMES = {"SUCCESS": "succeeded", "RETRY": "retried", "FAILURE": "failed", "IGNORED": "ignored"}
DEAD_LETTER_QUEUE = "dead_letter"  # tasks/dead_letter.py: the queue final failures travel on

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


# -- worker hooks: metrics directory, exporter, the queues it was started with --------------------
_startup_queues: list[str] = []


def _node_dir(base: str, node: str) -> Path:
    return Path(base) / re.sub(r"[^A-Za-z0-9_.@-]", "_", node)


def _process_slot() -> str:
    """Which file a process counts in: its pool slot, not its pid.

    Pool processes are recycled (CELERY_WORKER_MAX_TASKS_PER_CHILD), and prometheus_client keeps
    one file per pid forever: a busy worker would leave thousands, each read on every scrape. The
    replacement of a pool process takes over its slot (billiard reuses the index only once the old
    process has exited) and continues its counts, so a worker has at most pool size + 1 files.
    """
    from billiard.process import current_process

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


@celeryd_after_setup.connect
def _remember_queues(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """The queues this worker was started with (-Q): ``fleet resume`` gives back only these."""
    queues = getattr(getattr(getattr(instance, "app", None), "amqp", None), "queues", None)
    if queues is not None:
        _startup_queues[:] = sorted(queues.consume_from or queues)


@worker_ready.connect
def _start_exporter(sender: Any = None, **_: Any) -> None:
    """Serve this worker's event metrics (all its processes) on TERMINUS_WORKER_METRICS_PORT."""
    port = settings.TERMINUS_WORKER_METRICS_PORT
    if not port:
        return
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    start_http_server(port, addr=settings.TERMINUS_WORKER_METRICS_ADDR, registry=registry)
    logger.info("worker metrics on %s:%s/metrics", settings.TERMINUS_WORKER_METRICS_ADDR, port)


@inspect_command()
def terminus_fleet(state: Any, **_: Any) -> dict[str, Any]:
    """One reply with what ``fleet`` and /metrics need: queues, running and held jobs, pool size."""
    from celery.worker import state as worker_state

    consumer = state.consumer
    task_consumer = getattr(consumer, "task_consumer", None)
    consuming = sorted(queue.name for queue in task_consumer.queues) if task_consumer else []

    def describe(request: Any) -> dict[str, Any]:
        return {
            "id": request.id,
            "type": request.name,
            "queue": (request.delivery_info or {}).get("routing_key") or "",
            "started": request.time_start,
            "eta": request.eta.isoformat() if getattr(request, "eta", None) else None,
        }

    active = list(worker_state.active_requests)
    active_ids = {request.id for request in active}
    reserved = [request for request in worker_state.reserved_requests if request.id not in active_ids]
    scheduled = []
    for waiting in consumer.timer.schedule.queue:
        args = getattr(waiting.entry, "args", None) or ()
        if args and hasattr(args[0], "delivery_info"):
            scheduled.append(args[0])
    pool = getattr(consumer, "pool", None)
    return {
        "configured": list(_startup_queues),
        "consuming": consuming,
        "concurrency": getattr(pool, "num_processes", None) or getattr(pool, "limit", None),
        "pid": os.getpid(),
        "active": [describe(request) for request in active],
        "reserved": [describe(request) for request in reserved],
        "scheduled": [describe(request) for request in scheduled],
    }


@control_command(args=[("queue", str)], signature="<queue>")
def terminus_resume_queue(state: Any, queue: str, **_: Any) -> dict[str, str]:
    """Consume ``queue`` again, but only on a worker started with it (never widen a worker's queues)."""
    if queue not in _startup_queues:
        return {"skipped": f"{queue} is not one of this worker's queues ({', '.join(_startup_queues)})"}
    state.consumer.call_soon(state.consumer.add_task_queue, queue)
    return {"ok": f"consuming from {queue}"}


# -- fleet probes (broker, workers) --------------------------------------------------------------
def known_queues() -> list[str]:
    """Every queue Terminus routes to: TERMINUS_QUEUES, the dead-letter queue and the crons' queue."""
    return list(dict.fromkeys([*settings.TERMINUS_QUEUES, DEAD_LETTER_QUEUE, settings.TERMINUS_CRON_QUEUE]))


def broker_queue_depths(queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue, asked of the broker (a passive declare: creates nothing).

    Redis counts every priority list of the queue; a queue the broker does not know holds 0.
    Messages a worker already holds (prefetched, or waiting for their countdown) are not counted.
    """
    from project.celery import app

    depths: dict[str, int] = {}
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT)
        for name in queues:
            channel = connection.channel()
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True)[1])
            except connection.channel_errors:
                depths[name] = 0  # never declared: nothing was ever sent to it
            finally:
                try:
                    channel.close()
                except (*connection.connection_errors, *connection.channel_errors):
                    logger.debug("closing the probe channel of %s failed", name, exc_info=True)
    return depths


def fleet_snapshot(*, timeout: float, destination: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every worker that answers within ``timeout``: node name -> its ``terminus_fleet`` reply."""
    from project.celery import app

    # Named workers: stop waiting as soon as each has answered; otherwise wait the whole timeout.
    replies = app.control.broadcast(
        "terminus_fleet",
        reply=True,
        timeout=timeout,
        destination=destination or None,
        limit=len(destination) if destination else None,
    )
    workers: dict[str, dict[str, Any]] = {}
    for reply in replies or []:
        for node, answer in reply.items():
            if isinstance(answer, dict) and "consuming" in answer:  # beat answers broadcasts too
                workers[node] = answer
    return dict(sorted(workers.items()))


# -- state (scrape time) ----------------------------------------------------------------------------
TERMINAL_COUNTS_KEY = "terminus:metrics:terminal-job-counts"


def terminal_job_counts() -> list[tuple[str, str, int]]:
    """(type, status, count) of terminal jobs: a scan of the whole table (about 0.2 s per million
    rows on PostgreSQL), so it is shared through the cache for TERMINUS_METRICS_CACHE_SECONDS.
    Open jobs are few and counted on every scrape through the partial open-jobs index."""
    from django.core.cache import cache
    from django.db.models import Count

    from results.models import TERMINAL_STATUSES, Job

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
        from django.db.models import Count, Min
        from django.utils import timezone

        from results.models import Job, Status
        from tasks.dead_letter import queue_stats

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
        registry.register(WorkerEventsCollector(settings.PROMETHEUS_MULTIPROC_DIR))
    return registry


def authorized(request: HttpRequest) -> bool:
    token = settings.TERMINUS_METRICS_TOKEN
    if not token:
        return True
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())


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
