"""The Celery app: ``celery -A project worker`` and ``celery -A project beat`` start here."""

from __future__ import annotations

import os
from logging.config import dictConfig

from celery import Celery
from celery.signals import setup_logging
from django.conf import settings
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# filesystem:// (the embedded default broker) resolves to our subclass that writes messages
# atomically (project/broker.py); every process imports this module before it connects.
TRANSPORT_ALIASES["filesystem"] = "project.broker:Transport"

app = Celery("terminus")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Job types live in the modules listed by TERMINUS_JOB_MODULES; tasks.apps imports them when
# Django is ready, so web, worker and beat see the same registry.
app.autodiscover_tasks()


@setup_logging.connect
def _use_django_logging(**_: object) -> None:
    """Hand logging to Django's LOGGING instead of Celery's own handlers."""
    dictConfig(settings.LOGGING)
