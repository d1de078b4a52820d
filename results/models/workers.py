"""Worker nodes: which worker incarnations are alive, so a dead one's jobs are recovered in seconds.

A job's heartbeat says its attempt moved recently; it cannot tell a long silent job from a job
whose worker was SIGKILLed. A node's own heartbeat can: the worker's main process records it
every TERMINUS_WORKER_HEARTBEAT seconds, whatever its pool children are doing, and each claim
records the incarnation that made it (``Job.worker_node``). So:

- a node that starts again under the same hostname knows its earlier incarnations are gone;
- a node not seen for TERMINUS_WORKER_DEAD_AFTER seconds is dead;
- a node that shut down warm says so (``stopped_at``) once its jobs are finished.

Every cutoff is computed by the database (``now()`` in the query), never by the clock of the
process that asks: the timestamps it compares were written by the database too.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from results.querysets import database_now_minus


class WorkerNodeQuerySet(models.QuerySet):
    def alive(self, *, dead_after: float) -> WorkerNodeQuerySet:
        """Incarnations that have not stopped and were seen within ``dead_after`` seconds."""
        return self.filter(stopped_at__isnull=True, last_seen_at__gte=database_now_minus(dead_after))

    def dead(self, *, dead_after: float) -> WorkerNodeQuerySet:
        """Incarnations that stopped, or were not seen for ``dead_after`` seconds."""
        return self.filter(Q(stopped_at__isnull=False) | Q(last_seen_at__lt=database_now_minus(dead_after)))


class WorkerNode(models.Model):
    """One incarnation of a worker node: from its start to its stop (or its death)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, help_text="The incarnation's id.")
    hostname = models.CharField(max_length=255, help_text="The Celery node name, e.g. celery@host-1.")
    pid = models.PositiveIntegerField(help_text="The worker's main process id.")
    boot_id = models.CharField(max_length=64, blank=True, default="", help_text="The host's boot id, when known.")
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now, help_text="Written by the main process's heartbeat.")
    stopped_at = models.DateTimeField(
        null=True, blank=True, help_text="Warm shutdown finished, or found dead and its jobs recovered."
    )

    objects = WorkerNodeQuerySet.as_manager()

    class Meta:
        ordering = ("-started_at",)
        indexes = [
            # The repair loop's "which nodes are dead" and a start's "my earlier incarnations".
            models.Index(fields=["last_seen_at"], name="node_open_seen", condition=Q(stopped_at__isnull=True)),
            models.Index(fields=["hostname", "-started_at"], name="node_hostname_started"),
        ]

    def __str__(self) -> str:
        return f"{self.hostname} pid {self.pid} ({'stopped' if self.stopped_at else 'running'})"

    @classmethod
    def register(cls, *, hostname: str, pid: int, boot_id: str = "") -> WorkerNode:
        """Record a new incarnation, seen now (by the database's clock)."""
        node = cls.objects.create(hostname=hostname, pid=pid, boot_id=boot_id)
        cls.objects.filter(pk=node.pk).update(started_at=Now(), last_seen_at=Now())
        return node

    def beat(self) -> bool:
        """Prove this incarnation is alive; False when it was declared dead (or stopped) meanwhile."""
        return WorkerNode.objects.filter(pk=self.pk, stopped_at__isnull=True).update(last_seen_at=Now()) == 1

    def stop(self) -> bool:
        """Record that this incarnation is gone: its running jobs, if any are left, are lost."""
        return WorkerNode.objects.filter(pk=self.pk, stopped_at__isnull=True).update(stopped_at=Now()) == 1

    @staticmethod
    def earlier_incarnations(*, hostname: str, current: uuid.UUID) -> WorkerNodeQuerySet:
        """The other, not yet stopped, incarnations of ``hostname``: a node that starts again knows they are gone."""
        return WorkerNode.objects.filter(hostname=hostname, stopped_at__isnull=True).exclude(pk=current)


def node_not_alive(field: str, *, dead_after: float) -> Q:
    """Rows whose ``field`` (a node id) names no live incarnation: empty, unknown, stopped or silent."""
    alive = WorkerNode.objects.alive(dead_after=dead_after).filter(pk=OuterRef(field))
    return Q(**{f"{field}__isnull": True}) | ~Exists(alive)
