"""The repair pass: no job stays non-terminal forever, even when its message or its worker is lost.

The reaper cron (tasks/crons/reaper.py) runs it; it drives each stuck job one step, each decision
one guarded UPDATE (on the status, and on the attempt or version it read), so two repairers, or a
repairer racing a late worker, never both win:

- open past ``terminal_by`` -> failed ``deadline_exceeded``, dead-lettered (index job_open_deadline);
- running on a worker node that is dead (silent for TERMINUS_WORKER_DEAD_AFTER, or stopped) -> the
  attempt is lost: retrying and re-dispatched while attempts remain, else failed ``lost`` and
  dead-lettered (results.models.WorkerNode);
- running with no heartbeat for its hard time limit + TERMINUS_REAPER_GRACE, on a node that is
  alive (or none recorded) -> the attempt is lost the same way, the last resort:
  retrying and re-dispatched while attempts remain, else failed ``lost`` and dead-lettered
  (job_status_created: running jobs are few);
- retrying, its next attempt never published (the broker was down at retry time), due within
  TERMINUS_BROKER_DELAY_MAX -> published, with the rest of its wait as countdown (job_retry_due);
- retrying, ``next_retry_at`` TERMINUS_REAPER_RETRY_AFTER past -> re-dispatched (job_retry_due);
- queued, never published (broker down at submit, or a countdown held in the database until it is
  due within TERMINUS_BROKER_DELAY_MAX) -> dispatched (job_undispatched);
- queued, published, due long ago and never started although its queue consumed a later canary
  (the message is gone) -> re-dispatched (job_open_deadline);
- failed, never dead-lettered (broker down at the time) -> dead letter published
  (job_dead_letter_pending);
- terminal with its on_terminal hook pending -> hook run (job_hook_pending).

Re-dispatching publishes the job again with its own id, so the claim in TrackedTask.before_start
makes a duplicate harmless: a terminal job is not run again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from results.models import TERMINAL_STATUSES, DeadLetterReason, HookState, Job, QueueCanary, Status, WorkerNode
from results.querysets import database_now_minus, database_now_plus
from tasks.failure.dead_letters import dead_letter_job, reason_for
from tasks.runtime.hooks import run_terminal_hook
from tasks.runtime.types import get_job_type, job_types
from tasks.submit.outbox import FIRST, dispatch
from tasks.submit.outbox import publish as publish_job

logger = logging.getLogger(__name__)


class RepairErrors(Exception):
    """Some rows could not be handled this pass (the others were); the run is recorded as failed."""


@dataclass
class Pass:
    """One reaper pass: the errors met so far, and whether the broker has refused a publish."""

    errors: list[str] = field(default_factory=list)
    broker_down: bool = False

    def guard(self, what: str, job_id: Any, fn: Any) -> Any:
        """Handle one row; its exception is collected so the other rows (and steps) still run."""
        try:
            return fn()
        except Exception as exc:
            logger.exception("reaper: %s of job %s failed", what, job_id)
            self.errors.append(f"{what} {job_id}: {type(exc).__name__}: {exc}")
            return None

    def publish(self, what: str, job_id: Any, fn: Any) -> bool:
        """Publish unless the broker already refused this pass (a refused row is retried next tick)."""
        if self.broker_down:
            return False
        if self.guard(what, job_id, fn):
            return True
        self.broker_down = True
        return False

    def dead_letter(self, job_id: Any, reason: str) -> bool:
        """Publish a failed job's dead letter; one left unpublished is published by a later tick."""
        if self.broker_down:
            return False
        if dead_letter_job(job_id, reason=reason):
            return True
        self.broker_down = True
        return False


def repair_pass(this: Pass) -> dict[str, int]:
    """One pass over every way a job can get stuck; the count of each repair (errors collect in ``this``)."""
    return {
        "deadline_exceeded": fail_past_deadline(this),
        **recover_dead_nodes(this),
        **reap_lost_running(this),
        "retries_published": publish_held_retries(this),
        "retries_redispatched": redispatch_overdue_retries(this),
        "undispatched_dispatched": dispatch_undispatched(this),
        "queued_redispatched": redispatch_lost_queued(this),
        "dead_letters_published": publish_missing_dead_letters(this),
        **run_pending_hooks(this),
    }


