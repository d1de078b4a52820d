"""``manage.py bootstrap_dev`` and the ``make run`` stack: the banner, printed again once web and a
worker are up, and Ctrl-C that lets a running job finish (project/devrun.py, the Procfile)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from results.models import Job
from tests.helpers import ROOT, test_database_url, wait_for
from tests.ops.helpers import free_port

READY_BANNER = re.compile(r"up: web and worker answer.*?Token:\s+(\w+)", re.DOTALL)


def test_it_creates_the_admin_once_and_prints_its_password_and_a_working_token(db, settings, tmp_path):
    settings.VAR_DIR = tmp_path  # where it keeps the password
    first, second = StringIO(), StringIO()
    call_command("bootstrap_dev", "--port", "9001", stdout=first)
    call_command("bootstrap_dev", "--port", "9001", stdout=second)
    token = Token.objects.get(user=User.objects.get(username="admin", is_superuser=True))
    assert first.getvalue() == second.getvalue()
    assert "http://127.0.0.1:9001/admin/" in first.getvalue()
    assert f"Token:  {token.key}" in first.getvalue()
    password = (tmp_path / "dev-credentials.txt").read_text().strip()
    assert f"password: {password}" in first.getvalue()
    assert token.user.check_password(password)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get("/api/jobs/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_ready_banner_waits_for_the_processes_and_stops_at_once_on_sigterm(tmp_path):
    # Given the banner process waiting for a web server that never comes up
    env = {**os.environ, "DATABASE_URL": test_database_url(), "TERMINUS_VAR_DIR": str(tmp_path)}
    argv = [sys.executable, "manage.py", "bootstrap_dev", "--port", str(free_port()), "--banner-when-ready"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(3)
    # Then it has neither printed the banner nor exited (honcho would stop every process)
    assert proc.poll() is None
    # When it gets SIGTERM, it exits at once, cleanly and without a banner
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, output
    assert time.monotonic() - started < 3
    assert b"Token:" not in output


class RunStack:
    """``make run``'s last three steps (migrate, bootstrap_dev, the Procfile through project.devrun) on
    the embedded default under a var dir of its own, on a free port; output in a log file."""

    def __init__(self, var_dir: Path, log_path: Path):
        self.port = free_port()
        self.var_dir = var_dir
        self.log_path = log_path
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}},
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "TERMINUS_VAR_DIR": str(var_dir),
            "TERMINUS_HOST": "127.0.0.1",
            "TERMINUS_PORT": str(self.port),
            "TERMINUS_DIAGNOSTICS_TIME_LIMIT": "60",  # the job below sleeps 5 s
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RunStack:
        for step in (["migrate", "--noinput"], ["bootstrap_dev", "--port", str(self.port)]):
            subprocess.run(
                [sys.executable, "manage.py", *step], cwd=ROOT, env=self.env, check=True, capture_output=True
            )
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "project.devrun", "-f", "Procfile", "start"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the test's SIGINT reaches honcho alone, as Ctrl-C in a terminal does
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """Teardown after a failure: honcho and every process it started."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def job_status(self, job_id: str) -> str:
        """Read from the stack's own SQLite file (the web server is gone once the stack stopped)."""
        with sqlite3.connect(self.var_dir / "terminus.sqlite3") as db:
            row = db.execute(f"SELECT status FROM {Job._meta.db_table} WHERE id = ?", [job_id.replace("-", "")])  # noqa: S608
            return row.fetchone()[0]


@pytest.fixture
def run_stack(tmp_path: Path) -> Iterator[RunStack]:
    stack = RunStack(tmp_path / "var", tmp_path / "make-run.log")
    yield stack
    stack.kill()


@pytest.mark.slow
def test_make_run_prints_the_banner_when_up_and_ctrl_c_lets_a_running_job_finish(run_stack):
    # Given make run's processes, up: the banner is printed again once web and a worker answer
    run_stack.start()
    token = wait_for(lambda: READY_BANNER.search(run_stack.log()), timeout=90, what="the ready banner")[1]
    assert run_stack.log().index("ready.") < run_stack.log().index("up: web and worker answer")
    api = httpx.Client(base_url=f"http://127.0.0.1:{run_stack.port}", headers={"Authorization": f"Token {token}"})
    # And a job that takes 5 s, running
    response = api.post("/api/jobs/", json={"type": "diagnostics.sleep", "payload": {"seconds": 5}})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wait_for(lambda: api.get(f"/api/jobs/{job_id}/").json()["status"] == "running", timeout=30, what="the job to run")
    # When Ctrl-C reaches honcho
    stopped_at = time.monotonic()
    assert run_stack.proc is not None
    run_stack.proc.send_signal(signal.SIGINT)
    run_stack.proc.wait(timeout=45)
    # Then the worker finished the job (a warm shutdown) and everything stopped within the promised 30 s
    assert run_stack.job_status(job_id) == "succeeded", run_stack.log()[-5000:]
    assert time.monotonic() - stopped_at < 30, run_stack.log()[-5000:]
    assert "SIGKILL" not in run_stack.log()
