"""What the system records about itself: readiness verdicts, queue canaries, hourly rollups."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from results.models.jobs import Status


class HealthState(models.Model):
    """The last verdict of one health check (or one cron), so a change alerts once, not every tick."""

    name = models.CharField(max_length=100, unique=True, help_text="e.g. broker, canaries, cron:reaper")
    ok = models.BooleanField(default=True)
    detail = models.JSONField(default=dict, blank=True, help_text="What the last check found.")
    since = models.DateTimeField(default=timezone.now, help_text="When ok last changed.")
    checked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return f"{self.name}: {'ok' if self.ok else 'failing'}"

    @classmethod
    def record(cls, name: str, *, ok: bool, detail: dict[str, Any]) -> str | None:
        """Store a verdict; "failing" or "recovered" when it flipped (one guarded UPDATE: one caller wins)."""
        row, _ = cls.objects.get_or_create(name=name, defaults={"ok": True, "detail": detail})
        flipped = cls.objects.filter(pk=row.pk, ok=not ok).update(ok=ok, detail=detail, since=Now(), checked_at=Now())
        if flipped:
            return "recovered" if ok else "failing"
        cls.objects.filter(pk=row.pk).update(detail=detail, checked_at=Now())
        return None


class QueueCanary(models.Model):
    """Canary bookkeeping per queue: a queue whose canary waits too long is not being consumed."""

    queue = models.CharField(max_length=100, unique=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    waiting_since = models.DateTimeField(
        null=True, blank=True, help_text="When the oldest canary not consumed yet was sent; empty: consuming."
    )
    last_consumed_at = models.DateTimeField(null=True, blank=True)
    last_consumed_sent_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Send time of the newest consumed canary: the queue consumed what was published before it.",
    )

    class Meta:
        ordering = ("queue",)

    def __str__(self) -> str:
        return f"{self.queue}: {'waiting since ' + str(self.waiting_since) if self.waiting_since else 'consuming'}"


class MetricsRollup(models.Model):
    """Per (hour, job type, status): how many jobs ended so, how long they took, and the failure rate."""

    hour = models.DateTimeField(help_text="Start of the hour (UTC) the jobs finished in.")
    job_type = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices)
    count = models.PositiveIntegerField()
    duration_p50 = models.FloatField(null=True, blank=True, help_text="Seconds, start to end of the last attempt.")
    duration_p95 = models.FloatField(null=True, blank=True)
    latency_p50 = models.FloatField(null=True, blank=True, help_text="Seconds, submitted to terminal.")
    latency_p95 = models.FloatField(null=True, blank=True)
    failure_rate = models.FloatField(help_text="Failed / (succeeded + failed) of this type in this hour.")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-hour", "job_type", "status")
        indexes = [models.Index(fields=["job_type", "-hour"], name="rollup_type_hour")]
        constraints = [
            models.UniqueConstraint(fields=["hour", "job_type", "status"], name="rollup_once_per_hour_type_status"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.job_type} {self.status}: {self.count}"
