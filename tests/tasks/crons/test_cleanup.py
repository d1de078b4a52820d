"""Retention: exactly the expired rows go, in bounded batches, and an interrupted run loses nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection, transaction
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
from tasks.crons.cleanup import run_cleanup
from tasks.submit.outbox import _new_job

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
        "keys_retired": 0,
        "retired_keys": 0,
        "worker_nodes": 0,
    }
    assert set(Job.objects.values_list("pk", flat=True)) == {row.pk for row in kept}
    assert not JobAttempt.objects.filter(job_id__in=[row.pk for row in expired]).exists()
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {"fresh-result"}
    assert list(DeadLetter.objects.values_list("status", flat=True)) == [DeadLetterStatus.OPEN]
    assert list(CronRun.objects.values_list("status", flat=True)) == [CronRunStatus.FAILED]
    assert MetricsRollup.objects.count() == 1
    # Batches of at most 2 jobs: 5 succeeded jobs take three DELETEs, never one big one
    assert report["batches"] == 3 + 1 + 1 + 1 + 1 + 1  # jobs 2+2+1, 2, 1; task results, cron runs, rollups
    table = Job._meta.db_table
    marker = " ".join(("DELETE FROM", f'"{table}"', "WHERE"))  # the statements that delete jobs
    if connection.vendor == "postgresql":
        # One statement per batch: it picks (LIMIT 2), cascades, nulls and deletes; a full batch is
        # followed by one more statement that finds nothing (the failed sweep's second one).
        deletes = [q["sql"] for q in queries.captured_queries if marker in q["sql"]]
        assert all(sql.startswith("WITH doomed") and "LIMIT 2 FOR UPDATE" in sql for sql in deletes)
        assert len(deletes) == 3 + 2 + 1
    else:
        deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith(marker)]
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


def _state() -> dict[str, list]:
    """Every row a job's deletion touches, as plain values (jobs, attempts, dead letters, task results)."""
    return {
        "jobs": sorted((str(pk), str(of or "")) for pk, of in Job.objects.values_list("pk", "retry_of_id")),
        "attempts": sorted((str(job), number) for job, number in JobAttempt.objects.values_list("job_id", "number")),
        "dead_letters": sorted(
            (key, status, str(job or ""), str(replay or ""))
            for key, status, job, replay in DeadLetter.objects.values_list(
                "message_key", "status", "job_id", "replay_job_id"
            )
        ),
        "task_results": sorted(TaskResult.objects.values_list("task_id", flat=True)),
    }


@pytest.fixture
def tangle(settings):
    """Expired and kept jobs that point at each other, tied on finished_at and cut in batches of 3."""
    settings.TERMINUS_DEAD_LETTER_MAX_AGE_DAYS = 90

    def link(rerun: Job, original: Job) -> Job:
        Job.objects.filter(pk=rerun.pk).update(retry_of=original)
        return rerun

    # Succeeded, oldest first: [s1, s2 (a rerun of s1: same batch), tie], [tie x3], [tie x3], [s9 (rerun of s1)]
    s1, s2 = job(Status.SUCCEEDED, finished_days_ago=12), job(Status.SUCCEEDED, finished_days_ago=11.5)
    tie = [job(Status.SUCCEEDED, finished_days_ago=10) for _ in range(7)]  # batches split a tie: keyset on pk
    s9 = job(Status.SUCCEEDED, finished_days_ago=9)
    link(s2, s1)
    link(s9, s1)
    # Failed: [a, b (rerun of a), c], [d, e, f], [g (rerun of c)]; d's dead letter was replayed as e
    days = {"a": 50, "b": 49, "c": 48, "d": 47, "e": 46, "f": 45.5, "g": 44}
    failed = {name: job(Status.FAILED, finished_days_ago=ago) for name, ago in days.items()}
    link(failed["b"], failed["a"])
    link(failed["g"], failed["c"])
    cancelled = link(job(Status.CANCELLED, finished_days_ago=8), failed["d"])  # another sweep's job
    expired = [s1, s2, *tie, s9, *failed.values(), cancelled]
    kept = [
        job(Status.SUCCEEDED, finished_days_ago=7),  # exactly at the cutoff: not before it
        job(Status.SUCCEEDED, finished_days_ago=6.9),
        job(Status.SUCCEEDED, finished_days_ago=10, terminal_hook=HookState.PENDING),  # its hook still owed
        # Open jobs are never expired, however old (a finished_at on them is stale, not a verdict).
        job(Status.QUEUED, finished_days_ago=None, created_at=NOW - timedelta(days=400)),
        job(Status.RUNNING, finished_days_ago=300),
        job(Status.RETRYING, finished_days_ago=300),
        # Kept reruns of expired jobs lose their retry_of (SET_NULL)
        link(job(Status.QUEUED, finished_days_ago=None), failed["f"]),
        link(job(Status.SUCCEEDED, finished_days_ago=1), tie[0]),
    ]
    # Dead letters (SET_NULL on job and on replay_job): closed ones lose their links, an open one keeps its job.
    open_letter = job(Status.FAILED, finished_days_ago=45)
    fresh_replay = job(Status.SUCCEEDED, finished_days_ago=1)
    kept += [open_letter, fresh_replay]
    DeadLetter.objects.create(message_key="open", job=open_letter, reason="retries_exhausted")
    for key, status, dead, replay in (
        ("replayed-both-expired", "replayed", failed["d"], failed["e"]),  # one row, two links, one batch
        ("replayed-fresh", "replayed", failed["g"], fresh_replay),
        ("resolved", "resolved", tie[1], None),
    ):
        DeadLetter.objects.create(message_key=key, status=status, job=dead, replay_job=replay, reason="lost")
    for row in (tie[2], kept[1], cancelled):
        TaskResult.objects.create(task_id=str(row.pk), status="SUCCESS")
    JobAttempt.objects.create(job=tie[3], number=2, outcome="failed")
    JobAttempt.objects.create(job=kept[0], number=2, outcome="failed")
    return expired, kept


