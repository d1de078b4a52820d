"""What the broker and the workers say about the fleet, asked from any process.

Shared by ``/metrics``, ``/readyz``, ``manage.py fleet`` and the canaries: one list of the queues
Terminus routes to, the depth of each, and one broadcast that every worker answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from project.celery import app
from tasks.failure.dead_letters import DEAD_LETTER_QUEUE

logger = logging.getLogger(__name__)


def known_queues() -> list[str]:
    """Every queue Terminus routes to: TERMINUS_QUEUES, the dead-letter queue and the crons' queue."""
    return list(dict.fromkeys([*settings.TERMINUS_QUEUES, DEAD_LETTER_QUEUE, settings.TERMINUS_CRON_QUEUE]))


def broker_queue_depths(queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue, asked of the broker (a passive declare: creates nothing).

    Redis counts every priority list of the queue; a queue the broker does not know holds 0.
    Messages a worker already holds (prefetched, or waiting for their countdown) are not counted.
    """
    depths: dict[str, int] = {}
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT)
        for name in queues:
            channel = connection.channel()
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True)[1])
            except connection.channel_errors:
                depths[name] = 0  # never declared: nothing was ever sent to it
            finally:
                try:
                    channel.close()
                except (*connection.connection_errors, *connection.channel_errors):
                    logger.debug("closing the probe channel of %s failed", name, exc_info=True)
    return depths


def fleet_snapshot(*, timeout: float, destination: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every worker that answers within ``timeout``: node name -> its ``terminus_fleet`` reply."""
    # Named workers: stop waiting as soon as each has answered; otherwise wait the whole timeout.
    replies = app.control.broadcast(
        "terminus_fleet",
        reply=True,
        timeout=timeout,
        destination=destination or None,
        limit=len(destination) if destination else None,
    )
    workers: dict[str, dict[str, Any]] = {}
    for reply in replies or []:
        for node, answer in reply.items():
            if isinstance(answer, dict) and "consuming" in answer:  # beat answers broadcasts too
                workers[node] = answer
    return dict(sorted(workers.items()))
