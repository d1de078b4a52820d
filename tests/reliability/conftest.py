"""Fault-injection fixtures: a private Redis that can be restarted, a PostgreSQL link that can be cut.

These scenarios need the real services: they run on Redis (or RabbitMQ) + PostgreSQL and are
skipped on the embedded default. Batch sizes come from CHAOS_JOBS (CI: the default; `make chaos`
raises it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from tests.helpers import ARTIFACTS
from tests.reliability.helpers import (
    RABBITMQ,
    Broker,
    PrivateRedis,
    TcpProxy,
    broker_family,
    chaos_env,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    embedded = settings.CELERY_BROKER_URL.startswith("filesystem") or connection.vendor != "postgresql"
    family = broker_family()
    for item in items:
        if "tests/reliability/" not in str(item.fspath):
            continue
        if embedded:
            item.add_marker(pytest.mark.skip(reason="fault injection needs Redis/RabbitMQ + PostgreSQL"))
            continue
        callspec = getattr(item, "callspec", None)
        variant = callspec.params.get("broker") if callspec is not None else None
        if variant is not None and variant != family:  # skipped here, before any fixture starts a worker
            item.add_marker(pytest.mark.skip(reason=f"the {variant} variant; this run's broker is {family}"))


@pytest.fixture
def broker(request: pytest.FixtureRequest, drill_queue: str) -> Iterator[Broker]:
    """The variant of an ``on_each_broker`` scenario. On RabbitMQ the drill queue is declared as Terminus
    declares its work queues (with the dead-letter exchange; see CELERY_TASK_QUEUES), by this process
    and by the workers (TERMINUS_QUEUES), and deleted at the end.

    List it before ``start_worker``: it is then torn down after the workers are stopped."""
    if request.param != RABBITMQ:
        yield Broker(request.param)
        return
    from kombu import Connection, Exchange, Queue

    from project.celery import app

    arguments = dict(app.amqp.queues["default"].queue_arguments or {})
    queue = Queue(drill_queue, Exchange(drill_queue, type="direct"), routing_key=drill_queue, queue_arguments=arguments)
    app.amqp.queues.add(queue)
    try:
        yield Broker(RABBITMQ, {"TERMINUS_QUEUES": ",".join(settings.TERMINUS_QUEUES)})
    finally:
        app.amqp.queues.pop(drill_queue, None)
        with contextlib.suppress(Exception), Connection(app.conf.broker_url) as conn:
            channel = conn.channel()
            queue(channel).delete()
            queue.exchange(channel).delete()


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


@pytest.fixture
def start_stack(
    transactional_db: None, session_worker: Any, alert_sink: Any, mail_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Any]]:
    """Factory for cron stacks (``celery beat`` with tasks.crons.beat:Scheduler + a cron worker) that
    tick every second, as production runs the reaper, health checks and alerts; stopped at teardown."""
    from tests.tasks.crons.cron_support import start_cron_stack

    stacks: list[Any] = []

    def start(*, beats: int = 1, **env: str) -> Any:
        name = f"{request.node.name[:40]}-{len(stacks)}"
        (ARTIFACTS / f"{name}-cron-worker.log").unlink(missing_ok=True)  # this run's lines only
        stack = start_cron_stack(name, sink=alert_sink, mail_dir=mail_dir, beats=beats, **chaos_env(**env))
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="module")
def chaos_job_type() -> Iterator[str]:
    """chaos.effect, known to this process for the module's tests only (other tests' catalogues of
    job types stay as the product ships them)."""
    from tasks.runtime.types import _REGISTRY
    from tests.reliability import chaos_jobs

    _REGISTRY[chaos_jobs.NAME] = chaos_jobs.JOB_TYPE
    yield chaos_jobs.NAME
    _REGISTRY.pop(chaos_jobs.NAME, None)
