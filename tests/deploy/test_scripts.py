"""deploy/*.sh and deploy/*.py: shellcheck-clean, strict, and they really start each role.

The smoke tests run the container's entrypoint with each start script from this checkout, in
development mode (SQLite and kombu's filesystem broker in a temporary TERMINUS_VAR_DIR), check
the role with deploy/healthcheck.py, then stop it with SIGTERM and expect a clean exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY, ROOT, run, tool

SCRIPTS = sorted(DEPLOY.glob("*.sh"))
STRICT = "set -o errexit -o nounset -o pipefail"


def shellcheck(*paths: Path) -> tuple[int, str]:
    result = run(tool("shellcheck"), "--shell=bash", "--severity=style", *map(str, paths))
    return result.returncode, result.stdout + result.stderr


def test_the_scripts_are_the_entrypoint_and_one_per_role() -> None:
    assert [path.name for path in SCRIPTS] == ["entrypoint.sh", "start-beat.sh", "start-web.sh", "start-worker.sh"]


def test_shellcheck_is_clean() -> None:
    returncode, output = shellcheck(*SCRIPTS)
    assert returncode == 0, output


def test_a_broken_script_fails_shellcheck(tmp_path: Path) -> None:
    """The linter is live: an unquoted expansion and a useless cd are reported."""
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/usr/bin/env bash\ncd $1\nexec celery -A project worker --queues $WORKER_QUEUES\n")
    returncode, output = shellcheck(broken)
    assert returncode != 0
    assert "SC2086" in output, output


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_script_is_strict_executable_and_execs(script: Path) -> None:
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert STRICT in lines, f"{script.name} lacks `{STRICT}`"
    assert os.access(script, os.X_OK), f"chmod +x {script}"
    code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    execs = [i for i, line in enumerate(code) if line.lstrip().startswith("exec ")]
    assert len(execs) == 1, "exactly one exec, so the process becomes PID 1 and receives SIGTERM"
    command = code[execs[0] :]
    assert all(line.endswith("\\") for line in command[:-1]), f"{script.name}: exec must be the last command"


def test_the_entrypoint_migrates_only_when_asked() -> None:
    text = (DEPLOY / "entrypoint.sh").read_text()
    assert '"${RUN_MIGRATIONS:-0}" == "1"' in text, "migrations must be opt-in per role"
    assert 'exec "$@"' in text
    assert "--migrate" in text
    assert 'call_command("migrate", interactive=False)' in (DEPLOY / "prestart.py").read_text()


def test_prestart_refuses_placeholder_secrets(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {
        "TERMINUS_ENV": "production",
        "SECRET_KEY": "CHANGE-ME",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "prestart.py")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr and "CHANGE-ME" in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------
# Smoke: each role starts through the entrypoint, is healthy, and stops cleanly on SIGTERM.
# ---------------------------------------------------------------------------------------------
def base_env(var_dir: Path) -> dict[str, str]:
    """A clean development environment: nothing from the test session leaks into the roles."""
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", str(var_dir)),
        "LANG": "C.UTF-8",
        "TERMINUS_VAR_DIR": str(var_dir),
        "HEALTHCHECK_TIMEOUT": "2",
        "WAIT_TIMEOUT": "30",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Role:
    def __init__(self, script: str, var_dir: Path, **env: str) -> None:
        self.log_path = var_dir / f"{script}.log"
        self.env = base_env(var_dir) | env
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(DEPLOY / "entrypoint.sh"), str(DEPLOY / script)],
                cwd=var_dir,  # the scripts must not depend on the caller's directory
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthcheck(self, role: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py"), role],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def wait_healthy(self, role: str, *, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"{role} exited with {self.proc.returncode}:\n{self.log()}"
            result = self.healthcheck(role)
            if result.returncode == 0:
                return result.stdout
            assert time.monotonic() < deadline, f"{role} never became healthy: {result.stderr}\n{self.log()}"
            time.sleep(0.5)

    def terminate(self, *, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def start_role(tmp_path: Path) -> Iterator[Callable[..., Role]]:
    started: list[Role] = []

    def start(script: str, **env: str) -> Role:
        role = Role(script, tmp_path, **env)
        started.append(role)
        return role

    yield start
    for role in started:
        role.kill()


def migrate(var_dir: Path) -> None:
    """Migrate the development database of ``var_dir`` as the entrypoint does (deploy/prestart.py)."""
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "prestart.py"), "--migrate"],
        env=base_env(var_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_web_migrates_turns_ready_and_stops_on_sigterm(start_role: Callable[..., Role], tmp_path: Path) -> None:
    port = str(free_port())
    web = start_role("start-web.sh", RUN_MIGRATIONS="1", PORT=port, GUNICORN_WORKERS="1")
    assert web.wait_healthy("web").strip() == "healthy: /readyz?check=database ok"
    log = web.log()
    assert "Applying results.0001_initial... OK" in log
    assert f"Listening at: http://0.0.0.0:{port}" in log
    assert '"GET /readyz?check=database HTTP/1.1" 200' in log, "the access log goes to stdout"
    assert web.terminate() == 0, web.log()
    assert (tmp_path / "terminus.sqlite3").exists()


def test_worker_and_beat_answer_pings_and_stop_on_sigterm(start_role: Callable[..., Role], tmp_path: Path) -> None:
    migrate(tmp_path)
    worker = start_role("start-worker.sh", WORKER_QUEUES="default", WORKER_CONCURRENCY="1", WORKER_NAME="smoke@%h")
    beat = start_role("start-beat.sh")
    assert "smoke@" in worker.wait_healthy("worker")
    assert "celerybeat@" in beat.wait_healthy("beat")
    assert ".> default" in worker.log(), "the worker consumes WORKER_QUEUES"
    worker.proc.send_signal(signal.SIGTERM)  # both at once: a warm shutdown takes a few seconds
    assert beat.terminate() == 0, beat.log()
    assert worker.terminate() == 0, worker.log()
    assert "Warm shutdown" in worker.log()
    assert list((tmp_path / "beat").glob("celerybeat-schedule*")), "beat keeps its schedule in BEAT_SCHEDULE_DIR"


def test_a_worker_is_unhealthy_while_no_repair_pass_runs(start_role: Callable[..., Role], tmp_path: Path) -> None:
    migrate(tmp_path)
    # Given a worker that runs no repair pass (TERMINUS_REPAIR_INTERVAL=0), alone in its fleet
    worker = start_role(
        "start-worker.sh",
        WORKER_QUEUES="default",
        WORKER_CONCURRENCY="1",
        WORKER_NAME="norepair@%h",
        TERMINUS_REPAIR_INTERVAL="0",
    )
    assert "norepair@" in worker.wait_healthy("worker"), "with the loop off, the reaper cron is the repairer"
    # When the probe runs with the production setting (a pass due every 15 s)
    worker.env["TERMINUS_REPAIR_INTERVAL"] = "15"
    result = worker.healthcheck("worker")
    # Then the worker is unhealthy, saying that the jobs of a dead worker are not being repaired
    assert result.returncode == 1
    assert "repairs: no repair pass has completed yet" in result.stderr, result.stderr
    assert worker.terminate() == 0, worker.log()
