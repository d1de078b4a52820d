"""Retention: delete what is past its keep-by date, in bounded batches, never in one giant statement.

Each batch is one short transaction of at most TERMINUS_CLEANUP_BATCH rows picked through an index
in (finished_at, id) order, so no lock is held for long, an interrupted run loses nothing (the
next one continues where it stopped) and running it twice deletes nothing twice. A run stops
after TERMINUS_CLEANUP_MAX_SECONDS and says so (``complete: false``); the next run continues.

| rows                                   | kept for (days)                         |
|----------------------------------------|-----------------------------------------|
| succeeded / failed / cancelled jobs    | TERMINUS_RETENTION_{SUCCEEDED,FAILED,CANCELLED}_DAYS (7 / 30 / 7) |
| their attempts, their task results     | with the job                            |
| other django-celery-results rows       | TERMINUS_RETENTION_TASK_RESULTS_DAYS (7) |
| replayed / resolved dead letters       | TERMINUS_DEAD_LETTER_MAX_AGE_DAYS (tasks.dead_letter.enforce_caps) |
| cron runs, sent alerts                 | TERMINUS_RETENTION_CRON_RUNS_DAYS (14), TERMINUS_RETENTION_ALERTS_DAYS (30) |
| metrics rollups                        | TERMINUS_RETENTION_ROLLUPS_DAYS (400)   |

A failed job whose dead letter is still open, or whose on_terminal hook has not run yet, is kept
until that is settled: deleting it would take away what a human or the hook still needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Model, Q, QuerySet
from django.utils import timezone
from django_celery_results.models import GroupResult, TaskResult

from results.models import Alert, AlertStatus, CronRun, CronRunStatus, DeadLetterStatus, HookState, Job, MetricsRollup
from results.models import Status as JobStatus

from .crons import cron
from .dead_letter import enforce_caps

logger = logging.getLogger(__name__)


class OutOfTime(Exception):
    """The run used its time budget; what is left is deleted by the next run."""


@cron("cleanup")
def cleanup() -> dict[str, Any]:
    """Delete everything past its retention, in batches; counts per kind of row."""
    return run_cleanup()


def run_cleanup(*, now: datetime | None = None, batch: int | None = None, max_seconds: float | None = None) -> dict:
    """The cleanup itself: ``{"deleted": {kind: count}, "batches": n, "complete": bool}``."""
    now = now or timezone.now()
    sweep = Sweep(
        batch=batch or settings.TERMINUS_CLEANUP_BATCH,
        deadline=time.monotonic() + (settings.TERMINUS_CLEANUP_MAX_SECONDS if max_seconds is None else max_seconds),
    )
    days = timedelta(days=1)
    try:
        for status, setting in (
            (JobStatus.SUCCEEDED, "TERMINUS_RETENTION_SUCCEEDED_DAYS"),
            (JobStatus.FAILED, "TERMINUS_RETENTION_FAILED_DAYS"),
            (JobStatus.CANCELLED, "TERMINUS_RETENTION_CANCELLED_DAYS"),
        ):
            cutoff = now - getattr(settings, setting) * days
            sweep.jobs(f"jobs_{status}", status, cutoff)
        cutoff = now - settings.TERMINUS_RETENTION_TASK_RESULTS_DAYS * days
        sweep.rows("task_results", TaskResult.objects.filter(date_done__lt=cutoff), "date_done")
        sweep.rows("group_results", GroupResult.objects.filter(date_done__lt=cutoff), "date_done")
        sweep.check_time()
        sweep.deleted["dead_letters"] = enforce_caps(batch=sweep.batch)
        cutoff = now - settings.TERMINUS_RETENTION_CRON_RUNS_DAYS * days
        old_runs = CronRun.objects.filter(started_at__lt=cutoff).exclude(status=CronRunStatus.RUNNING)
        sweep.rows("cron_runs", old_runs, "started_at")
        cutoff = now - settings.TERMINUS_RETENTION_ALERTS_DAYS * days
        sweep.rows(
            "alerts", Alert.objects.filter(created_at__lt=cutoff).exclude(status=AlertStatus.PENDING), "created_at"
        )
        cutoff = now - settings.TERMINUS_RETENTION_ROLLUPS_DAYS * days
        sweep.rows("rollups", MetricsRollup.objects.filter(hour__lt=cutoff), "hour")
    except OutOfTime:
        logger.warning("cleanup stopped after its time budget; the next run continues: %s", sweep.deleted)
        return sweep.report(complete=False)
    return sweep.report(complete=True)


class Sweep:
    """Deletes in id-ordered batches (keyset pagination on an indexed column), counting as it goes."""

    def __init__(self, *, batch: int, deadline: float):
        self.batch = batch
        self.deadline = deadline
        self.deleted: dict[str, int] = {}
        self.batches = 0

    def report(self, *, complete: bool) -> dict[str, Any]:
        return {"deleted": self.deleted, "batches": self.batches, "complete": complete}

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime

    def jobs(self, kind: str, status: str, cutoff: datetime) -> None:
        """Terminal jobs of one status finished before ``cutoff`` (index job_status_finished)."""
        expired = (
            Job.objects.filter(status=status, finished_at__lt=cutoff)
            .exclude(dead_letter__status=DeadLetterStatus.OPEN)
            .exclude(terminal_hook=HookState.PENDING)
        )
        self.rows(kind, expired, "finished_at", also=_delete_task_results)

    def rows(
        self, kind: str, queryset: QuerySet, order: str, *, also: Callable[[list[Any]], int] | None = None
    ) -> None:
        """Delete ``queryset`` batch by batch in (``order``, pk) order."""
        self.deleted.setdefault(kind, 0)
        after: tuple[Any, Any] | None = None
        while True:
            self.check_time()
            page = queryset.order_by(order, "pk")
            if after is not None:
                page = page.filter(Q(**{f"{order}__gt": after[0]}) | Q(**{order: after[0], "pk__gt": after[1]}))
            keys = list(page.values_list(order, "pk")[: self.batch])
            if not keys:
                return
            ids = [pk for _, pk in keys]
            model: type[Model] = queryset.model
            deleted = model.objects.filter(pk__in=ids).delete()[1].get(model._meta.label, 0)
            if also is not None:
                also(ids)
            self.deleted[kind] += deleted
            self.batches += 1
            after = keys[-1]
            if len(keys) < self.batch:
                return


def _delete_task_results(job_ids: list[Any]) -> int:
    """django-celery-results rows of deleted jobs (a tracked job stores one only in odd cases)."""
    return TaskResult.objects.filter(task_id__in=[str(pk) for pk in job_ids]).delete()[0]
