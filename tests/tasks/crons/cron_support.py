"""Real beat (and cron worker, web, private Redis) processes for the cron tests.

A ``CronStack`` is what production runs for the crons: one or more ``celery beat`` processes and
a worker on the cron queue, all on the test database and (unless told otherwise) the session's
broker, with intervals of seconds. Each stack uses a cron queue of its own, so no message from
another test reaches it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.alert_sink import AlertSink
from tests.helpers import ARTIFACTS, ROOT, WorkerProcess, alerting_env, test_database_url, wait_for

#: Seconds-long schedules: every cron in the stack ticks this often unless a test overrides it.
FAST_CRONS = {
    "TERMINUS_REAPER_INTERVAL": "1",
    "TERMINUS_HEALTH_INTERVAL": "1",
    "TERMINUS_ALERT_FLUSH_INTERVAL": "2",
    # Rollup and cleanup are tested by calling them; in a stack they tick on their own slow slots.
    "TERMINUS_ROLLUP_INTERVAL": "3600",
    "TERMINUS_CLEANUP_INTERVAL": "86400",
}


class Process:
    """A subprocess in its own session, with its output in a log file under test-artifacts/."""

    def __init__(self, argv: list[str], *, log_name: str, env: dict[str, str]):
        self.argv = argv
        self.log_path = ARTIFACTS / log_name
        self.env = {**os.environ, "DATABASE_URL": test_database_url(), **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, ready: str | None = None, timeout: float = 60) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if ready:
            wait_for(
                lambda: self.proc.poll() is not None or ready in self.log(),
                timeout=timeout,
                what=f"{self.argv[3:5]} to log {ready!r}",
            )
            assert self.proc.poll() is None, f"{self.argv} exited at start:\n{self.log()[-5000:]}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, timeout: float = 20) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


BEAT_READY = "beat: Starting..."


def beat(name: str, *, env: dict[str, str], schedule_dir: Path, wait: bool = True) -> Process:
    """A real ``celery -A project beat`` with its own schedule file (as every deployment has)."""
    schedule_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "celery", "-A", "project", "beat",
        "--schedule", str(schedule_dir / f"{name}-schedule"), "--loglevel=INFO",
    ]  # fmt: skip
    return Process(argv, log_name=f"{name}.log", env=env).start(ready=BEAT_READY if wait else None)


@dataclass
class CronStack:
    """Beat process(es) plus a worker on the stack's own cron queue."""

    env: dict[str, str]
    beats: list[Process] = field(default_factory=list)
    worker: WorkerProcess | None = None

    @property
    def cron_queue(self) -> str:
        return self.env["TERMINUS_CRON_QUEUE"]

    def ensure_worker(self) -> None:
        """Start the cron worker again if something outside the test killed it (the machine is
        shared: a warning says so, with its exit status), so one stray kill fails one test, not a module."""
        worker = self.worker
        assert worker is not None and worker.proc is not None
        if worker.alive():
            return
        warnings.warn(
            f"the cron worker {worker.name} had exited ({worker.proc.returncode}); starting it again",
            stacklevel=2,
        )
        self.worker = WorkerProcess(
            queues=worker.queues, concurrency=int(worker.argv[worker.argv.index("-c") + 1]),
            log_path=worker.log_path, **self.env,
        ).start()  # fmt: skip

    def stop(self) -> None:
        """Beats first (nothing new is sent), then the worker, killed: crons are idempotent, and a
        warm shutdown would wait for the drill crons that outlive their interval."""
        for process in self.beats:
            process.stop()
        if self.worker is not None and self.worker.alive():
            self.worker.kill()


def start_cron_stack(
    name: str, *, sink: AlertSink, mail_dir: Path, beats: int = 1, concurrency: int = 2, **env: str
) -> CronStack:
    """Start ``beats`` beat processes and one cron worker; ``env`` overrides settings for all of them."""
    stack_env = {
        **FAST_CRONS,
        **alerting_env(sink, mail_dir),
        "TERMINUS_CRON_QUEUE": f"crons-{uuid.uuid4().hex[:8]}",
        **env,
    }
    stack = CronStack(env=stack_env)
    try:
        schedule_dir = ARTIFACTS / f"{name}-beat"
        shutil.rmtree(schedule_dir, ignore_errors=True)
        for number in range(beats):  # started while the worker starts; their sends wait in the queue
            stack.beats.append(beat(f"{name}-beat-{number}", env=stack_env, schedule_dir=schedule_dir, wait=False))
        stack.worker = WorkerProcess(
            queues=stack_env["TERMINUS_CRON_QUEUE"],
            concurrency=concurrency,
            log_path=ARTIFACTS / f"{name}-cron-worker.log",
            **stack_env,
        ).start()
        for process in stack.beats:
            wait_for(lambda p=process: BEAT_READY in p.log() or not p.alive(), timeout=60, what="beat to start")
            assert process.alive(), process.log()[-5000:]
    except BaseException:
        stack.stop()
        raise
    return stack


def webhooks_with_key(sink: AlertSink, key: str) -> list[dict[str, Any]]:
    """Operational alerts (cron failures, health flips) the sink received, by their alert key."""
    with sink.lock:
        return [hook for hook in sink.webhooks if (hook.get("terminus") or {}).get("key") == key]


# -- a Redis of the test's own, that it may stop and start ------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` on a port of its own (never the shared 6379), without persistence."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, timeout=20, what=f"redis-server on port {self.port}")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Gone, as after a crash: no save, its data lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        wait_for(lambda: not self.answers(), timeout=10, what="redis to stop answering")


def get_json(url: str, *, timeout: float = 30, token: str | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET, 4xx/5xx included; ``token`` is sent as a bearer token."""
    import json

    headers = {"Host": "localhost", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (a local test server)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def web(name: str, *, env: dict[str, str]) -> tuple[Process, str]:
    """A real web process (``manage.py runserver``, as make run starts it); returns it and its base URL."""
    port = free_port()
    argv = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    process = Process(argv, log_name=f"{name}-web.log", env=env).start()
    base = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        assert process.alive(), process.log()[-5000:]
        try:
            return get_json(f"{base}/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    wait_for(serving, timeout=60, interval=0.2, what="the web process to serve /healthz")
    return process, base
