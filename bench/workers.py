"""Worker-side measurements: drain throughput, worker CPU per job and single-job latency.

Method (also written to RESULTS.md):

- **Drain throughput.** The worker is started once and warmed up; every queue's consumer is
  paused (``cancel_consumer``). N jobs of one variant are submitted while nobody consumes them
  (Terminus: the real bulk path ``submit_many``, 1,000 per call; Celery: ``apply_async`` over one
  producer), then the variant's consumer is switched on (``add_consumer``). Throughput =
  (N - 1) / (last ``task_postrun`` timestamp - first one): the drain rate once the pipeline runs,
  without the up-to-1 s the worker's event loop takes to notice a consumer that was switched on.
  Completion is verified by counting: the postrun counter must be exactly N for every variant,
  and for django-celery-results N ``SUCCESS`` rows, for Terminus N ``succeeded`` Job rows (each
  with its attempt and finish time: the record of its one succeeded attempt), before a run counts.
- **Worker CPU per job.** user + system CPU of the worker's main process, its pool children and
  reaped children (psutil), before and after the drain, divided by N; also split into the main
  process and the pool children.
- **Database work per job.** ``pg_stat_database`` deltas over the drain for the bench database:
  transactions (read-only ones included: xacts/job) and new sessions (connections opened), read
  10.5 s after the drain, since PostgreSQL 15 reports an idle backend's last transactions only
  then; and the CPU of the PostgreSQL backends serving the bench database (sampled every 0.2 s
  from /proc, so a backend that exits between samples loses at most 0.2 s of its CPU).
- **Latency.** One job at a time, nothing else queued, the variants taking turns job by job
  (paired samples: each variant sees the same moments of a shared machine): submit (for Terminus
  the real ``tasks.submit.outbox.submit``: record, commit, publish, mark dispatched), then wait for its
  ``task_postrun`` entry (BLPOP); latency = the worker's postrun ``time.time()`` minus
  ``time.time()`` just before the submit call; 10 ms pause between jobs. The submit call alone is
  reported too.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import env
from .common import DONE_COUNTER, DONE_LIST, VARIANTS, percentile

SUBMIT_BATCH = 1000
#: PostgreSQL 15 flushes an idle backend's pending statistics within 10 s (PGSTAT_IDLE_INTERVAL);
#: a drain's last transactions would otherwise be counted in the next drain's window.
STATS_FLUSH_WAIT = 10.5


@dataclass
class DrainRun:
    variant: str
    jobs: int
    seconds: float  # first to last completion
    jobs_per_s: float
    wakeup_ms: float  # add_consumer -> first completion (not in the rate)
    enqueue_seconds: float
    enqueue_jobs_per_s: float
    cpu_ms_per_job: float  # whole worker
    main_cpu_ms_per_job: float
    child_cpu_ms_per_job: float
    db_cpu_ms_per_job: float | None  # PostgreSQL backends of the bench database
    commits_per_job: float
    sessions_opened: int
    rows_verified: int


@dataclass
class LatencyRun:
    variant: str
    samples: list[float] = field(default_factory=list)  # ms, submit -> postrun
    submit_ms: list[float] = field(default_factory=list)  # ms, the submit call alone

    def summary(self) -> dict[str, float]:
        return {
            "p50_ms": percentile(self.samples, 50),
            "p99_ms": percentile(self.samples, 99),
            "mean_ms": statistics.fmean(self.samples),
            "submit_p50_ms": percentile(self.submit_ms, 50),
            "n": len(self.samples),
        }


# ---------------------------------------------------------------------------------------------
# Submitting
# ---------------------------------------------------------------------------------------------
def _task(variant: str) -> Any:
    from project.celery import app

    return app.tasks[VARIANTS[variant][0]]


def submit_plain(variant: str, n: int) -> None:
    """Publish n messages over one producer connection (as dispatch_many does for tracked jobs)."""
    from project.celery import app

    task, queue = _task(variant), VARIANTS[variant][1]
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            task.apply_async(kwargs={}, queue=queue, producer=producer)


def submit_tracked(n: int) -> None:
    """The real bulk path: tasks.submit.outbox.submit_many, 1,000 jobs per call (TERMINUS_MAX_BULK)."""
    from tasks.submit.outbox import submit_many

    left = n
    while left:
        size = min(SUBMIT_BATCH, left)
        submit_many([{"type": "bench.noop", "payload": {}} for _ in range(size)])
        left -= size


def submit(variant: str, n: int) -> None:
    if variant == "terminus":
        submit_tracked(n)
    else:
        submit_plain(variant, n)


# ---------------------------------------------------------------------------------------------
# Verifying
# ---------------------------------------------------------------------------------------------
def db_stats() -> tuple[int, int]:
    """(committed + rolled back transactions, sessions) of the bench database so far.

    Read through the ``postgres`` database, so the reads are not counted in the bench's figures.
    """
    import psycopg

    with psycopg.connect(f"{env.PG_URL}/postgres", autocommit=True) as conn:
        xacts, sessions = conn.execute(
            "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database WHERE datname = %s", [env.DB_NAME]
        ).fetchone()
    return int(xacts), int(sessions)


def terminal_rows(variant: str) -> int:
    """Rows that prove the variant's jobs finished (the counter for bare Celery)."""
    from django_celery_results.models import TaskResult

    from results.models import Job, Status

    if variant == "terminus":
        # A job succeeds once, and its row is the record of that attempt (no attempt rows for it)
        return Job.objects.filter(status=Status.SUCCEEDED, attempts__gte=1, finished_at__isnull=False).count()
    if variant.startswith("dcr"):
        return TaskResult.objects.filter(status="SUCCESS", task_name=VARIANTS[variant][0]).count()
    return int(env.redis().get(DONE_COUNTER) or 0)


