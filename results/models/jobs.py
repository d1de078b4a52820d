"""The job record: the one place every path writes to, and the state machine that guards it.

The record knows neither Celery nor HTTP. Every state change is a conditional
``UPDATE … WHERE status = <an allowed source>`` (Job._move; the hot claim and success have a
single-statement PostgreSQL form in results.fastpath): the return value says whether this caller
won, so two workers, a redelivered message, the reaper and the API can never move a record
backwards or out of a terminal state.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from results import fastpath
from results.models.tenants import Tenant
from results.querysets import JobQuerySet
from results.storable import storable_json, storable_text, storable_traceback


class Status(models.TextChoices):
    # Recorded; its message is published (dispatched_at set) or waiting to be.
    QUEUED = "queued"
    # A worker claimed it and is executing an attempt.
    RUNNING = "running"
    # An attempt failed with a transient error; the next one is due at next_retry_at.
    RETRYING = "retrying"
    # Terminal: the job function returned; ``result`` holds its value.
    SUCCEEDED = "succeeded"
    # Terminal: retries exhausted, a non-retryable error, a time limit or a lost worker.
    FAILED = "failed"
    # Terminal: cancelled by a user or operator before it finished.
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})

#: The whole state machine: target status -> the statuses it may be entered from.
#: RUNNING -> RUNNING is a redelivery after the previous worker died mid-attempt.
ALLOWED_SOURCES: dict[str, frozenset[str]] = {
    Status.RUNNING: frozenset({Status.QUEUED, Status.RETRYING, Status.RUNNING}),
    Status.RETRYING: frozenset({Status.RUNNING}),
    Status.SUCCEEDED: frozenset({Status.RUNNING}),
    Status.FAILED: frozenset({Status.QUEUED, Status.RUNNING, Status.RETRYING}),
    Status.CANCELLED: frozenset({Status.QUEUED, Status.RUNNING, Status.RETRYING}),
}


class AttemptOutcome(models.TextChoices):
    RUNNING = "running"  # still executing (described by the job row, see JobAttempt)
    SUCCEEDED = "succeeded"  # described by the job row, see JobAttempt
    RETRIED = "retried"  # failed with a transient error; another attempt follows
    FAILED = "failed"
    LOST = "lost"  # its worker died; the message was delivered again
    CANCELLED = "cancelled"


class HookState(models.TextChoices):
    # The job type declares no on_terminal hook.
    NONE = "", "none"
    # The hook is to run (again) once the job is terminal: by the worker, else by the reaper.
    PENDING = "pending"
    # The hook ran to completion once (it may have run more than once before: hooks are idempotent).
    DONE = "done"
    # The hook failed TERMINUS_HOOK_MAX_ATTEMPTS times; a human was alerted.
    GAVE_UP = "gave_up"


@dataclass(frozen=True)
class Claim:
    """What a worker learns when it claims a job for an attempt."""

    attempt: int
    lost_deliveries: int
    max_retries: int
    correlation_id: str = ""


#: The error message of an attempt whose worker died (the claim of its redelivered message records it).
LOST_MESSAGE = "the worker running this attempt died; the message was delivered again"
#: What Job._move reads, and locks, before a transition: the attempt that may end, and the claim.
_LOCKED_FIELDS = ("status", "attempts", "worker", "started_at", "lost_deliveries", "max_retries", "correlation_id")


def _sources(target: str) -> list[str]:
    return sorted(ALLOWED_SOURCES[target])


def fence(*, attempt: int | None = None, node: uuid.UUID | str | None = None) -> Q | None:
    """The guard of a worker's write about its own attempt: the job is still running *that* attempt.

    ``attempt`` is what the pool child claimed; ``node`` serves the worker's main process, which
    does not know the attempt (a hard time limit) but knows its own incarnation. A write from an
    attempt that is no longer the current one (its worker was paused or partitioned, and the job was
    given to another) then changes nothing: a stale worker can never overwrite a newer attempt.
    """
    if attempt is None and node is None:
        return None
    guard = Q(status=Status.RUNNING)
    if attempt is not None:
        guard &= Q(attempts=attempt)
    if node is not None:
        guard &= Q(worker_node=node)
    return guard


class Job(models.Model):
    """One submitted job, from the moment it is submitted until (and after) it is terminal."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, help_text="Also the Celery task id.")
    type = models.CharField(max_length=100, help_text="Registered job type, e.g. webhook.deliver.")
    queue = models.CharField(max_length=100, default="default", help_text="Broker queue it was routed to.")
    payload = models.JSONField(default=dict, help_text="Validated input, as submitted.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts started so far (deliveries included).")
    max_retries = models.PositiveIntegerField(default=0, help_text="Retries allowed after the first attempt.")
    lost_deliveries = models.PositiveIntegerField(
        default=0, help_text="Attempts whose worker died mid-run (bounded by TERMINUS_MAX_LOST_DELIVERIES)."
    )
    progress = models.FloatField(null=True, blank=True, help_text="Fraction done, 0.0 to 1.0, reported by long jobs.")
    progress_message = models.CharField(max_length=200, blank=True, default="")
    result = models.JSONField(null=True, blank=True, help_text="Return value of a succeeded job.")
    error_type = models.CharField(max_length=200, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    worker = models.CharField(max_length=255, blank=True, default="", help_text="Hostname of the last worker.")
    # No foreign key: the claim stays one cheap UPDATE, and node rows may be cleaned up before jobs.
    worker_node = models.UUIDField(
        null=True, blank=True, help_text="The worker incarnation (WorkerNode) that claimed the current attempt."
    )
    correlation_id = models.CharField(max_length=100, blank=True, default="")  # indexed: job_correlation
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    # Indexed by job_tenant_created (tenant first): a second index would cost every write for nothing.
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs", db_index=False
    )
    # NULL, not "": the unique constraints below apply only to jobs that carry a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    retry_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reruns",
        help_text="The failed or cancelled job this one runs again.",
        db_index=False,  # job_retry_of: only the few reruns carry one
    )
    version = models.PositiveIntegerField(default=1, help_text="Bumped on every write; the API's ETag.")
    time_limit = models.PositiveIntegerField(default=300, help_text="Hard time limit of one attempt, seconds.")

    created_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="Empty: the broker refused the message; the reaper publishes it."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    terminal_by = models.DateTimeField(help_text="Deadline by which the job must be terminal.")
    dead_lettered_at = models.DateTimeField(
        null=True, blank=True, help_text="When its final failure was published to the dead_letter queue."
    )
    updated_at = models.DateTimeField(default=timezone.now)
    # The job type's on_terminal hook, run at least once after every terminal transition (tasks.runtime.hooks).
    terminal_hook = models.CharField(
        max_length=16,
        choices=HookState.choices,
        blank=True,
        default=HookState.NONE,
        help_text="State of the job type's on_terminal hook: empty when it declares none.",
    )
    terminal_hook_attempts = models.PositiveIntegerField(default=0, help_text="Runs of the on_terminal hook so far.")
    terminal_hook_tried_at = models.DateTimeField(
        null=True, blank=True, help_text="When the on_terminal hook last started (a lease against a second run)."
    )
    terminal_hook_error = models.TextField(blank=True, default="", help_text="The on_terminal hook's last error.")

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            # API list and admin filter by status, newest first; the reaper scans non-terminal ones.
            models.Index(fields=["status", "-created_at"], name="job_status_created"),
            # Tenant-scoped API list.
            models.Index(fields=["tenant", "-created_at"], name="job_tenant_created"),
            # Per-type failure rates and the admin's type filter.
            models.Index(fields=["type", "status"], name="job_type_status"),
            # Deadline check: "jobs past terminal_by" must stay 0 and be cheap to count.
            models.Index(
                fields=["terminal_by"],
                name="job_open_deadline",
                condition=Q(status__in=["queued", "running", "retrying"]),
            ),
            models.Index(fields=["-created_at"], name="job_created"),
            # Exact-match search (admin, ops); no LIKE twin, which db_index=True would add.
            models.Index(fields=["correlation_id"], name="job_correlation"),
            # Reruns of a job (and clearing them when it is deleted): most jobs have none.
            models.Index(fields=["retry_of"], name="job_retry_of", condition=Q(retry_of__isnull=False)),
            # Admin/ops search by idempotency key across tenants.
            models.Index(
                fields=["idempotency_key"], name="job_idempotency_key", condition=Q(idempotency_key__isnull=False)
            ),
            # Cleanup (terminal jobs past their retention, per status) and the hourly rollup (jobs
            # finished in an hour): both are range scans on finished_at within one status.
            models.Index(fields=["status", "finished_at"], name="job_status_finished"),
            # Reaper: queued jobs whose message never reached the broker.
            models.Index(
                fields=["created_at"],
                name="job_undispatched",
                condition=Q(status="queued", dispatched_at__isnull=True),
            ),
            # Reaper: retrying jobs whose next attempt is overdue.
            models.Index(fields=["next_retry_at"], name="job_retry_due", condition=Q(status="retrying")),
            # Reaper: failed jobs whose dead letter was never published (broker down at the time).
            models.Index(
                fields=["finished_at"],
                name="job_dead_letter_pending",
                condition=Q(status="failed", dead_lettered_at__isnull=True),
            ),
            # Reaper: terminal jobs whose on_terminal hook has not completed yet.
            models.Index(
                fields=["finished_at"],
                name="job_hook_pending",
                condition=Q(terminal_hook="pending", status__in=["succeeded", "failed", "cancelled"]),
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=Status.values), name="job_status_valid"),
            models.CheckConstraint(
                condition=Q(progress__isnull=True) | Q(progress__gte=0, progress__lte=1), name="job_progress_range"
            ),
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                name="job_idempotency_per_tenant",
                condition=Q(idempotency_key__isnull=False, tenant__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                name="job_idempotency_per_owner",
                condition=Q(idempotency_key__isnull=False, tenant__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id} ({self.status})"

    # -- derived -------------------------------------------------------------------------------
    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def etag(self) -> str:
        return f'"{self.pk}-{self.version}"'

    # -- transitions ---------------------------------------------------------------------------
    def mark_dispatched(self) -> bool:
        """Record that the message reached the broker (first publish wins; re-dispatch keeps it)."""
        return Job.mark_many_dispatched([self.pk]) == 1

    @staticmethod
    def mark_many_dispatched(job_ids: list[Any]) -> int:
        """``mark_dispatched`` for a published batch: one statement per 1,000 jobs.

        Not conditional on status: a fast worker may have claimed a job already.
        """
        marked = 0
        for start in range(0, len(job_ids), 1000):
            chunk = job_ids[start : start + 1000]
            if connection.vendor == "postgresql":
                marked += fastpath.mark_dispatched(Job._meta.db_table, chunk)
            else:
                marked += Job.objects.filter(pk__in=chunk, dispatched_at__isnull=True).update(
                    dispatched_at=Now(), version=F("version") + 1, updated_at=Now()
                )
        return marked

    @staticmethod
    def mark_many_undispatched(job_ids: list[Any]) -> int:
        """Take back the published mark of queued jobs whose message the broker refused."""
        return sum(
            Job.objects.filter(pk__in=job_ids[start : start + 1000], status=Status.QUEUED).update(
                dispatched_at=None, version=F("version") + 1, updated_at=Now()
            )
            for start in range(0, len(job_ids), 1000)
        )

    def mark_started(self, *, worker: str, node: uuid.UUID | str | None = None) -> Claim | None:
        """Claim the job for one attempt (by worker ``node``, an incarnation: WorkerNode); None means it
        is terminal (or cancelled) and must not run.

        A claim from RUNNING is a redelivery: the previous worker died, or gave the message back
        because it could not record the outcome (the database was down). It counts as a lost delivery,
        the attempt it interrupted is recorded as ``lost``, and that attempt's later writes, should
        its worker still be alive, are refused (fence): it stops at its next heartbeat.
        """
        if connection.vendor == "postgresql":
            # The common case, queued or retrying: one statement.
            row = fastpath.claim(self._meta.db_table, self.pk, worker, node)
            if row:
                return Claim(*row)
        old = self._move(
            Status.RUNNING,
            (AttemptOutcome.LOST, "worker_lost", LOST_MESSAGE),  # recorded if it was running: a redelivery
            worker=worker,
            worker_node=node,
            attempts=F("attempts") + 1,
            lost_deliveries=Case(
                When(status=Status.RUNNING, then=F("lost_deliveries") + 1),
                default=F("lost_deliveries"),
                output_field=models.PositiveIntegerField(),
            ),
            started_at=Now(),
            heartbeat_at=Now(),
            next_retry_at=None,
            dispatched_at=Coalesce("dispatched_at", Now()),  # a claimed job's message was published
        )
        if old is None:
            return None
        return Claim(
            attempt=old["attempts"] + 1,
            lost_deliveries=old["lost_deliveries"] + int(old["status"] == Status.RUNNING),
            max_retries=old["max_retries"],
            correlation_id=old["correlation_id"],
        )

    def heartbeat(
        self, *, attempt: int | None = None, progress: float | None = None, message: str | None = None
    ) -> bool:
        """Prove the running attempt is alive; False means the job no longer runs this attempt
        (cancelled, or given to another attempt: ``superseded`` tells which)."""
        fields: dict[str, Any] = {"heartbeat_at": Now(), "updated_at": Now(), "version": F("version") + 1}
        if progress is not None:
            fields["progress"] = min(1.0, max(0.0, float(progress)))
        if message is not None:
            fields["progress_message"] = storable_text(message, 200)
        return Job.objects.filter(fence(attempt=attempt) or Q(status=Status.RUNNING), pk=self.pk).update(**fields) == 1

    def superseded(self, *, attempt: int) -> bool:
        """Whether a later attempt than ``attempt`` has started: a write from ``attempt`` is stale.

        Asked only after a fenced write changed nothing, to tell a stale worker (logged and counted)
        from a job that merely ended meanwhile (cancelled, failed by its deadline).
        """
        return Job.objects.filter(pk=self.pk, attempts__gt=attempt).exists()

    def mark_retrying(
        self,
        *,
        error_type: str,
        error_message: str,
        next_retry_at: datetime,
        attempt: int | None = None,
        node: uuid.UUID | str | None = None,
        published: bool = True,
    ) -> bool:
        """Record a transient failure; the attempt is closed and the next one scheduled (fenced by the
        worker's ``attempt`` or ``node``, see fence). ``published=False``: the next attempt's message is
        not in the broker (it was down, or the wait is held here): ``dispatched_at`` is emptied and the
        repair pass publishes it when due."""
        error_type, error_message = storable_text(error_type, 200), storable_text(error_message)
        unpublished: dict[str, Any] = {} if published else {"dispatched_at": None}
        return (
            self._move(
                Status.RETRYING,
                (AttemptOutcome.RETRIED, error_type, error_message),
                guard=fence(attempt=attempt, node=node),
                error_type=error_type,
                error_message=error_message,
                next_retry_at=next_retry_at,
                heartbeat_at=None,
                **unpublished,
            )
            is not None
        )

    def mark_succeeded(self, *, result: Any, attempt: int | None = None) -> bool:
        """Record the result (made storable: results.storable); False if the job no longer runs
        ``attempt`` (any attempt, when None)."""
        result = storable_json(result)
        if connection.vendor == "postgresql":
            return fastpath.succeed(self._meta.db_table, self.pk, result, attempt)
        return (
            self._move(
                Status.SUCCEEDED,
                None,  # the job row records its one succeeded attempt (attempt_history)
                guard=fence(attempt=attempt),
                result=result,
                finished_at=Now(),
                next_retry_at=None,
                progress=Case(
                    When(progress__isnull=False, then=Value(1.0)), default=None, output_field=models.FloatField()
                ),
                error_type="",
                error_message="",
                traceback="",
            )
            is not None
        )

    def mark_failed(
        self,
        *,
        error_type: str,
        error_message: str,
        traceback: str = "",
        attempt: int | None = None,
        node: uuid.UUID | str | None = None,
    ) -> bool:
        """Fail for good, from any open state (reaper, API), or from the attempt a worker runs: the pool
        child's ``attempt``, or the main process's ``node`` after a hard time limit (see fence)."""
        error_type, error_message = storable_text(error_type, 200), storable_text(error_message)
        return (
            self._move(
                Status.FAILED,
                (AttemptOutcome.FAILED, error_type, error_message),
                guard=fence(attempt=attempt, node=node),
                error_type=error_type,
                error_message=error_message,
                traceback=storable_traceback(traceback),
                finished_at=Now(),
                next_retry_at=None,
            )
            is not None
        )

    def mark_cancelled(self, *, reason: str = "cancelled") -> bool:
        reason = storable_text(reason)
        return (
            self._move(
                Status.CANCELLED,
                (AttemptOutcome.CANCELLED, "cancelled", reason),
                finished_at=Now(),
                next_retry_at=None,
                error_type="cancelled",
                error_message=reason,
            )
            is not None
        )

    def mark_lost(self, *, attempt: int, retry: bool, why: str, guard: Q | None = None) -> bool:
        """The verdict on running ``attempt`` whose worker is gone (``why`` says how that is known).

        The attempt is closed as ``lost`` and counted as a lost delivery; the job is then due again
        at once (``retry``: RETRYING, published by the caller) or fails for good as ``lost``. One
        guarded UPDATE on the attempt read (and ``guard``): a redelivery, a late result or a second
        repairer that wrote first wins instead, and this returns False. A late write from the lost
        attempt itself is then refused (fence).
        """
        fields: dict[str, Any] = {"lost_deliveries": F("lost_deliveries") + 1, "error_type": "lost"}
        if retry:
            target = Status.RETRYING
            fields.update(next_retry_at=Now(), heartbeat_at=None, error_message=f"{why}; run again")
        else:
            target = Status.FAILED
            fields.update(finished_at=Now(), next_retry_at=None, error_message=f"{why}; no attempts left")
        guard = fence(attempt=attempt) & (guard or Q())
        return self._move(target, (AttemptOutcome.LOST, "lost", why), guard=guard, **fields) is not None

    def claim_terminal_hook(self, *, lease_before: datetime) -> bool:
        """Take one run of the on_terminal hook; False means it is done, not due, or being run elsewhere.

        A run whose claim is older than ``lease_before`` is presumed dead and may be claimed again.
        """
        return (
            Job.objects.filter(pk=self.pk, status__in=sorted(TERMINAL_STATUSES), terminal_hook=HookState.PENDING)
            .filter(Q(terminal_hook_tried_at__isnull=True) | Q(terminal_hook_tried_at__lt=lease_before))
            .update(terminal_hook_attempts=F("terminal_hook_attempts") + 1, terminal_hook_tried_at=Now())
            == 1
        )

    def finish_terminal_hook(self, *, error: str = "", give_up: bool = False) -> bool:
        """Record a hook run: done, or its error (and whether to stop trying); True if this call changed it."""
        if not error:
            fields: dict[str, Any] = {"terminal_hook": HookState.DONE, "terminal_hook_error": ""}
        else:
            fields = {"terminal_hook_error": storable_text(error), "terminal_hook_tried_at": None}
            if give_up:
                fields["terminal_hook"] = HookState.GAVE_UP
        return Job.objects.filter(pk=self.pk, terminal_hook=HookState.PENDING).update(**fields) == 1

    def _lock_for(self, target: str, guard: Q | None = None) -> dict[str, Any] | None:
        """The row's ``_LOCKED_FIELDS``, locked until the transaction ends, if it may move to ``target``.

        Inside transaction.atomic(): PostgreSQL locks the row (FOR UPDATE); SQLite's transactions
        take the database's write lock at BEGIN (transaction_mode IMMEDIATE).
        """
        rows = Job.objects.select_for_update().filter(pk=self.pk, status__in=_sources(target))
        if guard is not None:
            rows = rows.filter(guard)
        return rows.values(*_LOCKED_FIELDS).first()

    def _move(
        self, target: str, closing: tuple[str, str, str] | None, guard: Q | None = None, **fields: Any
    ) -> dict[str, Any] | None:
        """Move to ``target``: the row as it was before, if this caller won, else None.

        If the job was running, the attempt that ends is recorded as ``closing`` (outcome, error
        type, error message) in the same transaction, unless that is None (a success: see JobAttempt).
        """
        with transaction.atomic():
            old = self._lock_for(target, guard)
            if old is None:
                return None
            updated = Job.objects.filter(pk=self.pk, status=old["status"])
            if guard is not None:
                updated = updated.filter(guard)
            fields.setdefault("updated_at", Now())
            if updated.update(status=target, version=F("version") + 1, **fields) != 1:
                return None
            if old["status"] == Status.RUNNING and closing is not None:
                self._record_attempt(old, *closing)
        return old

    def _record_attempt(self, old: dict[str, Any], outcome: str, error_type: str, error_message: str) -> None:
        """Write the row of the attempt that just ended (the running one lives on the job row).

        An attempt already recorded is left as it is: history never blocks a transition.
        """
        JobAttempt.objects.bulk_create(
            [
                JobAttempt(
                    job_id=self.pk,
                    number=old["attempts"],
                    worker=old["worker"],
                    started_at=old["started_at"] or timezone.now(),
                    finished_at=timezone.now(),
                    outcome=outcome,
                    error_type=error_type[:200],
                    error_message=error_message,
                )
            ],
            ignore_conflicts=True,
        )

    def attempt_history(self) -> list[JobAttempt]:
        """Every attempt, oldest first: the recorded ones, then the one the job row itself
        describes, running or succeeded (neither has a row: see JobAttempt)."""
        history = list(self.attempt_set.all())
        outcome = {Status.RUNNING: AttemptOutcome.RUNNING, Status.SUCCEEDED: AttemptOutcome.SUCCEEDED}.get(self.status)
        # (a job that succeeded before migration 0005 has a stored row for that attempt already)
        if outcome and self.attempts and all(recorded.number != self.attempts for recorded in history):
            history.append(
                JobAttempt(
                    job_id=self.pk,
                    number=self.attempts,
                    worker=self.worker,
                    started_at=self.started_at or self.updated_at,
                    finished_at=self.finished_at if outcome == AttemptOutcome.SUCCEEDED else None,
                    outcome=outcome,
                )
            )
        return history


class JobAttempt(models.Model):
    """One try of a job that ended without succeeding (retried, lost, failed, cancelled), so a
    retried job's history is kept, not overwritten.

    The row is written when the attempt ends (Job._move). The attempt that is running, and the
    one that succeeded (a job succeeds once), are described by the job row itself: its attempts,
    worker, started_at and finished_at. That keeps the common path, claim then success, at one
    UPDATE per transition and no attempt rows at all; Job.attempt_history() gives the full list.
    """

    # Indexed by attempt_number_per_job (job first).
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempt_set", db_index=False)
    number = models.PositiveIntegerField()
    worker = models.CharField(max_length=255, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices, default=AttemptOutcome.RUNNING)
    error_type = models.CharField(max_length=200, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("job", "number")
        constraints = [
            models.UniqueConstraint(fields=["job", "number"], name="attempt_number_per_job"),
            models.CheckConstraint(condition=Q(outcome__in=AttemptOutcome.values), name="attempt_outcome_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.number} {self.outcome}"
