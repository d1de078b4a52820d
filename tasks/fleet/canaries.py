"""Queue canaries: proof that every queue is being consumed, not only that workers answer pings.

A canary is a tiny Celery task published to one queue; the worker that consumes it records the
time. A worker can stay alive and answer pings while it has silently stopped consuming (after a
broker reconnect: celery#8030 and friends): its queue's canary then waits, and the readiness check
(tasks.fleet.readiness) says so. The health cron sends them.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from results.models import QueueCanary
from tasks.fleet.probes import known_queues

logger = logging.getLogger(__name__)

#: The canary task (wire protocol: never rename).
CANARY_TASK = "terminus.health.canary"


@shared_task(name=CANARY_TASK, ignore_result=True)
def canary(queue: str, sent_at: str) -> None:
    """Consumed from ``queue``: the queue is being consumed (and everything sent before ``sent_at``)."""
    sent = parse_datetime(sent_at)
    rows = QueueCanary.objects.filter(queue=queue)
    rows.update(last_consumed_at=Now(), waiting_since=None)
    rows.filter(Q(last_consumed_sent_at__isnull=True) | Q(last_consumed_sent_at__lt=sent)).update(
        last_consumed_sent_at=sent
    )


def send_canaries() -> int:
    """Send a canary to each queue whose last one was consumed, or has waited past the bound.

    At most one canary per queue is outstanding per TERMINUS_CANARY_TIMEOUT, so a queue nobody
    consumes collects a handful, not one per tick; a canary lost with its message is replaced.
    """
    sent = 0
    timeout = timedelta(seconds=settings.TERMINUS_CANARY_TIMEOUT)
    for queue in known_queues():
        row, _ = QueueCanary.objects.get_or_create(queue=queue)
        now = timezone.now()
        mine = QueueCanary.objects.filter(pk=row.pk)
        if row.waiting_since is None:
            claimed = mine.filter(waiting_since__isnull=True).update(waiting_since=now, last_sent_at=now)
        elif row.last_sent_at is None or row.last_sent_at < now - timeout:
            claimed = mine.filter(last_sent_at=row.last_sent_at).update(last_sent_at=now)
        else:
            continue
        if not claimed:
            continue
        try:
            canary.apply_async(kwargs={"queue": queue, "sent_at": now.isoformat()}, queue=queue, expires=24 * 3600)
        except Exception:
            logger.warning("canary for queue %s not sent (broker unavailable)", queue, exc_info=True)
            break
        sent += 1
    return sent
