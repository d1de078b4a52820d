"""Fixtures for the ops tests: a Sentry endpoint that keeps every envelope item, an API client,
metric parsing and JSON log reading."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.helpers import ARTIFACTS, WorkerProcess
from tests.ops.helpers import SentrySink


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