def test_cleanup_deletes_only_expired_jobs_and_treats_related_rows_as_the_orm_delete_would(tangle):
    expired, kept = tangle
    # What the ORM's own delete of exactly the expired jobs leaves behind (rolled back afterwards).
    with transaction.atomic():
        Job.objects.filter(pk__in=[row.pk for row in expired]).delete()
        TaskResult.objects.filter(task_id__in=[str(row.pk) for row in expired]).delete()
        expected = _state()
        transaction.set_rollback(True)
    assert len(expected["jobs"]) == len(kept)
    with CaptureQueriesContext(connection) as queries:
        report = run_cleanup(now=NOW, batch=3)
    assert _state() == expected
    assert set(Job.objects.values_list("pk", flat=True)) == {row.pk for row in kept}
    assert report["complete"] is True
    jobs = {kind: count for kind, count in report["deleted"].items() if kind.startswith("jobs_")}
    assert jobs == {"jobs_succeeded": 10, "jobs_failed": 7, "jobs_cancelled": 1}
    assert report["batches"] == 4 + 3 + 1  # batches of at most 3
    set_based = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("WITH doomed")]
    assert bool(set_based) == (connection.vendor == "postgresql")  # SQLite: the ORM's delete
    # The retention lines hold: a second run finds nothing
    again = run_cleanup(now=NOW, batch=3)
    assert sum(again["deleted"].values()) == 0 and _state() == expected


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: PostgreSQL only")
def test_cleanup_skips_a_job_another_transaction_holds_instead_of_waiting(history):
    import psycopg

    expired, kept = history
    held = expired[0]
    db = connection.settings_dict
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db["PASSWORD"]}
    with psycopg.connect(dbname=db["NAME"], **{k: v for k, v in params.items() if v}) as other:
        other.execute("SELECT 1 FROM results_job WHERE id = %s FOR UPDATE", [held.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")  # waiting would fail the test, not hang it
        try:
            report = run_cleanup(now=NOW, batch=2)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        other.rollback()
    assert report["deleted"]["jobs_succeeded"] == 4
    assert set(Job.objects.values_list("pk", flat=True)) == {row.pk for row in kept} | {held.pk}
    assert JobAttempt.objects.filter(job=held).exists()
    # The next run takes it
    assert run_cleanup(now=NOW, batch=2)["deleted"]["jobs_succeeded"] == 1
    assert set(Job.objects.values_list("pk", flat=True)) == {row.pk for row in kept}


def test_stopped_worker_nodes_go_after_their_retention_and_running_ones_stay():
    from results.models import WorkerNode

    old = WorkerNode.register(hostname="celery@old", pid=1)
    recent = WorkerNode.register(hostname="celery@recent", pid=2)
    running = WorkerNode.register(hostname="celery@running", pid=3)
    WorkerNode.objects.filter(pk=old.pk).update(stopped_at=NOW - timedelta(days=15))
    WorkerNode.objects.filter(pk=recent.pk).update(stopped_at=NOW - timedelta(days=1))
    report = run_cleanup(now=NOW)
    assert report["deleted"]["worker_nodes"] == 1
    assert set(WorkerNode.objects.values_list("pk", flat=True)) == {recent.pk, running.pk}
