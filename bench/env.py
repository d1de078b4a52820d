"""The bench's own services and processes: its PostgreSQL database, its Redis database, its workers
and its web server; every process it starts is stopped again, on success, failure or Ctrl-C.

Nothing here touches another database: the bench creates, migrates and truncates only
``BENCH_DATABASE_NAME`` (default ``terminus_bench``) and uses only Redis database
``BENCH_REDIS_DB`` (default 10).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DATABASE_NAME", "terminus_bench")
REDIS_BASE = os.environ.get("BENCH_REDIS_BASE", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "10"))
DATABASE_URL = f"{PG_URL}/{DB_NAME}"
REDIS_URL = f"{REDIS_BASE}/{REDIS_DB}"

#: Variables that would change what is measured; the bench sets its own values for all of them.
_DROPPED_PREFIXES = ("TERMINUS_", "CELERY_", "SENTRY_", "DB_", "GUNICORN_")
_DROPPED = {"DATABASE_URL", "CACHE_URL", "LOG_LEVEL", "DEBUG", "DJANGO_SETTINGS_MODULE", "SECRET_KEY"}


def bench_env(*, log_level: str = "WARNING", db_reuse_max: int = 1000, **extra: str) -> dict[str, str]:
    """The environment of every bench process (runner, workers, web): the same settings for all."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED and not k.startswith(_DROPPED_PREFIXES)}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        TERMINUS_ENV="development",
        DEBUG="false",  # as deployed: DEBUG records every query in memory
        LOG_LEVEL=log_level,
        DATABASE_URL=DATABASE_URL,
        CELERY_BROKER_URL=REDIS_URL,
        BENCH_REDIS_URL=REDIS_URL,
        # Throttle counts in Redis, as a production deployment keeps them (docs/configuration.md).
        CACHE_URL=REDIS_URL.rsplit("/", 1)[0] + "/9",
        TERMINUS_VAR_DIR=str(VAR / "var"),
        # The bench's tracked job type routes to a queue of its own (see bench.celery_tasks).
        TERMINUS_QUEUES="default,slow,bench_tracked",
        DB_CONN_MAX_AGE="60",
        CELERY_DB_REUSE_MAX=str(db_reuse_max),
        # The API benchmark measures the server, not the throttle (a batch spends one per job).
        TERMINUS_SUBMIT_RATE="100000000/min",
        # The API benchmark's tenant user submits diagnostics.sleep, staff-only by default.
        TERMINUS_DIAGNOSTICS_AUDIENCE="everyone",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def configure_this_process(**kwargs: Any) -> None:
    """Point this process's Django at the bench services (call before django.setup())."""
    for key in [k for k in os.environ if k in _DROPPED or k.startswith(_DROPPED_PREFIXES)]:
        del os.environ[key]
    os.environ.update(bench_env(**kwargs))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------
class Managed:
    """A process group the bench started (``start_new_session``): stopped by its own id only."""

    _all: list[Managed] = []

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.offset = log_path.stat().st_size
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        Managed._all.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[self.offset :][-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the group (warm shutdown), then SIGKILL it if it outlives ``timeout``."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Pool children left behind by a main process that died first are still in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()
        if self in Managed._all:
            Managed._all.remove(self)

    def cpu_seconds(self) -> tuple[float, float]:
        """(main process, pool children) user + system CPU; reaped children count as children."""
        import psutil

        main = psutil.Process(self.pid)
        times = main.cpu_times()
        children = times.children_user + times.children_system
        for child in main.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child_times = child.cpu_times()
                children += child_times.user + child_times.system
        return times.user + times.system, children

    def cpu_total(self) -> float:
        return sum(self.cpu_seconds())

    @classmethod
    def stop_all(cls) -> None:
        for managed in list(reversed(cls._all)):
            try:
                managed.stop(timeout=10)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"bench: could not stop {managed.name} (pid {managed.pid}): {exc}", file=sys.stderr)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP become KeyboardInterrupt, so the runner's ``finally`` stops every process."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


class Worker(Managed):
    """``celery -A project worker``, prefork -c 2, consuming every bench queue (paused at start)."""

    def __init__(self, queues: list[str], *, concurrency: int = 2, tag: str = "", **env_kwargs: Any):
        self.node = f"bench-{tag or 'w'}-{uuid.uuid4().hex[:6]}@localhost"
        self.queues = queues
        argv = [
            sys.executable, "-m", "celery", "-A", "project", "worker",
            "-P", "prefork", "-c", str(concurrency),
            "-Q", ",".join(queues), "-n", self.node,
            "-I", "bench.celery_tasks",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", env_kwargs.get("log_level", "WARNING"),
        ]  # fmt: skip
        super().__init__(f"worker {self.node}", argv, bench_env(**env_kwargs), VAR / "logs" / f"worker-{tag}.log")

    def wait_ready(self, app: Any, timeout: float = 90) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            return bool(app.control.ping(destination=[self.node], timeout=0.5))

        wait_until(ready, timeout=timeout, what=f"{self.name} to answer ping")

    def _control(self, app: Any, command: str, queue: str) -> None:
        replies = getattr(app.control, command)(queue, destination=[self.node], reply=True, timeout=5)
        if not replies:
            raise RuntimeError(f"{self.name} did not answer {command}({queue})")

    def consume(self, app: Any, queue: str) -> None:
        self._control(app, "add_consumer", queue)

    def pause(self, app: Any, queue: str) -> None:
        self._control(app, "cancel_consumer", queue)

    def pause_all(self, app: Any) -> None:
        for queue in self.queues:
            self.pause(app, queue)


