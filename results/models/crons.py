"""Cron runs: one row per (cron, tick), the lock that makes every tick run once."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone


class CronRunStatus(models.TextChoices):
    # Started and not finished yet (or its worker died: the next tick closes it as failed).
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Not run: the previous run of the same cron was still running at this tick (overlap policy).
    SKIPPED = "skipped"


class CronRun(models.Model):
    """One tick of one cron: exactly one row per (cron, tick), whoever sent it and however often.

    The unique constraint is the exactly-once lock: a second beat's send of the same tick fails to
    insert and only bumps ``duplicates``. Every row ends succeeded, failed or skipped.
    """

    cron = models.CharField(max_length=100, help_text="The cron's name in tasks/crons/beat.py.")
    tick = models.DateTimeField(help_text="The schedule slot this run belongs to.")
    status = models.CharField(max_length=16, choices=CronRunStatus.choices, default=CronRunStatus.RUNNING)
    task_id = models.CharField(max_length=255, blank=True, default="", help_text="The Celery task id of the run.")
    worker = models.CharField(max_length=255, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True, help_text="What the run reported (counts).")
    error_type = models.CharField(max_length=200, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    duplicates = models.PositiveIntegerField(
        default=0, help_text="Further sends of this tick refused by the lock (e.g. a second beat)."
    )

    class Meta:
        ordering = ("-started_at",)
        indexes = [
            # Admin history per cron; the schedule view's last run of each cron.
            models.Index(fields=["cron", "-started_at"], name="cronrun_cron_started"),
            # /readyz: the newest run of any cron (is beat ticking?); cleanup by age.
            models.Index(fields=["started_at"], name="cronrun_started"),
            # Overlap policy and the stale-run sweep: runs not finished yet.
            models.Index(fields=["cron", "started_at"], name="cronrun_running", condition=Q(status="running")),
        ]
        constraints = [
            models.UniqueConstraint(fields=["cron", "tick"], name="cronrun_once_per_tick"),
            models.CheckConstraint(condition=Q(status__in=CronRunStatus.values), name="cronrun_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.cron} @ {self.tick:%Y-%m-%d %H:%M:%S} ({self.status})"

    @property
    def duration(self) -> float | None:
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None

    def finish(
        self, status: str, *, result: Any = None, error_type: str = "", error_message: str = "", **extra: Any
    ) -> bool:
        """End a running run; False if it had already ended (e.g. closed as lost by a sweep)."""
        return (
            CronRun.objects.filter(pk=self.pk, status=CronRunStatus.RUNNING).update(
                status=status,
                finished_at=Now(),
                result=result,
                error_type=error_type[:200],
                error_message=error_message,
                **extra,
            )
            == 1
        )
