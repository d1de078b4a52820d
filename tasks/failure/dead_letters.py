"""The dead-letter queue: every final failure is published to ``dead_letter`` and kept until a
human replays or resolves it.

A job's dead-letter message is built from its record (type, payload, attempts, last error), so
the same function serves the worker child, the worker's main process (hard time limit), the
reaper and the poison-message hooks. Publishing is separate from recording: if the broker is
down, ``Job.dead_lettered_at`` stays empty and the reaper publishes it later.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Min, Q
from django.db.models.functions import Now
from django.utils import timezone

from results.models import AttemptOutcome, DeadLetter, DeadLetterReason, DeadLetterStatus, Job, Status
from tasks.failure.alerting import alert_dead_letter

logger = logging.getLogger(__name__)

#: The queue dead-letter messages travel on; a worker started with ``-Q dead_letter`` consumes it.
DEAD_LETTER_QUEUE = "dead_letter"
#: The task that records and alerts a dead letter (wire protocol: never rename).
RECORD_TASK = "terminus.dead_letter.record"
MAX_TEXT = 20_000


def reason_for(error_type: str, *, retryable: bool) -> str:
    """Why a job is dead: the category ops filter and alert on."""
    if error_type in {"TimeLimitExceeded", "SoftTimeLimitExceeded"}:
        return DeadLetterReason.TIME_LIMIT
    if error_type == "worker_lost":
        return DeadLetterReason.WORKER_LOST
    if error_type == "lost":
        return DeadLetterReason.LOST
    if error_type == "deadline_exceeded":
        return DeadLetterReason.DEADLINE_EXCEEDED
    return DeadLetterReason.RETRIES_EXHAUSTED if retryable else DeadLetterReason.NON_RETRYABLE


def message_for_job(job: Job, *, reason: str) -> dict[str, Any]:
    """The dead-letter message of a failed job: everything needed to inspect and replay it."""
    window = job.attempt_set.exclude(outcome=AttemptOutcome.SUCCEEDED).aggregate(
        first=Min("finished_at"), last=Max("finished_at")
    )
    last_failed = window["last"] or job.finished_at or timezone.now()
    return {
        "message_key": str(job.pk),
        "job_id": str(job.pk),
        "task_name": job.type,
        "queue": job.queue,
        "reason": reason,
        "error_type": job.error_type,
        "error_message": job.error_message[:MAX_TEXT],
        "traceback": job.traceback[-MAX_TEXT:],
        "body": {"args": [], "kwargs": job.payload},
        "headers": {
            "id": str(job.pk),
            "task": job.type,
            "correlation_id": job.correlation_id,
            "retries": max(0, job.attempts - 1),
            "worker": job.worker,
        },
        "attempts": job.attempts,
        "first_failed_at": (window["first"] or last_failed).isoformat(),
        "last_failed_at": last_failed.isoformat(),
    }


def record_repr(message: dict[str, Any]) -> str:
    """What logs, task events and result rows show of a dead-letter message: never its body.

    The message carries the failed job's payload (a replay runs it), which may hold secrets; Celery
    would show a repr of the whole message ("Task … received", django-celery-results' task_kwargs).
    """
    shown = {key: str(message.get(key) or "")[:200] for key in ("message_key", "job_id", "task_name", "reason")}
    return repr({**shown, "body": "<not logged>"})


def dead_letter_job(job_id: Any, *, reason: str | None = None) -> bool:
    """Publish a failed job to the dead_letter queue; False leaves it for the reaper to publish."""
    job = Job.objects.filter(pk=job_id, status=Status.FAILED).first()
    if job is None:
        return False
    if reason is None:
        reason = reason_for(job.error_type, retryable=True)
    try:
        message = message_for_job(job, reason=reason)
        record_dead_letter.apply_async(
            kwargs=message,
            queue=DEAD_LETTER_QUEUE,
            task_id=f"dead-letter-{job.pk}",
            argsrepr="()",
            kwargsrepr=record_repr(message),
        )
    except Exception:
        logger.warning("job %s failed but its dead letter was not published", job.pk, exc_info=True)
        return False
    Job.objects.filter(pk=job.pk, dead_lettered_at__isnull=True).update(dead_lettered_at=Now())
    return True


def poison_message(
    *,
    reason: str,
    body: Any,
    raw: bytes | str | None,
    headers: dict[str, Any] | None,
    queue: str,
    error: str,
    wire_body: bytes | str | None = None,
) -> dict[str, Any]:
    """The dead-letter message of a message that never became a job run (unknown, invalid, undecodable).

    Its key is the message id, or a hash of the bytes on the wire, so the worker's hook and
    RabbitMQ's dead-letter copy of the same message land in the same row.
    """
    headers = {str(k): _jsonable(v) for k, v in (headers or {}).items()}
    raw_text = ""
    if raw is not None:
        raw_bytes = raw.encode() if isinstance(raw, str) else raw
        raw_text = "base64:" + base64.b64encode(raw_bytes[:MAX_TEXT]).decode()
    wire = wire_body if wire_body is not None else raw
    if isinstance(wire, str):
        wire = wire.encode()
    key = headers.get("id") or "sha256:" + hashlib.sha256(wire or json.dumps(body, default=str).encode()).hexdigest()
    now = timezone.now().isoformat()
    return {
        "message_key": str(key)[:200],
        "job_id": None,
        "task_name": str(headers.get("task") or ""),
        "queue": queue,
        "reason": reason,
        "error_type": reason,
        "error_message": error[:MAX_TEXT],
        "traceback": "",
        "body": _jsonable(body) if raw is None else None,
        "raw_body": raw_text,
        "headers": headers,
        "attempts": 0,
        "first_failed_at": now,
        "last_failed_at": now,
    }


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:MAX_TEXT]
    return value


def store(message: dict[str, Any]) -> tuple[DeadLetter, bool]:
    """Persist a dead-letter message: exactly one row per message key, however often it arrives."""
    job_id = message.get("job_id")
    fields = {
        "job_id": job_id if job_id and Job.objects.filter(pk=job_id).exists() else None,
        "task_name": message.get("task_name", "")[:200],
        "queue": message.get("queue", "")[:100],
        "reason": message["reason"],
        "error_type": message.get("error_type", "")[:200],
        "error_message": message.get("error_message", ""),
        "traceback": message.get("traceback", ""),
        "body": message.get("body"),
        "raw_body": message.get("raw_body", ""),
        "headers": message.get("headers") or {},
        "attempts": message.get("attempts", 0),
        "first_failed_at": message.get("first_failed_at"),
        "last_failed_at": message.get("last_failed_at"),
    }
    try:
        with transaction.atomic():
            letter, created = DeadLetter.objects.get_or_create(message_key=message["message_key"], defaults=fields)
    except IntegrityError:  # a concurrent delivery of the same message won the insert
        letter, created = DeadLetter.objects.get(message_key=message["message_key"]), False
    bare_copy = letter.reason == DeadLetterReason.REJECTED and not letter.job_id
    if not created and bare_copy and (fields["job_id"] or fields["reason"] != DeadLetterReason.REJECTED):
        # RabbitMQ's DLX copy arrived first; the worker's own account says which job and why.
        upgrade = {k: v for k, v in fields.items() if v not in (None, "", {})}
        DeadLetter.objects.filter(pk=letter.pk, job__isnull=True).update(**upgrade)
        letter.refresh_from_db()
    return letter, created


@shared_task(
    name=RECORD_TASK,
    bind=True,
    queue=DEAD_LETTER_QUEUE,
    acks_late=True,
    autoretry_for=(Exception,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=None,  # a dead letter must reach a human: keep trying, the record is already safe
)
def record_dead_letter(self: Any, **message: Any) -> dict[str, Any]:
    """Persist first, alert second: a failing alert channel retries, the dead letter is never lost."""
    dead_letter, created = store(message)
    if not created:
        logger.info("dead letter %s delivered again; not recorded twice", dead_letter.message_key)
    alert_dead_letter(dead_letter)
    return {"dead_letter": dead_letter.pk, "created": created}


# -- monitoring and caps ------------------------------------------------------------------------
def queue_stats() -> dict[str, Any]:
    """DLQ monitoring: open dead letters and the age of the oldest (seconds)."""
    open_letters = DeadLetter.objects.open()
    oldest = open_letters.aggregate(oldest=Min("created_at"))["oldest"]
    return {
        "open": open_letters.count(),
        "oldest_age_seconds": (timezone.now() - oldest).total_seconds() if oldest else 0.0,
        "total": DeadLetter.objects.count(),
    }


def enforce_caps(*, batch: int = 1000) -> int:
    """Keep the store bounded: drop closed dead letters past their age, then the oldest past the row cap.

    Open dead letters are only dropped by the row cap (oldest first, logged), as Sidekiq's dead set
    does: an unbounded store would take the database down with it.
    """
    deleted = 0
    cutoff = timezone.now() - timedelta(days=settings.TERMINUS_DEAD_LETTER_MAX_AGE_DAYS)
    closed = Q(status__in=[DeadLetterStatus.REPLAYED, DeadLetterStatus.RESOLVED])
    while ids := list(DeadLetter.objects.filter(closed, created_at__lt=cutoff).values_list("pk", flat=True)[:batch]):
        deleted += DeadLetter.objects.filter(pk__in=ids).delete()[0]
    excess = DeadLetter.objects.count() - settings.TERMINUS_DEAD_LETTER_MAX_ROWS
    while excess > 0:
        ids = list(DeadLetter.objects.order_by("created_at").values_list("pk", flat=True)[: min(batch, excess)])
        removed = DeadLetter.objects.filter(pk__in=ids).delete()[0]
        logger.warning("dead-letter store over its cap: dropped the %s oldest", removed)
        deleted += removed
        excess -= len(ids)
    return deleted