def _batch() -> int:
    return settings.TERMINUS_REAPER_BATCH


# -- deadline -------------------------------------------------------------------------------------
def fail_past_deadline(this: Pass) -> int:
    """Open jobs past terminal_by fail as deadline_exceeded, with or without a worker to run them."""
    failed = 0
    rows = Job.objects.past_deadline().order_by("terminal_by").values_list("pk", "type", "terminal_by")[: _batch()]
    for pk, type_name, deadline in rows:

        def fail(pk: Any = pk, deadline: datetime = deadline) -> bool:
            return Job(pk=pk).mark_failed(
                error_type="deadline_exceeded",
                error_message=f"not terminal by its deadline ({deadline.isoformat()}): failed by the reaper",
            )

        if this.guard("deadline", pk, fail):
            failed += 1
            logger.error("job %s (%s) failed: deadline %s exceeded", pk, type_name, deadline)
            _after_failure(this, pk, type_name, DeadLetterReason.DEADLINE_EXCEEDED)
    return failed


def _after_failure(this: Pass, pk: Any, type_name: str, reason: str) -> None:
    """What the reaper owes a job it failed: the dead letter (so a human hears of it), then its hook."""
    this.guard("dead letter", pk, lambda: this.dead_letter(pk, reason))
    this.guard("on_terminal hook", pk, lambda: run_terminal_hook(pk, type_name=type_name))


# -- running, but its worker is gone --------------------------------------------------------------
#: Why an attempt is declared lost, by the rule that saw it (the job's error message starts with it).
NODE_DEAD = "its worker node stopped proving it was alive (no node heartbeat for TERMINUS_WORKER_DEAD_AFTER)"
NODE_RESTARTED = "its worker node started again (the attempt died with the earlier incarnation)"
SILENT_PAST_LIMIT = "its worker stopped proving it was alive (no heartbeat past the hard time limit plus grace)"


def lose_attempt(this: Pass, job: Job, *, why: str, guard: Q | None = None) -> str | None:
    """Close the running attempt ``job.attempts`` as lost, then run the job again or fail it for good.

    Attempts remain when the job has not used its retry budget (a lost attempt counts, as Celery's
    task_retry_on_worker_lost counts it) and has been lost fewer than TERMINUS_MAX_LOST_DELIVERIES
    times. Returns "requeued", "failed", or None when another writer won (see Job.mark_lost).
    """
    retry = job.attempts <= job.max_retries and job.lost_deliveries + 1 < settings.TERMINUS_MAX_LOST_DELIVERIES
    if not this.guard("lost", job.pk, lambda: job.mark_lost(attempt=job.attempts, retry=retry, why=why, guard=guard)):
        return None
    if retry:
        # Retrying, due now, ahead of the backlog (its worker died under it, which is not the job's
        # fault); if this publish does not happen the overdue-retry step does it.
        logger.warning("job %s (%s): attempt %s lost (%s); running it again", job.pk, job.type, job.attempts, why)
        this.publish("re-dispatch", job.pk, lambda: publish(job, retries=job.attempts, priority=FIRST))
        return "requeued"
    logger.error("job %s (%s) failed: attempt %s lost (%s), no attempts remain", job.pk, job.type, job.attempts, why)
    _after_failure(this, job.pk, job.type, DeadLetterReason.LOST)
    return "failed"


def _lose_all(this: Pass, jobs: Any, *, why: str, guard_of: Any) -> dict[str, int]:
    outcomes = [lose_attempt(this, job, why=why, guard=guard_of(job)) for job in jobs]
    return {"requeued": outcomes.count("requeued"), "failed": outcomes.count("failed")}


