"""Helpers for the web tests (imported by its test modules and its conftest's fixtures)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests.helpers import ARTIFACTS, ROOT, broker_kind, terminate_group, test_database_url, wait_for

CHROMIUM = Path("/usr/bin/chromium")


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


PASSWORD = "correct horse battery staple"  # a test user's password


def chromium_executable() -> str | None:
    if CHROMIUM.exists():
        return str(CHROMIUM)
    return shutil.which("chromium")


def artifact(name: str) -> Path:
    """A path in test-artifacts/ named for this configuration (screenshots of both passes survive)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / f"web-{broker_kind()}-{name}"


class WebServer:
    """``gunicorn project.wsgi`` on 127.0.0.1 (a free port, or a given one to come back on)."""

    def __init__(self, *, log_path: Path, port: int = 0, workers: int = 1, max_requests: int = 0, **env: str):
        self.log_path = log_path
        self.port = port
        self.workers = workers
        self.max_requests = max_requests  # 0: never replace a worker (gunicorn's default)
        self.env = {
            **os.environ,
            "DATABASE_URL": test_database_url(),
            "DEBUG": "false",
            **{key: str(value) for key, value in env.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 60) -> WebServer:
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "project.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--max-requests",
            str(self.max_requests),
            "--threads",
            "8",  # each long poll holds a thread; the page also lists and submits meanwhile
            "--graceful-timeout",
            "2",
            "--no-control-socket",
            "--access-logfile",
            "-",
            "--error-logfile",
            "-",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for(
                lambda: not self.alive() or ("Listening at: http://" in self.log() and "Booting worker" in self.log()),
                timeout=timeout,
                what="gunicorn to listen",
            )
            assert self.alive(), f"gunicorn exited at start:\n{self.log()}"
            match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log())
            assert match, self.log()
        except BaseException:
            self.stop()
            raise
        self.port = int(match.group(1))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the master and its worker: connections drop, new ones are refused."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        terminate_group(self.proc, grace=10)


def _append(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")


class Traffic:
    """Every request the page makes, and which of them got an answer, failed, or are still open."""

    def __init__(self, page: Any):
        self.requests: list[Any] = []
        self.settled: set[int] = set()
        self.failed: list[Any] = []
        page.on("request", lambda request: self.requests.append(request))
        page.on("requestfinished", lambda request: self.settled.add(id(request)))
        page.on("requestfailed", self._failed)

    def _failed(self, request: Any) -> None:
        self.settled.add(id(request))
        self.failed.append(request)

    def api(self, start: int = 0) -> list[Any]:
        return [request for request in self.requests[start:] if urlparse(request.url).path.startswith("/api/")]

    def polls(self, job_id: str, start: int = 0) -> list[Any]:
        """GETs of the job's detail URL (short or long polls)."""
        return [request for request in self.requests[start:] if urlparse(request.url).path == f"/api/jobs/{job_id}/"]

    def open(self, requests: list[Any]) -> list[Any]:
        return [request for request in requests if id(request) not in self.settled]
