"""Fixtures that start real Celery worker processes against the configured broker and database.

The suite runs twice (see the Makefile): on Redis + PostgreSQL, and on the embedded default
(SQLite + kombu's filesystem broker). Worker processes open the *test* database: its URL is
built from the live test connection and handed to them in DATABASE_URL.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management.base import CommandError
from django.core.management.commands import flush

from tests import factories
from tests.alert_sink import AlertSink
from tests.helpers import ARTIFACTS, WorkerProcess, alerting_env, broker_kind, purge_broker, quiesce
from tests.receivers import Receiver, start_receiver


def _flush_retrying_deadlocks(handle: Callable[..., Any]) -> Callable[..., Any]:
    """Django's flush (the teardown of every transactional test) truncates every table in one
    statement; a worker process still writing a job and its attempt in one transaction can deadlock
    with it, and PostgreSQL may pick the TRUNCATE as the victim (seen once in CI). The worker's write
    retries by itself (tasks.runtime.durable); the flush is retried here the same way."""

    def flush(*args: Any, **options: Any) -> Any:
        for attempt in range(3):
            try:
                return handle(*args, **options)
            except CommandError as exc:
                if attempt == 2 or "deadlock detected" not in str(exc.__cause__ or ""):
                    raise
                time.sleep(0.5)
        return None

    return flush


flush.Command.handle = _flush_retrying_deadlocks(flush.Command.handle)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def alert_sink() -> Iterator[AlertSink]:
    """Where the workers' alert webhooks and Sentry envelopes go during the tests."""
    sink = AlertSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def mail_dir(artifacts_dir: Path) -> Path:
    path = artifacts_dir / f"mail-{broker_kind()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def session_worker(
    django_db_setup: None, django_db_blocker: Any, artifacts_dir: Path, alert_sink: AlertSink, mail_dir: Path
) -> Iterator[WorkerProcess]:
    """One prefork worker (2 children) on the default, slow and dead_letter queues, for the session."""
    with django_db_blocker.unblock():
        purge_broker()
        worker = WorkerProcess(
            queues="default,slow,dead_letter",
            concurrency=2,
            log_path=artifacts_dir / f"worker-{broker_kind()}.log",
            **alerting_env(alert_sink, mail_dir),
        ).start()
    _shared.append(worker)
    yield worker
    worker.stop()


#: The shared worker once a test has started it (the ``alone`` fixture must not start it).
_shared: list[WorkerProcess] = []


@pytest.fixture
def alone() -> Iterator[None]:
    """The test's own workers are the only ones: the shared worker, if a test started it, is stopped
    for the test (it consumes default, slow and dead_letter, and answers every broadcast), then
    started again."""
    running = [worker for worker in _shared if worker.alive()]
    for worker in running:
        worker.stop()
    yield
    for worker in running:
        worker.start()


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember a failed test body, so the shared worker it used is replaced (see ``worker``)."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_CALL_FAILED] = True
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the shared worker runs once more if it fails: the worker is replaced in between.

    Celery's prefork pool can wedge after a hard time limit kills a child (celery/celery#4789; seen
    once in CI on the embedded broker, then every later test on that worker timed out). The wedged
    worker's stacks are in its log (restart_after_failure) and the rerun shows in the summary
    ("rerun"); a test that fails twice fails.
    """
    for item in items:
        if "worker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flaky(reruns=1))


@pytest.fixture
def worker(
    session_worker: WorkerProcess, transactional_db: None, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    """The shared worker; tests using it see committed rows (transactional_db)."""
    request.node.stash[_CALL_FAILED] = False  # a rerun starts clean
    if not session_worker.alive():
        log = session_worker.log()[-5000:]
        session_worker.restart_after_failure()
        pytest.fail(f"the shared worker had died (restarted for the next tests):\n{log}")
    yield session_worker
    if request.node.stash.get(_CALL_FAILED, False):
        session_worker.restart_after_failure()
    quiesce()


@pytest.fixture
def drill_queue(settings: Any) -> str:
    """A queue of this test's own, so only the test's dedicated workers consume its jobs."""
    name = f"drill-{uuid.uuid4().hex[:8]}"
    settings.TERMINUS_QUEUES = [*settings.TERMINUS_QUEUES, name]
    return name


@pytest.fixture
def start_worker(
    transactional_db: None, session_worker: WorkerProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory for dedicated worker processes (killed, starved or reconfigured by the test)."""
    started: list[WorkerProcess] = []

    def start(queues: str, **kwargs: Any) -> WorkerProcess:
        log = ARTIFACTS / f"{request.node.name}-{len(started)}.log"
        log.unlink(missing_ok=True)
        worker = WorkerProcess(queues=queues, log_path=log, **kwargs)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop(timeout=15)


# -- users and tenants (tests/factories.py builds them) -------------------------------------------
@pytest.fixture(autouse=True)
def _empty_cache(request: pytest.FixtureRequest) -> None:
    """Every test that uses the database starts with an empty cache: throttle history and long-poll
    slots are keyed by user id, ids are reused between tests, and the cache table is not flushed
    with the models' tables."""
    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    if marker is None and not names & {"db", "transactional_db"}:
        return
    transactional = "transactional_db" in names or (marker is not None and marker.kwargs.get("transaction"))
    request.getfixturevalue("transactional_db" if transactional else "db")
    cache.clear()


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    """``factories.make_user`` for tests that need the database set up first."""
    return factories.make_user


@pytest.fixture
def alice(make_user: Callable[..., User]) -> User:
    """A plain user of tenant acme: the one acting in most tests."""
    return make_user("alice", tenant="acme")


@pytest.fixture
def carol(make_user: Callable[..., User]) -> User:
    """Alice's colleague: same tenant."""
    return make_user("carol", tenant="acme")


@pytest.fixture
def bob(make_user: Callable[..., User]) -> User:
    """A plain user of tenant globex: the owner of the jobs alice must never see."""
    return make_user("bob", tenant="globex")


@pytest.fixture
def staff(make_user: Callable[..., User]) -> User:
    """Staff acting for no tenant: sees every tenant."""
    return make_user("root", staff=True)


# -- HTTP receivers on loopback (tests/receivers.py) ----------------------------------------------
@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Factory: ``receiver(200)`` or ``receiver(500, 500, 200)`` starts one on an ephemeral port."""
    started: list[Receiver] = []

    def start(*script: Any) -> Receiver:
        started.append(start_receiver(*script))
        return started[-1]

    yield start
    for recv in started:
        recv.stop()