def recover_jobs_of_node(this: Pass, node_ids: Any, *, why: str) -> dict[str, int]:
    """Lose the running attempts claimed by the worker incarnations ``node_ids`` (a list or a query)."""
    jobs = Job.objects.filter(status=Status.RUNNING, worker_node__in=node_ids).order_by("started_at")[: _batch()]
    return _lose_all(this, jobs, why=why, guard_of=lambda job: Q(worker_node=job.worker_node))


def recover_dead_nodes(this: Pass) -> dict[str, int]:
    """Running jobs whose worker node is dead (silent for TERMINUS_WORKER_DEAD_AFTER, or stopped) are lost.

    A silent node is then recorded as stopped: should it come back (it was only paused), its beat
    revives it and the writes of the attempts it lost are refused (results.models.jobs.fence).
    """
    dead = WorkerNode.objects.dead(dead_after=settings.TERMINUS_WORKER_DEAD_AFTER)
    counts = recover_jobs_of_node(this, dead.values("pk"), why=NODE_DEAD)
    for node in dead.filter(stopped_at__isnull=True):
        if node.stop():
            logger.error(
                "worker node %s (pid %s) is dead: not seen since %s", node.hostname, node.pid, node.last_seen_at
            )
    return {"dead_node_requeued": counts["requeued"], "dead_node_failed": counts["failed"]}


def reap_lost_running(this: Pass) -> dict[str, int]:
    """Running jobs with no heartbeat for their hard time limit plus TERMINUS_REAPER_GRACE are lost.

    No live attempt outlives its hard time limit, so such an attempt's worker is gone, or its final
    write never landed: the last resort for a node that is alive but whose job went silent (and for
    jobs claimed with no node recorded). The cutoff is the database's clock (one clock).
    """
    running = Job.objects.filter(status=Status.RUNNING)
    counts = {"requeued": 0, "failed": 0}
    # Few distinct limits (one per job type): one cheap query each.
    for limit in running.order_by().values_list("time_limit", flat=True).distinct():
        silent = Q(heartbeat_at__lt=database_now_minus(limit + settings.TERMINUS_REAPER_GRACE)) | Q(
            heartbeat_at__isnull=True, started_at__lt=database_now_minus(limit + settings.TERMINUS_REAPER_GRACE)
        )
        stale = running.filter(silent, time_limit=limit).order_by("heartbeat_at")[: _batch()]
        found = _lose_all(
            this, stale, why=SILENT_PAST_LIMIT, guard_of=lambda job, silent=silent: silent & Q(version=job.version)
        )
        counts = {key: counts[key] + found[key] for key in counts}
    return {"lost_requeued": counts["requeued"], "lost_failed": counts["failed"]}


# -- retrying, but the retry message is gone ------------------------------------------------------
def publish_held_retries(this: Pass) -> int:
    """Retrying jobs whose next attempt was never published (``dispatched_at`` empty: the broker was
    down at retry time) are published once due within TERMINUS_BROKER_DELAY_MAX, with the rest of
    their wait as countdown. Each publish is taken by one repairer (the version it read)."""
    done = 0
    due = Job.objects.filter(
        status=Status.RETRYING,
        dispatched_at__isnull=True,
        next_retry_at__lte=database_now_plus(settings.TERMINUS_BROKER_DELAY_MAX),
    )
    for job in due.order_by("next_retry_at")[: _batch()]:
        if this.broker_down:
            break
        if not _claim(job, status=Status.RETRYING, dispatched_at__isnull=True, dispatched_at=Now()):
            continue
        countdown = max(0.0, (job.next_retry_at - timezone.now()).total_seconds()) if job.next_retry_at else 0.0
        if not this.publish(
            "retry", job.pk, lambda job=job, c=countdown: publish(job, retries=job.attempts, countdown=c or None)
        ):
            Job.objects.filter(pk=job.pk, status=Status.RETRYING).update(dispatched_at=None)  # the next pass
            break
        done += 1
        logger.info("job %s (%s): retry %s published by the repair pass", job.pk, job.type, job.attempts)
    return done


