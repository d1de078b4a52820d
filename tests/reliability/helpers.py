"""Helpers for the reliability tests: broker families, proxies, private Redis, figure lines."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import Sum

from results.models import TERMINAL_STATUSES, AttemptOutcome, Job, JobAttempt
from tests.helpers import ARTIFACTS, broker_kind, wait_for

CHAOS_JOBS = int(os.environ.get("CHAOS_JOBS", "120"))


REDIS, RABBITMQ = "redis", "rabbitmq"


def broker_family() -> str:
    """``redis`` or ``rabbitmq``: the broker of this run (the embedded filesystem broker is skipped)."""
    kind = broker_kind()
    if kind.startswith(("amqp", "pyamqp")):
        return RABBITMQ
    return REDIS if kind.startswith("redis") else kind


#: Run a scenario once per broker: each variant runs in the pass on its broker and is skipped in the
#: others; the RabbitMQ one is marked for the RabbitMQ pass (`pytest -m rabbitmq`).
on_each_broker = pytest.mark.parametrize(
    "broker",
    [pytest.param(REDIS, id=REDIS), pytest.param(RABBITMQ, id=RABBITMQ, marks=pytest.mark.rabbitmq)],
    indirect=True,
)


@dataclass
class Broker:
    """The broker a scenario runs on, and the environment its workers need for the drill queue."""

    name: str
    worker_env: dict[str, str] = field(default_factory=dict)

    def label(self, scenario: str) -> str:
        """The figure line's name: ``kill9-worker`` on Redis, ``kill9-worker[rabbitmq]`` on RabbitMQ."""
        return scenario if self.name == REDIS else f"{scenario}[{self.name}]"


@contextlib.contextmanager
def dlx_tap(queue: str) -> Iterator[Callable[[], int]]:
    """RabbitMQ: count what the broker dead-letters from ``queue``. A queue of the test's own is bound to
    the dead-letter exchange beside ``dead_letter.raw`` (a direct exchange gives each bound queue a copy);
    the callable drains it and returns how many copies so far came from ``queue`` (x-death)."""
    from kombu import Connection, Queue

    from project.celery import app

    raw = app.amqp.queues["dead_letter.raw"]
    tap = Queue(f"{queue}.dlx-tap", raw.exchange, routing_key=raw.routing_key)
    origins: list[str] = []
    with Connection(app.conf.broker_url) as conn:
        bound = tap(conn.channel())
        bound.declare()

        def count() -> int:
            while (message := bound.get(no_ack=True)) is not None:
                origins.append(str(((message.headers or {}).get("x-death") or [{}])[0].get("queue", "")))
            return origins.count(queue)

        try:
            yield count
        finally:
            with contextlib.suppress(Exception):
                bound.delete()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TcpProxy:
    """A TCP forwarder to a real server whose link can be cut (all connections dropped, new ones
    refused) and restored: a database that vanishes and comes back, for the processes behind it."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> TcpProxy:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._stop.clear()
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in selector.select(timeout=1):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for a, b in self._pairs:
                for sock in (a, b):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                        sock.close()
                    except OSError:
                        pass
            self._pairs.clear()

    def restore(self) -> None:
        self.start()


class PrivateRedis:
    """A redis-server of the test's own (no persistence), so restarting it disturbs nobody else."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        wait_for(lambda: _pings(redis.Redis(port=self.port)), timeout=10, what="private redis to start")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # no SHUTDOWN SAVE: everything in it is lost, as in a crash
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def proxied_database_url(proxy: TcpProxy) -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}"


