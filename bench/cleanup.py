"""Cleanup rate on a large table of expired jobs, and how long it holds anything.

The table gets N expired jobs (terminal, finished 400-430 days ago; an attempt row for each one
that failed or was cancelled, as the product writes them: PostgreSQL's own
``INSERT … SELECT generate_series``, then ``VACUUM ANALYZE``), plus jobs that must survive:
recent ones of every status and old ones that are still open (a year-old ``running`` job is
stuck, not expired). Then the product's retention function is called directly, in this process,
until it reports nothing more to delete (or the expired jobs are gone):

- **Call site.** ``tasks.crons.cleanup``: the function registered as the ``terminus.cron.cleanup`` cron
  (``@cron`` returns it unchanged, so it is called without the cron's lock and run record), or
  ``--cleanup-entry module:function``. While that module does not exist the bench runs a
  *reference* batched delete of its own (``reference_cleanup``, 5,000 jobs per transaction through
  the ORM's collector, as django-celery-results' batched cleanup does) and reports the target as
  pending: the reference figure only shows what such a design reaches here.
- **Rate.** jobs deleted (counted before and after) / summed wall time of the calls; the
  function is called again while a call leaves expired jobs behind (a run that stops at its time
  budget) and stops when a call deletes nothing more. Attempt rows deleted with the jobs are
  reported but not counted in the rate.
- **Locks.** A sampler reads ``pg_stat_activity`` every 10 ms and keeps the longest-running
  statement and the longest open transaction of the bench database while cleanup runs; a probe
  updates a surviving job every 20 ms on its own connection and records how long each update
  took (a cleanup that locks what it should not shows up there).
- **Correctness.** Every surviving job must still exist afterwards.
"""

from __future__ import annotations

import importlib
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from . import env, seed

TERMINAL = ("succeeded", "failed", "cancelled")
CRON_TASK = "terminus.cron.cleanup"
REFERENCE_BATCH = 5000


def find_entry(spec: str | None) -> tuple[Callable[[], Any] | None, str]:
    """The product's cleanup function and how it was found, or (None, why not)."""
    if spec:
        module_name, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module_name), attr), spec
    try:
        module = importlib.import_module("tasks.crons.cleanup")
    except ModuleNotFoundError as exc:
        if exc.name != "tasks.crons.cleanup":
            return None, f"tasks/crons/cleanup.py could not be imported: {type(exc).__name__}: {exc}"
        return None, "tasks/crons/cleanup.py does not exist yet"
    except Exception as exc:  # noqa: BLE001 - a module being written: report why, measure the reference
        return None, f"tasks/crons/cleanup.py could not be imported: {type(exc).__name__}: {exc}"
    for name in dir(module):
        value = getattr(module, name)
        task = getattr(value, "cron_task", None)
        if callable(value) and getattr(task, "name", None) == CRON_TASK:
            return value, f"tasks.crons.cleanup:{name} (the {CRON_TASK} cron)"
    return None, f"tasks/crons/cleanup.py has no function registered as {CRON_TASK}; pass --cleanup-entry"


