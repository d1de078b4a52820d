"""Alerts: one row per delivery (persisted before it is sent), and the throttling windows."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from results.models.dead_letters import DeadLetter


class AlertStatus(models.TextChoices):
    PENDING = "pending"  # recorded, not sent yet
    SENT = "sent"
    FAILED = "failed"  # the channel refused; retried with backoff by the alerting task
    SUPPRESSED = "suppressed"  # inside an open throttle window: counted, not sent


class AlertWindow(models.Model):
    """Throttle state per (job type, error type): one alert per window, with a count of the rest."""

    key = models.CharField(max_length=300, unique=True, help_text="job type | error type")
    opened_at = models.DateTimeField()
    count = models.PositiveIntegerField(default=0, help_text="Failures in the open window.")
    reported = models.PositiveIntegerField(default=0, help_text="How many of them alerts have reported.")

    def __str__(self) -> str:
        return f"{self.key}: {self.count} since {self.opened_at:%Y-%m-%d %H:%M}"


class Alert(models.Model):
    """One alert sent (or being sent) to one channel; recorded before sending, updated after."""

    key = models.CharField(max_length=300, db_index=True)
    channel = models.CharField(max_length=32)
    dead_letter = models.ForeignKey(DeadLetter, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    count = models.PositiveIntegerField(default=1, help_text="Failures this alert reports.")
    subject = models.CharField(max_length=300)
    text = models.TextField()
    status = models.CharField(max_length=16, choices=AlertStatus.choices, default=AlertStatus.PENDING)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.channel}: {self.subject} ({self.status})"


# -- crons, health and metrics (tasks/crons/beat.py and the crons it lists) --------------------------
