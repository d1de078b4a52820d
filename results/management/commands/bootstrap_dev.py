"""Create the development admin and API token once, and say where everything is.

``make run`` prints the banner before it starts the processes, and once more when they are up
(``--banner-when-ready``, the Procfile's ``banner`` process): by then the web server's and the
worker's start-up lines have pushed the first one off the screen.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils import timezone
from rest_framework.authtoken.models import Token

from results.models import Membership, Tenant, WorkerNode

#: How often the ready-wait looks again (seconds).
POLL_SECONDS = 0.5
#: A worker counts when its incarnation started at most this long before the wait did: honcho starts
#: every process at once, and a row left alive by an earlier, killed ``make run`` must not count.
SAME_START_SECONDS = 10
#: After this long without both answers, say once what is still missing.
PATIENCE_SECONDS = 60


class Command(BaseCommand):
    help = "Development only: create user 'admin' (superuser) with an API token, and print URLs."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")
        parser.add_argument(
            "--banner-when-ready",
            action="store_true",
            help="Wait until the web server answers /healthz and a worker has started, print the banner, "
            "then stay idle until SIGTERM or SIGINT (a Procfile process: honcho stops all when one exits).",
        )

    def handle(self, *args: Any, host: str, port: str, banner_when_ready: bool, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("bootstrap_dev refuses to run with TERMINUS_ENV=production")
        if not banner_when_ready:
            self.stdout.write(self.banner(host, port))
            return
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per probe
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if wait_until_up(host, port, stop=stop, note=self.stderr.write):
            self.stdout.write(self.banner(host, port, ready=True))
            self.stdout.flush()
        connections.close_all()  # idle from here on: hold no database connection
        while not stop.wait(1):  # idle: honcho stops every process as soon as one exits
            pass

    def banner(self, host: str, port: str, *, ready: bool = False) -> str:
        """Ensure the admin and its token exist, and describe where everything is."""
        credentials = settings.VAR_DIR / "dev-credentials.txt"
        user_model = get_user_model()
        user = user_model.objects.filter(username="admin").first()
        if user is None or not credentials.exists():
            password = secrets.token_urlsafe(12)
            user = user or user_model(username="admin", email="admin@localhost")
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            credentials.write_text(password + "\n")
            credentials.chmod(0o600)
        password = credentials.read_text().strip()
        tenant, _ = Tenant.objects.get_or_create(name="default")
        Membership.objects.get_or_create(user=user, defaults={"tenant": tenant})
        token, _ = Token.objects.get_or_create(user=user)
        base = f"http://{host}:{port}"
        broker = settings.CELERY_BROKER_URL.split("://", 1)[0]
        database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        return "\n".join(
            [
                "",
                f"Terminus (development) - {'up: web and worker answer' if ready else 'starting'} - "
                f"database: {database}, broker: {broker}",
                f"  API:    {base}/api/jobs/   (browse it: {base}/api/docs/)",
                f"  Admin:  {base}/admin/   user: admin   password: {password}",
                f"  Token:  {token.key}",
                f'  Try:    curl -s -X POST {base}/api/jobs/ -H "Authorization: Token {token.key}" '
                '-H "Content-Type: application/json" '
                '-d \'{"type": "diagnostics.sleep", "payload": {"seconds": 2}}\'',
                "",
            ]
        )


def wait_until_up(host: str, port: str, *, stop: threading.Event, note: Callable[[str], Any]) -> bool:
    """Poll until the web server answers /healthz and a worker started with this run is alive.

    False when ``stop`` is set first. The worker is the WorkerNode row its start registers
    (tasks.recovery.liveness): one not stopped, seen within TERMINUS_WORKER_DEAD_AFTER.
    """
    probe_host = "127.0.0.1" if host in {"0.0.0.0", ""} else host  # noqa: S104 (a bind address, not a destination)
    url = f"http://{probe_host}:{port}/healthz"
    since = timezone.now() - timedelta(seconds=SAME_START_SECONDS)
    started, noted = time.monotonic(), False
    while not stop.wait(POLL_SECONDS):
        missing = [
            what for what, up in (("the web server", web_answers(url)), ("a worker", worker_alive(since))) if not up
        ]
        if not missing:
            return True
        if not noted and time.monotonic() - started > PATIENCE_SECONDS:
            note(f"still waiting for {' and '.join(missing)} ({url}); the banner follows when they are up")
            noted = True
    return False


def web_answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def worker_alive(since: datetime) -> bool:
    alive = WorkerNode.objects.alive(dead_after=settings.TERMINUS_WORKER_DEAD_AFTER)
    return alive.filter(started_at__gte=since).exists()
