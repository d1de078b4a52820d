"""Dead letters: messages that failed for good, kept until a human replays or resolves them."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from results.models.jobs import Job
from results.querysets import DeadLetterQuerySet


class DeadLetterReason(models.TextChoices):
    RETRIES_EXHAUSTED = "retries_exhausted"  # a transient error on every attempt
    NON_RETRYABLE = "non_retryable"  # a programming, validation or permanent error
    TIME_LIMIT = "time_limit"  # soft or hard time limit
    WORKER_LOST = "worker_lost"  # the worker died too many times running it (poison message)
    LOST = "lost"  # the reaper found it running with no heartbeat and no attempts left
    DEADLINE_EXCEEDED = "deadline_exceeded"  # still not terminal at terminal_by
    UNKNOWN_TASK = "unknown_task"  # a message naming a task no worker knows
    UNDECODABLE = "undecodable"  # a message that could not be decoded (pickle, garbage)
    INVALID = "invalid"  # a malformed task message
    REJECTED = "rejected"  # rejected by the broker's dead-letter exchange (RabbitMQ)


class DeadLetterStatus(models.TextChoices):
    OPEN = "open"  # waiting for a human
    REPLAYED = "replayed"  # run again as replay_job
    RESOLVED = "resolved"  # a human decided nothing more is needed


class DeadLetter(models.Model):
    """A message that failed for good, kept until a human replays or resolves it."""

    message_key = models.CharField(
        max_length=200, unique=True, help_text="The job id, or for a poison message its id or body hash: one row each."
    )
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_letter")
    task_name = models.CharField(max_length=200, blank=True, default="")
    queue = models.CharField(max_length=100, blank=True, default="")
    reason = models.CharField(max_length=32, choices=DeadLetterReason.choices)
    error_type = models.CharField(max_length=200, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    body = models.JSONField(null=True, blank=True, help_text="The original message's args/kwargs (decoded).")
    raw_body = models.TextField(blank=True, default="", help_text="An undecodable body, escaped and truncated.")
    headers = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    first_failed_at = models.DateTimeField(null=True, blank=True)
    last_failed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=DeadLetterStatus.choices, default=DeadLetterStatus.OPEN)
    replay_job = models.OneToOneField(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="replay_of_dead_letter"
    )
    replayed_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, default="")
    alerted_at = models.DateTimeField(null=True, blank=True, help_text="When the alerting path took it.")

    objects = DeadLetterQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            # DLQ monitoring: open count and oldest age; the list filtered by status.
            models.Index(fields=["status", "created_at"], name="deadletter_status_created"),
            models.Index(fields=["task_name", "error_type"], name="deadletter_type_error"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=DeadLetterStatus.values), name="deadletter_status_valid"),
            models.CheckConstraint(condition=Q(reason__in=DeadLetterReason.values), name="deadletter_reason_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name or '?'} {self.message_key} ({self.reason}, {self.status})"

    def mark_replayed(self, replay_job: Job) -> bool:
        """Link the replay; False means it was already replayed or resolved (replay twice: one run)."""
        return (
            DeadLetter.objects.filter(pk=self.pk, status=DeadLetterStatus.OPEN).update(
                status=DeadLetterStatus.REPLAYED, replay_job=replay_job, replayed_at=Now()
            )
            == 1
        )

    def mark_resolved(self, *, by: str = "") -> bool:
        return (
            DeadLetter.objects.filter(pk=self.pk, status=DeadLetterStatus.OPEN).update(
                status=DeadLetterStatus.RESOLVED, resolved_at=Now(), resolved_by=by[:150]
            )
            == 1
        )
