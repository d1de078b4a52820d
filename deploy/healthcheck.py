"""Container health check for every process role; exits 0 when healthy, 1 when not.

    python deploy/healthcheck.py [web|worker|beat]

Without an argument the role is read from PID 1's command line (the process that
deploy/entrypoint.sh exec'd), so the image's one HEALTHCHECK fits every role:

* web: GET http://127.0.0.1:$PORT$HEALTHCHECK_PATH must answer 200 {"status": "ok"}. The default
  path, ``/readyz?check=database``, is healthy once the process serves requests and the database
  answers (and, the first time, web has migrated it); the whole ``/readyz`` also needs workers and
  beat, which compose starts only after web is healthy. Standard library only (slim images have no
  curl). The request's Host header is $HEALTHCHECK_HOST (default ``localhost``), which must be in
  ALLOWED_HOSTS or Django answers 400.
* worker: ``inspect ping`` through the broker to this container's own node ($WORKER_NAME, default
  ``terminus@%h``: its consumer loop answers); its liveness row is fresh (the main process's heartbeat
  thread records it every TERMINUS_WORKER_HEARTBEAT seconds, results.models.WorkerNode); and the
  fleet's repair loop runs (the ``repairs`` readiness check: a pass completed within 3 intervals,
  recorded and alerted once like /readyz's checks). A red ``repairs`` means the jobs of a dead worker
  are not being recovered: every worker shows it, which is what an operator must see.
* beat: ``inspect ping`` to $BEAT_NAME (default ``celerybeat@%h``). Beat answers only when started
  with --enable-remote-control (deploy/start-beat.sh does), and stops answering when its scheduler
  loop stalls.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROLES = ("web", "worker", "beat")


def detect_role() -> str:
    """The role of PID 1: a celery worker or beat, else web (gunicorn)."""
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "web"
    words = {Path(arg.decode(errors="replace")).name for arg in argv}
    if "celery" in words or "celery.__main__" in words:
        if "beat" in words:
            return "beat"
        if "worker" in words:
            return "worker"
    return "web"


def check_web() -> str:
    port = os.environ.get("PORT", "8000")
    path = os.environ.get("HEALTHCHECK_PATH", "/readyz?check=database")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        headers={"Host": os.environ.get("HEALTHCHECK_HOST", "localhost")},
    )
    try:
        with urllib.request.urlopen(request, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "5"))) as response:  # noqa: S310
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        hint = " (is HEALTHCHECK_HOST in ALLOWED_HOSTS?)" if exc.code == 400 else ""
        detail = exc.read()[:500].decode(errors="replace") if exc.code == 503 else ""
        raise SystemExit(f"unhealthy: {path} answered {exc.code}{hint} {detail}".rstrip()) from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"unhealthy: {path}: {exc}") from None
    if body.get("status") != "ok":
        raise SystemExit(f"unhealthy: {path} said {body!r}")
    return f"{path} ok"


def setup_django() -> None:
    """Django set up from this checkout, imported only by the worker and beat checks (web needs none)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()


def check_node(env_name: str, default: str) -> str:
    node = os.environ.get(env_name, default).replace("%h", socket.gethostname())
    setup_django()
    from project.celery import app

    timeout = float(os.environ.get("HEALTHCHECK_TIMEOUT", "5"))
    replies = app.control.ping(destination=[node], timeout=timeout)
    if not any(node in reply for reply in replies):
        raise SystemExit(f"unhealthy: {node} did not answer a ping within {timeout:g}s")
    return f"{node} answered"


def check_worker() -> str:
    """The node answers, its liveness row is fresh, and the fleet's repair loop runs."""
    answered = check_node("WORKER_NAME", "terminus@%h")
    node = answered.removesuffix(" answered")
    from django.conf import settings

    from results.models import WorkerNode
    from tasks.fleet.readiness import readiness

    dead_after = settings.TERMINUS_WORKER_DEAD_AFTER
    if not WorkerNode.objects.filter(hostname=node).alive(dead_after=dead_after).exists():
        raise SystemExit(f"unhealthy: {node} has not recorded its heartbeat for {dead_after}s (results.WorkerNode)")
    verdict = readiness(("database", "repairs"))
    if verdict["status"] != "ok":
        checks = verdict["checks"]
        errors = "; ".join(f"{name}: {checks[name].get('error', 'failing')}" for name in verdict["failing"])
        raise SystemExit(f"unhealthy: {errors}")
    return f"{node} answered, heartbeat fresh, repairs running"


def main(argv: list[str]) -> None:
    role = argv[1] if len(argv) > 1 else detect_role()
    if role not in ROLES:
        raise SystemExit(f"usage: healthcheck.py [{'|'.join(ROLES)}]")
    if role == "web":
        message = check_web()
    elif role == "worker":
        message = check_worker()
    else:
        message = check_node("BEAT_NAME", "celerybeat@%h")
    print(f"healthy: {message}")


if __name__ == "__main__":
    main(sys.argv)
