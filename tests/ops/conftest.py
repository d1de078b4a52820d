"""Fixtures for the ops tests: a Sentry endpoint that keeps every envelope item, an API client,
metric parsing and JSON log reading."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from tests.alert_sink import AlertSink
from tests.conftest import ARTIFACTS, WorkerProcess


class SentrySink(AlertSink):
    """A real local HTTP endpoint for sentry-sdk's transport: keeps every envelope, raw and parsed."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.raw: list[bytes] = []
        self.items_lock = threading.Lock()

    def _take_envelope(self, raw: bytes) -> None:
        super()._take_envelope(raw)
        lines = raw.split(b"\n")
        with self.items_lock:
            self.raw.append(raw)
            index = 1
            while index + 1 < len(lines):
                header = json.loads(lines[index] or b"{}")
                self.items.append((header, json.loads(lines[index + 1] or b"{}")))
                index += 2

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self.items_lock:
            return [payload for header, payload in self.items if header.get("type") == kind]

    def raw_text(self) -> str:
        with self.items_lock:
            return b"\n".join(self.raw).decode(errors="replace")


@pytest.fixture
def ops_worker(transactional_db: None, request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory for dedicated worker processes, each with a log file of its own (never the shared
    session worker's), killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(queues: str, **kwargs: Any) -> WorkerProcess:
        log = ARTIFACTS / f"ops-{request.node.name}-{len(started)}.log"
        log.unlink(missing_ok=True)
        worker = WorkerProcess(queues=queues, log_path=log, **kwargs)
        started.append(worker)
        return worker.start()

    yield start
    # Every test has waited for its own jobs by now, and the warm shutdown is proven by
    # test_graceful_shutdown: stop the rest at once (a warm shutdown costs 3-6 s per worker).
    for worker in started:
        if worker.alive():
            worker.kill()


@pytest.fixture
def sentry_sink() -> Iterator[SentrySink]:
    sink = SentrySink().start()
    yield sink
    sink.stop()


@pytest.fixture
def staff_api(transactional_db: None) -> APIClient:
    user = User.objects.create_user("ops-staff", is_staff=True)
    client = APIClient()
    client.force_authenticate(user)
    return client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def sample(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output (Celery's banner and shutdown notice are plain text)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        start = line.find('{"timestamp"')
        if start >= 0:
            lines.append(json.loads(line[start:]))
    return lines
