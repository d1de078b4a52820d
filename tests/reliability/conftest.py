"""Fault-injection fixtures: a private Redis that can be restarted, a PostgreSQL link that can be cut.

These scenarios need the real services: they run on Redis (or RabbitMQ) + PostgreSQL and are
skipped on the embedded default. Batch sizes come from CHAOS_JOBS (CI: the default; `make chaos`
raises it).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from results.models import TERMINAL_STATUSES, AttemptOutcome, Job, JobAttempt
from tests.conftest import wait_for

CHAOS_JOBS = int(os.environ.get("CHAOS_JOBS", "120"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    embedded = settings.CELERY_BROKER_URL.startswith("filesystem") or connection.vendor != "postgresql"
    for item in items:
        if embedded and "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason="fault injection needs Redis/RabbitMQ + PostgreSQL"))


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


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    port = int(connection.settings_dict.get("PORT") or 5432)
    proxy = TcpProxy(port).start()
    yield proxy
    proxy.cut()


def proxied_database_url(proxy: TcpProxy) -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}"


def report(name: str, job_ids: list[Any], *, timeout: float = 180) -> dict[str, int]:
    """Wait for the batch, then print and return its figures: every job terminal, none lost,
    no job completed twice, none past its deadline."""
    wait_for(
        lambda: Job.objects.filter(pk__in=job_ids, status__in=TERMINAL_STATUSES).count() == len(job_ids),
        timeout=timeout,
        interval=0.5,
        what=f"{name}: every job terminal",
    )
    jobs = Job.objects.filter(pk__in=job_ids)
    succeeded_attempts = JobAttempt.objects.filter(job_id__in=job_ids, outcome=AttemptOutcome.SUCCEEDED).count()
    figures = {
        "jobs": len(job_ids),
        "terminal": jobs.filter(status__in=TERMINAL_STATUSES).count(),
        "succeeded": jobs.filter(status="succeeded").count(),
        "failed": jobs.filter(status="failed").count(),
        "lost": len(job_ids) - jobs.count(),
        "duplicates": succeeded_attempts - jobs.filter(status="succeeded").count(),
        "redelivered": JobAttempt.objects.filter(job_id__in=job_ids, outcome=AttemptOutcome.LOST).count(),
        "past_deadline": jobs.past_deadline().count(),
    }
    print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in figures.items()))
    return figures


def settle(seconds: float) -> None:
    time.sleep(seconds)
