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
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from results.querysets import database_now_minus, database_now_plus


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


#: The lease the worker nodes share for the repair pass (tasks.recovery.liveness), read by /readyz.
REPAIR_PASS = "repair"  # noqa: S105 - a lease name, not a password


class RepairLease(models.Model):
    """Who runs the repair pass, and when it last completed: one pass at a time across the fleet.

    Every worker node tries to take the lease (tasks.recovery.liveness); one guarded UPDATE on the
    database's clock decides. The holder keeps it for the pass (``held_until`` bounds a holder that
    dies mid-pass), then hands it back due again TERMINUS_REPAIR_INTERVAL later, to whichever node
    asks first. ``last_completed_at`` is what /readyz reads: no completed pass means no repairs.
    """

    name = models.CharField(max_length=50, primary_key=True)
    holder = models.UUIDField(null=True, blank=True, help_text="The worker incarnation that took it last.")
    held_until = models.DateTimeField(default=timezone.now, help_text="Free to take from this time on.")
    last_completed_at = models.DateTimeField(null=True, blank=True)
    last_counts = models.JSONField(default=dict, blank=True, help_text="What the last completed pass repaired.")

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return f"{self.name}: last completed {self.last_completed_at or 'never'}"

    @classmethod
    def take(cls, name: str, *, holder: Any, hold_for: float) -> bool:
        """True if ``holder`` now holds the lease (it was free): it may run one pass."""
        if not cls.objects.filter(name=name).exists():
            try:
                with transaction.atomic():
                    # free since long ago: a default of this host's now() could compare above the
                    # database's now() (SQLite keeps milliseconds there, microseconds here)
                    cls.objects.create(name=name, held_until=timezone.now() - timedelta(days=1))
            except IntegrityError:
                pass  # another node created it first
        return (
            cls.objects.filter(name=name, held_until__lte=Now()).update(
                holder=holder, held_until=database_now_plus(hold_for)
            )
            == 1
        )

    @classmethod
    def complete(cls, name: str, *, holder: Any, due_in: float, counts: dict[str, Any]) -> bool:
        """Record a completed pass and hand the lease back, due again in ``due_in`` seconds."""
        return (
            cls.objects.filter(name=name, holder=holder).update(
                held_until=database_now_plus(due_in), last_completed_at=Now(), last_counts=counts
            )
            == 1
        )

    @classmethod
    def seconds_since_completed(cls, name: str) -> float | None:
        """Seconds since the last completed pass, by the database's clock; None if none ever completed."""
        row = (
            cls.objects.filter(name=name, last_completed_at__isnull=False)
            .annotate(
                age=models.ExpressionWrapper(Now() - models.F("last_completed_at"), output_field=models.DurationField())
            )
            .values_list("age", flat=True)
            .first()
        )
        return row.total_seconds() if row is not None else None
