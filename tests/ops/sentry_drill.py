"""Sentry drills run in a process of their own (``python -m tests.ops.sentry_drill beat|web``) so that
sentry-sdk, initialised by project.settings from SENTRY_DSN, never touches the test process.

* ``beat <entry> <queue>``: hands one periodic entry (crontab: every minute) to Celery beat's own
  ``Scheduler.apply_entry``, exactly as the beat process does on each tick.
* ``web``: a request whose view raises, carrying a body, a token, a cookie and a query string.
"""

from __future__ import annotations

import os
import sys

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

SECRETS = {
    "body": "card-4111-1111-1111-1111",
    "token": "token-s3cr3t-9f8e",
    "cookie": "cookie-s3cr3t-7d6c",
    "query": "person@example.com",
}


@csrf_exempt
def explode(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the drill view failed")


urlpatterns = [path("explode/", explode)]


def beat(entry_name: str, queue: str) -> None:
    from celery.beat import Scheduler
    from celery.schedules import crontab

    from project.celery import app

    scheduler = Scheduler(app, lazy=True)
    entry = scheduler.Entry(
        name=entry_name, task="terminus.alerts.flush", schedule=crontab(), options={"queue": queue}, app=app
    )
    scheduler.apply_entry(entry, producer=None)


def web() -> None:
    """Serve the project's WSGI application (as gunicorn does) on a free port and send it one request."""
    import threading
    import urllib.error
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    settings.ROOT_URLCONF = "tests.ops.sentry_drill"
    server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server_port}/explode/?email={SECRETS['query']}",
        data=f'{{"card": "{SECRETS["body"]}"}}'.encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {SECRETS['token']}",
            "Cookie": f"sessionid={SECRETS['cookie']}",
            "X-Correlation-ID": "drill-web-1",
            "Host": "localhost",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    finally:
        server.shutdown()
    if status != 500:
        raise SystemExit(f"the drill view answered {status}, not 500")


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    import sentry_sdk

    assert sentry_sdk.get_client().is_active(), "SENTRY_DSN must be set for the drill"
    if argv[1] == "beat":
        beat(argv[2], argv[3])
    elif argv[1] == "web":
        web()
    else:
        raise SystemExit(f"usage: {argv[0]} beat <entry> <queue> | web")
    sentry_sdk.flush(timeout=10)


if __name__ == "__main__":
    main(sys.argv)