def reset_counters() -> None:
    env.redis().delete(DONE_COUNTER, DONE_LIST)


def queue_length(queue: str) -> int:
    """Messages waiting in every priority list of the queue (Terminus publishes at priority 3)."""
    redis = env.redis()
    return sum(int(redis.llen(key)) for key in redis.scan_iter(f"{queue}*"))


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
def drain(
    worker: env.Worker, variant: str, n: int, *, settle: float = STATS_FLUSH_WAIT, records: bool = True
) -> DrainRun:
    """Fill the variant's queue with n jobs, then let the warm worker drain it (see module doc).

    ``records=False``: the worker writes no record (the no-record-writes breakdown); the postrun
    counter alone proves completion.
    """
    from django.db import connection

    from project.celery import app

    queue = VARIANTS[variant][1]
    env.truncate()
    reset_counters()
    started = time.perf_counter()
    submit(variant, n)
    enqueue_seconds = time.perf_counter() - started
    if (queued := queue_length(queue)) != n:
        raise RuntimeError(f"{variant}: {queued} messages queued for {n} jobs")
    connection.close()  # the runner's session ends here, which flushes its statistics
    time.sleep(min(settle, 1.0))
    xacts_before, sessions_before = db_stats()
    main_before, children_before = worker.cpu_seconds()
    backends = env.BackendCpu().start()
    t0 = time.time()
    worker.consume(app, queue)
    client = env.redis()
    deadline = time.monotonic() + 120 + n / 20
    while int(client.get(DONE_COUNTER) or 0) < n:
        if time.monotonic() > deadline or not worker.alive():
            backends.stop()
            raise RuntimeError(
                f"{variant}: {client.get(DONE_COUNTER)} of {n} jobs done before the deadline\n{worker.log_tail()}"
            )
        time.sleep(0.02)
    main_after, children_after = worker.cpu_seconds()
    db_cpu = backends.stop()
    worker.pause(app, queue)
    finished = sorted(float(entry.split()[1]) for entry in client.lrange(DONE_LIST, 0, -1))
    seconds = finished[-1] - finished[0]
    time.sleep(settle)  # the workers' idle backends report their last transactions (STATS_FLUSH_WAIT)
    xacts_after, sessions_after = db_stats()
    counted = int(client.get(DONE_COUNTER) or 0)
    verified = terminal_rows(variant) if records else counted
    connection.close()
    if counted != n or verified != n:
        raise RuntimeError(f"{variant}: counter {counted}, terminal rows {verified}, expected {n}")
    main_ms = (main_after - main_before) * 1000 / n
    child_ms = (children_after - children_before) * 1000 / n
    return DrainRun(
        variant=variant,
        jobs=n,
        seconds=seconds,
        jobs_per_s=(n - 1) / seconds,
        wakeup_ms=(finished[0] - t0) * 1000,
        enqueue_seconds=enqueue_seconds,
        enqueue_jobs_per_s=n / enqueue_seconds,
        cpu_ms_per_job=main_ms + child_ms,
        main_cpu_ms_per_job=main_ms,
        child_cpu_ms_per_job=child_ms,
        db_cpu_ms_per_job=None if db_cpu is None else db_cpu * 1000 / n,
        commits_per_job=(xacts_after - xacts_before) / n,
        sessions_opened=sessions_after - sessions_before,
        rows_verified=verified,
    )


