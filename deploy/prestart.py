"""Before any process role starts: wait for the database and the broker, then (optionally) migrate.

Run by deploy/entrypoint.sh as ``python deploy/prestart.py [--migrate]``:

* refuses to start a production process whose secrets still hold the ``CHANGE-ME`` placeholders
  of .env.example / deploy/k8s/secret.yaml;
* waits up to ``WAIT_TIMEOUT`` seconds (default 60) until the database accepts a connection and
  the broker accepts one (skip the broker with ``WAIT_FOR_BROKER=0``);
* with ``--migrate``: runs ``manage.py migrate --noinput`` while holding a PostgreSQL advisory
  lock, so two processes started with RUN_MIGRATIONS=1 at once (two web replicas, a web and the
  migration Job) apply migrations one after the other instead of racing. The second one finds
  nothing left to do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parent.parent
# Any 64-bit constant works, as long as every Terminus process uses the same one ("terminus").
MIGRATION_LOCK_ID = 0x7465726D696E7573
PLACEHOLDER = "CHANGE-ME"


def log(message: str) -> None:
    print(f"prestart: {message}", file=sys.stderr, flush=True)


def refuse_placeholders() -> None:
    if os.environ.get("TERMINUS_ENV") != "production":
        return
    names = ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "TERMINUS_METRICS_TOKEN")
    left = [name for name in names if PLACEHOLDER in os.environ.get(name, "")]
    if left:
        raise SystemExit(f"prestart: replace the {PLACEHOLDER} placeholder in {', '.join(left)} with real values")


def wait_until(what: str, attempt: Callable[[], None], deadline: float) -> None:
    """Call ``attempt`` until it stops raising, or exit non-zero once ``deadline`` has passed."""
    delay = 0.5
    while True:
        try:
            attempt()
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise SystemExit(f"prestart: gave up waiting for the {what}: {exc}") from exc
            log(f"waiting for the {what}: {exc.__class__.__name__}: {exc}")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            log(f"{what} is up")
            return


def check_database() -> None:
    from django.db import connection

    connection.close()
    connection.ensure_connection()


def check_broker() -> None:
    from project.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)


def migrate() -> None:
    """``migrate --noinput`` under a PostgreSQL session advisory lock (SQLite: no lock needed)."""
    from django.core.management import call_command
    from django.db import connections

    if connections["default"].vendor != "postgresql":
        call_command("migrate", interactive=False)
        return
    # The lock lives on a connection of its own, so nothing migrate does to the default
    # connection (commit, close, reconnect) can release it early.
    lock = connections.create_connection("default")
    try:
        with lock.cursor() as cursor:
            log("taking the migration lock")
            cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_ID])
            try:
                call_command("migrate", interactive=False)
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_ID])
    finally:
        lock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--migrate", action="store_true", help="apply migrations (under the advisory lock)")
    args = parser.parse_args(argv)

    refuse_placeholders()
    sys.path.insert(0, str(APP_ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()

    deadline = time.monotonic() + float(os.environ.get("WAIT_TIMEOUT", "60"))
    wait_until("database", check_database, deadline)
    if os.environ.get("WAIT_FOR_BROKER", "1") != "0":
        wait_until("broker", check_broker, deadline)
    if args.migrate:
        migrate()


if __name__ == "__main__":
    main()