def redispatch_overdue_retries(this: Pass) -> int:
    """Retrying jobs whose next attempt is TERMINUS_REAPER_RETRY_AFTER overdue are published again.

    On a queue with canaries (tasks/crons/health.py), only once it consumed a canary sent after the retry
    was due (``next_retry_at``, also when the reaper last published it): until then its message may
    just be waiting in a backlog, and a second copy would run alongside it.
    """
    done = 0
    cutoff = database_now_minus(settings.TERMINUS_REAPER_RETRY_AFTER)
    passed = dict(QueueCanary.objects.values_list("queue", "last_consumed_sent_at"))
    for job in Job.objects.filter(status=Status.RETRYING, next_retry_at__lt=cutoff).order_by("next_retry_at")[
        : _batch()
    ]:
        if this.broker_down:
            break  # the rest waits for the next tick
        if job.queue in passed and (passed[job.queue] is None or passed[job.queue] <= job.next_retry_at):
            continue  # its queue has not moved past it yet: a backlog (or no consumer), not a lost message
        if not _claim(job, status=Status.RETRYING, next_retry_at=Now()):
            continue
        if not this.publish("re-dispatch", job.pk, lambda job=job: publish(job, retries=job.attempts)):
            break
        done += 1
        logger.warning("job %s (%s): retry %s was overdue; published again", job.pk, job.type, job.attempts)
    return done


# -- queued, but never published, or published and lost -------------------------------------------
def dispatch_undispatched(this: Pass) -> int:
    """Queued jobs whose message never reached the broker (it was down at submit) are published now;
    so are jobs whose countdown was held in the database (``next_retry_at``), once due within
    TERMINUS_BROKER_DELAY_MAX."""
    done = 0
    cutoff = database_now_minus(settings.TERMINUS_REAPER_UNDISPATCHED_AFTER)
    due_soon = Q(next_retry_at__isnull=True) | Q(
        next_retry_at__lte=database_now_plus(settings.TERMINUS_BROKER_DELAY_MAX)
    )
    pending = Job.objects.filter(due_soon, status=Status.QUEUED, dispatched_at__isnull=True, created_at__lt=cutoff)
    for job in pending.order_by("created_at")[: _batch()]:
        if this.broker_down:
            break
        if not _claim(job, status=Status.QUEUED, dispatched_at__isnull=True):
            continue
        due = due_at(job)
        if due is None:  # a type no longer registered: failed and dead-lettered, nothing to publish
            this.guard("dispatch", job.pk, lambda job=job: publish(job, retries=0))
            continue
        due = job.next_retry_at or due  # a countdown held in the database: its own due time
        # (bounded: this host's clock may run behind the database's, which chose the row)
        countdown = min(max(0.0, (due - timezone.now()).total_seconds()), settings.TERMINUS_BROKER_DELAY_MAX)
        if not this.publish("dispatch", job.pk, lambda job=job, c=countdown: dispatch(job, countdown=c or None)):
            break  # the broker is still down
        done += 1
        logger.info("job %s (%s): published by the reaper (the broker was down at submit)", job.pk, job.type)
    return done