def reference_cleanup(cutoff_days: int = 365) -> int:
    """A bounded-batch retention delete (bench only, NOT product code): jobs per call."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from results.models import Job

    cutoff = timezone.now() - timedelta(days=cutoff_days)
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(
                Job.objects.filter(status__in=TERMINAL, created_at__lt=cutoff, finished_at__lt=cutoff)
                .order_by("created_at")
                .values_list("pk", flat=True)[:REFERENCE_BATCH]
            )
            if not ids:
                return deleted
            Job.objects.filter(pk__in=ids).delete()
        deleted += len(ids)


class ActivitySampler:
    """Longest statement and transaction of the bench database, from pg_stat_activity."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.longest_statement_ms = 0.0
        self.longest_statement = ""
        self.longest_xact_ms = 0.0
        self.waiting_samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psycopg

        sql = """
            SELECT extract(epoch FROM now() - query_start) * 1000, extract(epoch FROM now() - xact_start) * 1000,
                   wait_event_type, left(query, 120)
            FROM pg_stat_activity
            WHERE datname = %s AND pid <> pg_backend_pid() AND state <> 'idle' AND query NOT LIKE '%%bench-probe%%'
        """
        with psycopg.connect(f"{env.PG_URL}/postgres", autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                for statement_ms, xact_ms, wait, query in conn.execute(sql, [env.DB_NAME]):
                    if statement_ms is not None and statement_ms > self.longest_statement_ms:
                        self.longest_statement_ms, self.longest_statement = float(statement_ms), query
                    if xact_ms is not None:
                        self.longest_xact_ms = max(self.longest_xact_ms, float(xact_ms))
                    if wait == "Lock":
                        self.waiting_samples += 1

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


class WriteProbe:
    """Updates one surviving job every 20 ms on its own connection; records each update's time."""

    def __init__(self, job_id: Any, interval: float = 0.02):
        self.job_id = job_id
        self.interval = interval
        self.times_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psycopg

        with psycopg.connect(env.DATABASE_URL, autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                started = time.perf_counter()
                conn.execute("UPDATE results_job SET updated_at = now() /* bench-probe */ WHERE id = %s", [self.job_id])
                self.times_ms.append((time.perf_counter() - started) * 1000)

    def __enter__(self) -> WriteProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def _counts() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            /* bench-probe: the bench's own count, not part of the cleanup */
            SELECT count(*) FILTER (WHERE status = ANY(%s) AND finished_at < now() - interval '365 days'),
                   count(*) FILTER (WHERE NOT (status = ANY(%s) AND finished_at < now() - interval '365 days')),
                   (SELECT count(*) FROM results_jobattempt)
            FROM results_job
            """,
            [list(TERMINAL), list(TERMINAL)],
        )
        expired, survivors, attempts = cursor.fetchone()
    return {"expired": expired, "survivors": survivors, "attempts": attempts}


def run(args: Any) -> dict[str, Any]:
    from django.db import connection

    from results.models import Job

    entry, found = find_entry(args.cleanup_entry)
    keep_recent, keep_open = (2_000, 200) if args.quick else (20_000, 1_000)
    print(f"  seeding {args.rows:,} expired jobs (+{keep_recent:,} recent, {keep_open:,} old open)", flush=True)
    info: dict[str, Any] = {"seed": seed.expired_jobs(args.rows, keep_recent=keep_recent, keep_open_old=keep_open)}
    before = _counts()
    survivor_ids = set(Job.objects.exclude(status__in=TERMINAL, finished_at__lt=_cutoff()).values_list("pk", flat=True))
    probe_id = next(iter(survivor_ids))
    product = entry is not None
    call = entry if product else reference_cleanup
    info.update(
        product=product,
        entry=found if product else f"PENDING: {found}; measured the bench's reference_cleanup instead",
        expired_before=before["expired"],
        attempts_before=before["attempts"],
    )
    print(f"  cleanup: {info['entry']}", flush=True)
    connection.close()
    calls: list[dict[str, Any]] = []
    with ActivitySampler() as sampler, WriteProbe(probe_id) as probe:
        started = time.perf_counter()
        deadline = started + (600 if args.quick else 3600)
        remaining = before["expired"]
        while time.perf_counter() < deadline:
            call_started = time.perf_counter()
            returned = call()
            calls.append({"seconds": round(time.perf_counter() - call_started, 3), "returned": repr(returned)[:300]})
            left = _counts()["expired"]  # between calls only: not part of any call's time
            if left == 0 or left >= remaining:
                break
            remaining = left
        seconds = sum(c["seconds"] for c in calls)
    after = _counts()
    missing = len(survivor_ids - set(Job.objects.filter(pk__in=survivor_ids).values_list("pk", flat=True)))
    deleted = before["expired"] - after["expired"]
    info.update(
        jobs_deleted=deleted,
        attempts_deleted=before["attempts"] - after["attempts"],
        expired_left=after["expired"],
        survivors_missing=missing,
        seconds=round(seconds, 2),
        rows_per_s=deleted / seconds if seconds else None,
        calls=len(calls),
        call_seconds=[c["seconds"] for c in calls[:20]],
        returned=calls[0]["returned"] if calls else "",
        longest_statement_ms=sampler.longest_statement_ms,
        longest_statement=sampler.longest_statement,
        longest_xact_ms=sampler.longest_xact_ms,
        lock_wait_samples=sampler.waiting_samples,
        probe_updates=len(probe.times_ms),
        probe_p50_ms=statistics.median(probe.times_ms) if probe.times_ms else None,
        probe_max_ms=max(probe.times_ms) if probe.times_ms else None,
    )
    if missing:
        info["status"] = f"WRONG: {missing} jobs that must survive were deleted"
    print(
        f"  cleanup: {deleted:,} jobs in {seconds:.1f} s = {info['rows_per_s'] or 0:,.0f} rows/s; longest statement "
        f"{sampler.longest_statement_ms:.0f} ms, transaction {sampler.longest_xact_ms:.0f} ms; probe max "
        f"{info['probe_max_ms'] or 0:.1f} ms; survivors missing {missing}",
        flush=True,
    )
    return info


def _cutoff() -> Any:
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() - timedelta(days=365)
