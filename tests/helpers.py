"""Helpers every test module may import: waiting for a state, the test database's URL, real worker processes.

Fixtures live in the conftest files; what a test calls directly lives here (tests import helpers
from a module, never from a conftest).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from django.conf import settings
from django.db import connection

from project.celery import app
from results.models import TERMINAL_STATUSES, DeadLetter, Job
from tests.alert_sink import AlertSink

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def broker_kind() -> str:
    return settings.CELERY_BROKER_URL.split(":", 1)[0]


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


#: Redis hands a dead worker's unacked messages back within seconds, not the hour: a visibility timeout of
#: 6 s, above the longest time limit (4 s) plus the longest wait in the broker (1 s) these workers run
#: with (settings refuse less), and a restore sweep every second.
FAST_REDELIVERY = {
    "CELERY_VISIBILITY_TIMEOUT": "6",
    "TERMINUS_MAX_TIME_LIMIT": "4",
    "TERMINUS_BROKER_DELAY_MAX": "1",
    "CELERY_UNACKED_RESTORE_INTERVAL": "1",
    "CELERY_UNACKED_RESTORE_THROTTLE": "1",
}

#: What recovery depends on, at its production default (the Makefile's TEST_ENV shortens some of it):
#: workers started with these prove recovery as users get it.
PRODUCTION_RECOVERY = {
    "TERMINUS_MAX_TIME_LIMIT": "3600",  # diagnostics.sleep's hard time limit
    "TERMINUS_DIAGNOSTICS_TIME_LIMIT": "60",
    "TERMINUS_REAPER_GRACE": "120",
    "TERMINUS_DB_RETRY_SECONDS": "60",
    "TERMINUS_WORKER_HEARTBEAT": "10",
    "TERMINUS_WORKER_DEAD_AFTER": "30",
    "TERMINUS_REPAIR_INTERVAL": "15",
}


def wait_terminal(job_id: Any, *, timeout: float = 60) -> Job:
    """The job once it is terminal (fails the test if it is not within ``timeout``)."""

    def fetch() -> Job | None:
        job = Job.objects.get(pk=job_id)
        return job if job.status in TERMINAL_STATUSES else None

    return wait_for(fetch, timeout=timeout, what=f"job {job_id} to become terminal")


def wait_status(job_id: Any, status: str, *, timeout: float = 30) -> Job:
    return wait_for(
        lambda: Job.objects.filter(pk=job_id, status=status).first(), timeout=timeout, what=f"job {job_id} {status}"
    )


def test_database_url() -> str:
    """The URL of the database this test session uses (the test database, not the dev one)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


test_database_url.__test__ = False  # type: ignore[attr-defined]


class WorkerProcess:
    """A real ``celery -A project worker`` process (prefork unless told otherwise)."""

    def __init__(
        self,
        *,
        queues: str,
        log_path: Path,
        concurrency: int = 1,
        pool: str = "prefork",
        name: str | None = None,
        **env: str,
    ):
        self.name = name or f"test-{uuid.uuid4().hex[:8]}@localhost"  # name=: the same node started again
        self.queues = queues
        self.log_path = log_path
        self.env = {**os.environ, "DATABASE_URL": test_database_url(), **{k: str(v) for k, v in env.items()}}
        self.argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            queues,
            "-n",
            self.name,
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 60) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # earlier runs' lines
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        ready = f"{self.name} ready.".encode()
        try:
            wait_for(
                lambda: self.proc.poll() is not None or ready in self.log_bytes()[offset:],
                timeout=timeout,
                what=f"worker {self.name} to be ready",
            )
        except BaseException:
            self.stop(timeout=10)  # a worker that never got ready must not linger and consume
            raise
        assert self.proc.poll() is None, f"worker exited at start:\n{self.log()}"
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    def log_bytes(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), like a vanished host."""
        os.killpg(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def restart_after_failure(self) -> None:
        """Replace a worker a failed test may have left wedged: first its main process logs every
        thread's stack (Celery's SIGUSR1 handler), so its log shows where it was stuck."""
        if self.alive():
            os.kill(self.pid, signal.SIGUSR1)
            time.sleep(1)
            self.stop(timeout=10)
        with self.log_path.open("ab") as log:
            log.write(b"\n--- restarted by the test suite after a failed test ---\n")
        self.start()

    def stop(self, *, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL the group if it does not exit in time."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def terminate_group(proc: subprocess.Popen[bytes] | None, *, grace: float) -> None:
    """SIGTERM a server's process group (master and workers), SIGKILL it if it has not exited in ``grace`` s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def purge_broker() -> None:
    """Start the session with an empty broker so no message from an earlier run is executed."""
    kind = broker_kind()
    if kind in {"redis", "rediss"}:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    elif kind == "filesystem":
        options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        for key in ("data_folder_in", "processed_folder", "control_folder"):
            folder = Path(options[key])
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
    else:
        app.control.purge()


def alerting_env(sink: AlertSink, mail_dir: Path) -> dict[str, str]:
    """Worker settings that route every alert channel to places the tests can read."""
    return {
        "TERMINUS_ALERT_WEBHOOK_URL": f"{sink.url}/alerts",
        "SENTRY_DSN": sink.dsn,
        "TERMINUS_ALERT_MAIL": "true",
        "ADMINS": "Ops <ops@example.com>",
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(mail_dir),
    }


def quiesce(timeout: float = 30) -> None:
    """Let the shared worker finish this test's jobs and dead letters before the tables are flushed
    (a flush racing a worker's write fails the next test's setup, and an alert window recorded
    after the flush throttles the next test's first alert). 30 s: the embedded broker under a full
    run's load can take more than 15."""

    def idle() -> bool:
        if Job.objects.open().exists():
            return False
        pending = Job.objects.filter(dead_lettered_at__isnull=False).exclude(dead_letter__alerted_at__isnull=False)
        return not pending.exists() and not DeadLetter.objects.filter(alerted_at__isnull=True).exists()

    deadline = time.monotonic() + timeout
    while not idle() and time.monotonic() < deadline:
        time.sleep(0.1)