def redispatch_lost_queued(this: Pass) -> int:
    """Queued jobs published long ago that never started, though their queue has moved past them.

    "Moved past" is what the canaries prove (tasks/crons/health.py): the queue consumed a canary published
    after the job was due and after its message was last published (``dispatched_at``, which a
    re-dispatch moves), so in a FIFO queue the job's message is gone (a Redis restart without
    persistence, a purge). A queue in a backlog, or with no consumer at all, has consumed no such
    canary: its jobs are left alone (the deadline still ends them), and so is a message this reaper
    published again that is still waiting behind the backlog.
    """
    done = 0
    now = timezone.now()
    min_age = now - timedelta(seconds=settings.TERMINUS_REAPER_QUEUED_AFTER)
    canaries = QueueCanary.objects.filter(last_consumed_sent_at__isnull=False).values_list(
        "queue", "last_consumed_sent_at"
    )
    budgets = {name: job_type.deadline_budget(0) for name, job_type in job_types().items()}
    if not budgets:
        return 0
    for queue, consumed_sent_at in canaries:
        horizon = min(min_age, consumed_sent_at)
        # due_at = terminal_by - budget(type) (see due_at): one range per type on job_open_deadline.
        due = Q()
        for name, budget in budgets.items():
            due |= Q(type=name, terminal_by__lt=horizon + timedelta(seconds=budget))
        lost = Job.objects.filter(due, status=Status.QUEUED, queue=queue, dispatched_at__lt=horizon)
        for job in lost.order_by("terminal_by")[: _batch()]:
            if this.broker_down:
                return done
            if not _claim(job, status=Status.QUEUED, dispatched_at=Now()):
                continue
            if not this.publish("re-dispatch", job.pk, lambda job=job: dispatch(job)):
                return done  # the broker is down
            done += 1
            logger.warning("job %s (%s): its message was lost from queue %s; published again", job.pk, job.type, queue)
    return done


def due_at(job: Job) -> datetime | None:
    """When the job's message was due to start (submit time plus its countdown), from its deadline.

    ``terminal_by`` is submit time + countdown + the type's deadline budget, so the countdown needs
    no column of its own. None for a type no longer registered.
    """
    job_type = get_job_type(job.type)
    if job_type is None:
        return None
    return job.terminal_by - timedelta(seconds=job_type.deadline_budget(0))


def _claim(job: Job, *, status: str, **changes: Any) -> bool:
    """Take a re-dispatch decision on the version read: True for exactly one reaper."""
    guard = {key: value for key, value in changes.items() if key.endswith("__isnull")}
    fields = {key: value for key, value in changes.items() if not key.endswith("__isnull")}
    return (
        Job.objects.filter(pk=job.pk, status=status, version=job.version, **guard).update(
            version=F("version") + 1, updated_at=Now(), **fields
        )
        == 1
    )


def publish(job: Job, *, retries: int, countdown: float | None = None, priority: int | None = None) -> bool:
    """Publish a job's message again (same id), as its attempt number ``retries + 1``."""
    job_type = get_job_type(job.type)
    if job_type is None:  # a type removed from the code while jobs of it were waiting
        if Job(pk=job.pk).mark_failed(
            error_type="unknown_job_type", error_message=f"job type {job.type!r} is not registered"
        ):
            dead_letter_job(job.pk, reason=DeadLetterReason.NON_RETRYABLE)
        return True
    publish_job(job, retries=retries, countdown=countdown, priority=priority)
    return True


# -- failed, but no human heard of it yet ---------------------------------------------------------
def publish_missing_dead_letters(this: Pass) -> int:
    """Failed jobs whose dead letter never reached the queue (broker down at the time) are published."""
    done = 0
    cutoff = database_now_minus(60)
    rows = (
        Job.objects.filter(status=Status.FAILED, dead_lettered_at__isnull=True, finished_at__lt=cutoff)
        .order_by("finished_at")
        .values_list("pk", "error_type", "attempts")[: _batch()]
    )
    for pk, error_type, attempts in rows:
        reason = reason_for(error_type, retryable=attempts > 1)
        if not this.guard("dead letter", pk, lambda pk=pk, reason=reason: this.dead_letter(pk, reason)):
            break  # the broker is still down
        done += 1
    return done


# -- terminal, but the on_terminal hook has not completed -----------------------------------------
def run_pending_hooks(this: Pass) -> dict[str, int]:
    """Run the on_terminal hooks still pending: after an API cancel, a hook that raised, a crash."""
    ran = failed = 0
    pending = Job.objects.filter(terminal_hook=HookState.PENDING, status__in=sorted(TERMINAL_STATUSES))
    for pk in pending.order_by("finished_at").values_list("pk", flat=True)[: _batch()]:
        outcome = this.guard("on_terminal hook", pk, lambda pk=pk: run_terminal_hook(pk))
        ran += outcome is True
        failed += outcome is False
    return {"hooks_run": ran, "hooks_failed": failed}