def latency(
    workers_by_variant: dict[str, tuple[env.Worker, str, Any]], n: int, *, gap: float = 0.01
) -> dict[str, LatencyRun]:
    """n sequential jobs per variant, the variants taking turns job by job (see module doc).

    ``workers_by_variant`` maps a variant's name to (its worker, its base variant, a context
    manager factory applying its runner-side experiments). Taking turns per job gives paired
    samples: every variant sees the same moments of a shared machine.
    """
    from project.celery import app
    from tasks.submit.outbox import submit as submit_job

    env.truncate()
    reset_counters()
    client = env.redis()
    names = list(workers_by_variant)
    runs = {name: LatencyRun(variant=name) for name in names}
    for worker, base, _ in workers_by_variant.values():
        worker.consume(app, VARIANTS[base][1])

    def one(name: str) -> tuple[str, float, float]:
        worker, base, active = workers_by_variant[name]
        with active():
            t0 = time.time()
            if base == "terminus":
                task_id = str(submit_job("bench.noop", {}).pk)
            else:
                task_id = _task(base).apply_async(kwargs={}, queue=VARIANTS[base][1]).id
            submitted = time.time()
        popped = client.blpop([DONE_LIST], timeout=30)
        if popped is None:
            raise RuntimeError(f"{name}: job {task_id} not done within 30 s\n{worker.log_tail()}")
        done_id, done_at = popped[1].decode().split()
        if done_id != task_id:
            raise RuntimeError(f"{name}: expected {task_id} to finish, got {done_id}")
        return task_id, (float(done_at) - t0) * 1000, (submitted - t0) * 1000

    try:
        # One untimed job each first: a worker's event loop notices a new consumer only at its
        # next wake-up (up to ~1 s), which is not the job's latency.
        for name in names:
            one(name)
        for i in range(n):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                _, total_ms, submit_ms = one(name)
                runs[name].samples.append(total_ms)
                runs[name].submit_ms.append(submit_ms)
                time.sleep(gap)
    finally:
        for worker, base, _ in workers_by_variant.values():
            worker.pause(app, VARIANTS[base][1])
    expected = {base: 0 for _, base, _ in workers_by_variant.values()}
    for name, (_, base, _) in workers_by_variant.items():
        if "no-record-writes" not in name:  # that breakdown writes no record by design
            expected[base] += n + 1
    for base, count in expected.items():
        if base != "bare" and terminal_rows(base) != count:
            raise RuntimeError(f"{base}: {terminal_rows(base)} terminal rows after {count} latency jobs")
    return runs


def as_dict(run: DrainRun) -> dict[str, Any]:
    return asdict(run)
