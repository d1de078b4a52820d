"""Retention: exactly the expired rows go, in bounded batches, and an interrupted run loses nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_results.models import TaskResult

from results.models import (
    CronRun,
    CronRunStatus,
    DeadLetter,
    DeadLetterStatus,
    HookState,
    Job,
    JobAttempt,
    MetricsRollup,
    Status,
)
from tasks.cleanup import run_cleanup
from tasks.submit import _new_job

pytestmark = pytest.mark.django_db(transaction=True)

NOW = timezone.now()


def job(status: str, *, finished_days_ago: float | None, **fields) -> Job:
    created = NOW - timedelta(days=(finished_days_ago or 0) + 1)
    row = _new_job(
        "diagnostics.sleep", {"seconds": 0}, owner=None, tenant=None, queue=None, countdown=None,
        correlation_id=None, now=created,
    )  # fmt: skip
    row.status = status
    row.finished_at = None if finished_days_ago is None else NOW - timedelta(days=finished_days_ago)
    for name, value in fields.items():
        setattr(row, name, value)
    row.save(force_insert=True)
    JobAttempt.objects.create(job=row, number=1, outcome="succeeded" if status == Status.SUCCEEDED else "failed")
    return row


@pytest.fixture
def history(settings):
    """Rows on both sides of every retention line (defaults: 7 / 30 / 7 days, results 7, runs 14)."""
    settings.TERMINUS_DEAD_LETTER_MAX_AGE_DAYS = 90
    expired = [
        *(job(Status.SUCCEEDED, finished_days_ago=8) for _ in range(5)),
        job(Status.FAILED, finished_days_ago=31),
        job(Status.FAILED, finished_days_ago=45),
        job(Status.CANCELLED, finished_days_ago=7.5),
    ]
    kept = [
        job(Status.SUCCEEDED, finished_days_ago=6),
        job(Status.FAILED, finished_days_ago=20),
        job(Status.QUEUED, finished_days_ago=None, created_at=NOW - timedelta(days=100)),  # open: never deleted
        job(Status.CANCELLED, finished_days_ago=40, terminal_hook=HookState.PENDING),  # its hook still owed
    ]
    waiting = job(Status.FAILED, finished_days_ago=40)  # its dead letter is still open: a human needs it
    kept.append(waiting)
    DeadLetter.objects.create(message_key=str(waiting.pk), job=waiting, reason="retries_exhausted")
    resolved = DeadLetter.objects.create(message_key="old-resolved", reason="undecodable", status="resolved")
    DeadLetter.objects.filter(pk=resolved.pk).update(created_at=NOW - timedelta(days=91))
    TaskResult.objects.create(task_id="old-result", status="SUCCESS")
    TaskResult.objects.filter(task_id="old-result").update(date_done=NOW - timedelta(days=8))
    TaskResult.objects.create(task_id="fresh-result", status="SUCCESS")
    TaskResult.objects.create(task_id=str(expired[0].pk), status="FAILURE")  # fresh, but of a deleted job
    for cron, days, status in (
        ("reaper", 15, CronRunStatus.SUCCEEDED),
        ("health", 15, CronRunStatus.SKIPPED),
        ("rollup", 13, CronRunStatus.FAILED),
    ):
        run = CronRun.objects.create(cron=cron, tick=NOW - timedelta(days=days), status=status)
        CronRun.objects.filter(pk=run.pk).update(started_at=NOW - timedelta(days=days))
    MetricsRollup.objects.create(
        hour=NOW - timedelta(days=401), job_type="x", status="succeeded", count=1, failure_rate=0
    )
    MetricsRollup.objects.create(
        hour=NOW - timedelta(days=1), job_type="x", status="succeeded", count=1, failure_rate=0
    )
    return expired, kept


def test_cleanup_deletes_exactly_the_expired_rows_in_bounded_batches(history):
    expired, kept = history
    with CaptureQueriesContext(connection) as queries:
        report = run_cleanup(now=NOW, batch=2)
    assert report["complete"] is True
    assert report["deleted"] == {
        "jobs_succeeded": 5,
        "jobs_failed": 2,
        "jobs_cancelled": 1,
        "task_results": 1,
        "group_results": 0,
        "dead_letters": 1,
        "cron_runs": 2,
        "alerts": 0,
        "rollups": 1,
    }
    assert set(Job.objects.values_list("pk", flat=True)) == {row.pk for row in kept}
    assert not JobAttempt.objects.filter(job_id__in=[row.pk for row in expired]).exists()
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {"fresh-result"}
    assert list(DeadLetter.objects.values_list("status", flat=True)) == [DeadLetterStatus.OPEN]
    assert list(CronRun.objects.values_list("status", flat=True)) == [CronRunStatus.FAILED]
    assert MetricsRollup.objects.count() == 1
    # Batches of at most 2 jobs: 5 succeeded jobs take three DELETEs, never one big one
    table = Job._meta.db_table
    prefix = " ".join(("DELETE FROM", f'"{table}"', "WHERE"))  # the statements that delete jobs
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith(prefix)]
    assert len(deletes) == 3 + 1 + 1  # succeeded 2+2+1, failed 2, cancelled 1
    uuid = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")
    assert sorted(len(uuid.findall(sql)) for sql in deletes) == [1, 1, 2, 2, 2]


def test_an_interrupted_cleanup_loses_nothing_and_a_second_run_deletes_nothing_twice(history):
    expired, kept = history
    # A run out of time stops between batches and says so; nothing is half-deleted
    stopped = run_cleanup(now=NOW, batch=2, max_seconds=0)
    assert stopped["complete"] is False
    assert Job.objects.count() == len(expired) + len(kept)
    # The next run finishes the job; one more finds nothing left
    assert run_cleanup(now=NOW, batch=2)["complete"] is True
    again = run_cleanup(now=NOW, batch=2)
    assert again["complete"] is True and sum(again["deleted"].values()) == 0
    assert Job.objects.count() == len(kept)