def report(
    name: str, job_ids: list[Any], *, timeout: float = 180, extra: Callable[[], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Wait for the batch, then print and return its figures: every job terminal, none lost,
    no job completed twice, none past its deadline; ``extra()`` adds the scenario's own figures
    (read once the batch is terminal) to the same line."""
    wait_for(
        lambda: Job.objects.filter(pk__in=job_ids, status__in=TERMINAL_STATUSES).count() == len(job_ids),
        timeout=timeout,
        interval=0.5,
        what=f"{name}: every job terminal",
    )
    jobs = Job.objects.filter(pk__in=job_ids)
    ran_again = late_finishes(job_ids)
    figures = {
        "jobs": len(job_ids),
        "terminal": jobs.filter(status__in=TERMINAL_STATUSES).count(),
        "succeeded": jobs.filter(status="succeeded").count(),
        "failed": jobs.filter(status="failed").count(),
        "lost": len(job_ids) - jobs.count(),
        "duplicates": len(ran_again),
        "redelivered": JobAttempt.objects.filter(job_id__in=job_ids, outcome=AttemptOutcome.LOST).count(),
        "past_deadline": jobs.past_deadline().count(),
    }
    if extra is not None:
        figures.update(extra())
    if ran_again:
        _print_histories(sorted(ran_again))
    print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in figures.items()))
    return figures


#: A run that reached its end too late: after the job ended, or after a later attempt took it over
#: (its success write refused as stale: tasks.runtime.stale).
LATE_FINISH = re.compile(
    rb"job ([0-9a-f-]{36})(?: finished but was no longer running|: success from attempt \d+ refused)"
)


def late_finishes(job_ids: list[Any]) -> set[str]:
    """Jobs whose body ran to its end in an attempt after the job had ended (or been taken over by
    another attempt): a second run. The records cannot show it, since that attempt's success write
    is refused; the worker says so in its log (tasks.runtime.base.TrackedTask.on_success), and every worker
    a test starts logs under ARTIFACTS."""
    wanted = {str(job_id) for job_id in job_ids}
    found: set[str] = set()
    for log in ARTIFACTS.glob("*.log"):
        found.update(match.decode() for match in LATE_FINISH.findall(log.read_bytes()))
    return found & wanted


def _print_histories(job_ids: list[Any]) -> None:
    """For a failing figure: the attempt history of each job that ran twice."""
    for job in Job.objects.filter(pk__in=job_ids[:10]):
        print(f"  job {job.pk}: attempts {job.attempts}, lost_deliveries {job.lost_deliveries}")
        for attempt in job.attempt_history():
            print(
                f"    #{attempt.number} {attempt.outcome} {attempt.error_type} on {attempt.worker} "
                f"{attempt.started_at:%H:%M:%S.%f}-{attempt.finished_at and f'{attempt.finished_at:%H:%M:%S.%f}'}"
            )


def claim_figures(job_ids: list[Any]) -> dict[str, int]:
    """How the claim accounted for redeliveries: a message that comes back while its job is still
    running (its worker died) adds one to the job's ``lost_deliveries`` and closes the dead attempt as
    lost (error_type worker_lost) in the same transaction (Job.mark_started)."""
    lost = JobAttempt.objects.filter(job_id__in=job_ids, outcome=AttemptOutcome.LOST)
    counted = Job.objects.filter(pk__in=job_ids).aggregate(n=Sum("lost_deliveries"))["n"] or 0
    return {
        "lost_deliveries": counted,
        "jobs_redelivered": lost.values("job_id").distinct().count(),
        "lost_not_by_claim": lost.exclude(error_type="worker_lost").count(),
    }


def settle(seconds: float) -> None:
    time.sleep(seconds)


# -- side effects, the broker the test publishes to, the reaper --------------------------------------
def effect_figures(job_ids: list[Any]) -> dict[str, int]:
    """How often each chaos.effect job's side effect landed: ``effects_twice`` jobs applied it more
    than once, ``effects_missing`` succeeded without it. The batch's effect files are removed."""
    from tests.reliability.chaos_jobs import effects_dir

    counts = {}
    for job_id in job_ids:
        path = effects_dir() / str(job_id)
        counts[str(job_id)] = len(path.read_bytes().splitlines()) if path.exists() else 0
    succeeded = {str(pk) for pk in Job.objects.filter(pk__in=job_ids, status="succeeded").values_list("pk", flat=True)}
    for job_id in job_ids:
        (effects_dir() / str(job_id)).unlink(missing_ok=True)
    return {
        "effects": sum(counts.values()),
        "effects_twice": sum(1 for n in counts.values() if n > 1),
        "effects_missing": sum(1 for job_id in succeeded if counts[job_id] == 0),
    }


@contextlib.contextmanager
def producing_to(url: str) -> Iterator[None]:
    """Publish from this (test) process to ``url``: the Celery app's pools are rebuilt to use it."""
    from project.celery import app

    saved = app._pool, app.amqp._producer_pool, app.conf.get("broker_write_url")
    app.conf.broker_write_url = url
    app._pool = app.amqp._producer_pool = None
    try:
        yield
    finally:
        pool = app._pool
        app.conf.broker_write_url = saved[2]
        app._pool, app.amqp._producer_pool = saved[0], saved[1]
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.force_close_all()


def reaper_did(since: Any, *what: str) -> int:
    """How many rows the reaper's recorded runs since ``since`` reported for the ``what`` counts."""
    from results.models import CronRun

    runs = CronRun.objects.filter(cron="reaper", started_at__gte=since, status="succeeded")
    return sum(int((run.result or {}).get(key, 0)) for run in runs for key in what)


#: A reaper that acts within seconds: lost workers after the hard limit + 1 s, lost queued
#: messages once the queue's canary (every 3 s at most) went past them, overdue retries after 2 s.
FAST_REAPER = {
    "TERMINUS_REAPER_GRACE": "1",
    "TERMINUS_REAPER_QUEUED_AFTER": "2",
    "TERMINUS_REAPER_RETRY_AFTER": "2",
    "TERMINUS_CANARY_TIMEOUT": "3",
}


def chaos_env(**env: str) -> dict[str, str]:
    """Settings for every process of a scenario: the chaos.effect job type is loaded."""
    from tests.reliability.chaos_jobs import MODULES

    return {"TERMINUS_JOB_MODULES": MODULES, **env}


@contextlib.contextmanager
def supervised(*workers: Any) -> Iterator[list[str]]:
    """Start a worker again when it exits, as deploy/systemd (Restart=on-failure) and Kubernetes do;
    yields the list of the restarts made, for the figure line (a crash is reported, not hidden)."""
    restarted: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            for worker in workers:
                if worker.alive():
                    continue
                restarted.append(f"{worker.name} exited {worker.proc.returncode}")
                with contextlib.suppress(BaseException):  # a failed start is retried on the next round
                    worker.start()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield restarted
    finally:
        stop.set()
        watcher.join(timeout=90)
