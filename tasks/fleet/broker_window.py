"""The broker's redelivery window, checked where it can only be read: at worker start, on the broker.

Settings refuse a CELERY_VISIBILITY_TIMEOUT that a job could outlive (project.settings); on RabbitMQ
the same window is declared on the work queues as ``x-consumer-timeout``. RabbitMQ before 3.12
ignores that argument and applies the server's ``consumer_timeout`` (rabbitmq.conf, 30 minutes by
default) to every consumer: a job running longer would lose its channel and run again. The server
does not tell a client its consumer_timeout, so a worker on such a server says, once, what to set.

The signal handler connects when this module is imported (tasks.apps imports it in every process).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from celery.signals import worker_ready
from django.conf import settings

logger = logging.getLogger(__name__)

#: The first RabbitMQ release that honours a queue's x-consumer-timeout.
PER_QUEUE_CONSUMER_TIMEOUT = (3, 12)


def rabbitmq_version(server_properties: dict[str, Any]) -> tuple[int, int] | None:
    """(major, minor) from the AMQP server properties, or None when not RabbitMQ or unreadable."""
    product = server_properties.get("product", b"")
    version = server_properties.get("version", b"")
    product = product.decode() if isinstance(product, bytes) else str(product)
    version = version.decode() if isinstance(version, bytes) else str(version)
    match = re.match(r"(\d+)\.(\d+)", version)
    if "rabbitmq" not in product.lower() or match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def consumer_timeout_advice(version: tuple[int, int] | None) -> str | None:
    """What the operator must set on this RabbitMQ server, or None when the queues' argument holds."""
    if version is None or version >= PER_QUEUE_CONSUMER_TIMEOUT:
        return None
    needed_ms = settings.CELERY_VISIBILITY_TIMEOUT * 1000
    return (
        f"RabbitMQ {version[0]}.{version[1]} ignores the work queues' x-consumer-timeout: its consumer_timeout "
        f"(rabbitmq.conf, 1800000 ms by default) applies, and a job running longer than it is delivered again. "
        f"Set consumer_timeout = {needed_ms} (or more) in rabbitmq.conf, or upgrade to RabbitMQ 3.12+."
    )


@worker_ready.connect
def _check_rabbitmq_consumer_timeout(sender: Any = None, **_: Any) -> None:
    if not settings.CELERY_BROKER_URL.startswith(("amqp", "pyamqp")):
        return
    transport_connection = getattr(getattr(sender, "connection", None), "connection", None)
    advice = consumer_timeout_advice(rabbitmq_version(getattr(transport_connection, "server_properties", {}) or {}))
    if advice:
        logger.warning(advice)