class Web(Managed):
    """The real WSGI app under gunicorn (gthread, as deploy/start-web.sh runs it) on a free port."""

    def __init__(
        self, *, workers: int = 2, threads: int = 2, app: str = "project.wsgi:application", tag: str = "web",
        **env_kwargs: Any,
    ):  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "gunicorn", app,
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers), "--threads", str(threads),
            "--timeout", "120", "--graceful-timeout", "5",
        ]  # fmt: skip
        super().__init__(f"gunicorn :{self.port}", argv, bench_env(**env_kwargs), VAR / "logs" / f"{tag}.log")

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=timeout, what=f"{self.name} to answer /healthz", interval=0.2)


class BackendCpu:
    """CPU of the PostgreSQL backends serving the bench database, sampled from /proc in a thread.

    Backends are the postmaster's children whose process title names the bench database (the
    runner's own statistics reads go through the ``postgres`` database and are not counted). A
    backend seen for the first time after ``start()`` counts from zero: it was opened in the window.
    """

    def __init__(self, interval: float = 0.2):
        import threading

        self.interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._postmaster = _postmaster()

    def _sample(self, *, baseline: bool) -> None:
        import psutil

        if self._postmaster is None:
            return
        marker = f" {DB_NAME} "
        for proc in self._postmaster.children():
            try:
                if marker not in " ".join(proc.cmdline()) + " ":
                    continue
                times = proc.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            self._first.setdefault(proc.pid, used if baseline else 0.0)
            self._last[proc.pid] = used

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(baseline=False)

    def start(self) -> BackendCpu:
        self._sample(baseline=True)
        self._thread.start()
        return self

    def stop(self) -> float | None:
        """CPU seconds used by bench-database backends in the window (None: not readable here)."""
        self._stop.set()
        self._thread.join()
        self._sample(baseline=False)
        if self._postmaster is None:
            return None
        return sum(self._last[pid] - self._first[pid] for pid in self._last)


def _postmaster() -> Any:
    """The local postmaster (None when PostgreSQL is not on this host or not readable)."""
    import psutil

    for proc in psutil.process_iter(["name", "ppid"]):
        try:
            if proc.info["name"] == "postgres" and psutil.Process(proc.info["ppid"]).name() != "postgres":
                return proc
        except psutil.Error:
            continue
    return None


# ---------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------
def ensure_database() -> None:
    """Create the bench database if it does not exist (never touches any other database)."""
    import psycopg

    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


#: Held for the whole run: two runs on one bench database would truncate each other's tables.
_RUN_LOCK: Any = None
RUN_LOCK_KEY = 0x7E2A1B3C


def lock_database() -> None:
    """Take the bench database's run lock (a session advisory lock) or fail at once."""
    global _RUN_LOCK
    import psycopg

    conn = psycopg.connect(DATABASE_URL, autocommit=True)
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", [RUN_LOCK_KEY]).fetchone()[0]:
        conn.close()
        raise RuntimeError(
            f"another bench run is using database {DB_NAME!r}; wait for it, or give this one its own "
            "database and Redis database (BENCH_DATABASE_NAME=..., BENCH_REDIS_DB=...)"
        )
    _RUN_LOCK = conn


def holds_lock() -> bool:
    return _RUN_LOCK is not None


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


#: Every table a measurement writes; truncated between measurements (bench database only).
JOB_TABLES = ("results_job", "results_jobattempt", "django_celery_results_taskresult")


def truncate(*tables: str) -> None:
    from django.db import connection

    assert connection.settings_dict["NAME"] == DB_NAME, "refusing to truncate a database that is not the bench's"
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables or JOB_TABLES)} RESTART IDENTITY CASCADE")


def redis() -> Any:
    import redis as redis_py

    return redis_py.Redis.from_url(REDIS_URL)


def flush_bench_redis() -> None:
    """Empty the bench's Redis database (only that one: FLUSHDB on ``REDIS_DB``, never FLUSHALL)."""
    client = redis()
    assert client.connection_pool.connection_kwargs.get("db") == REDIS_DB
    client.flushdb()
