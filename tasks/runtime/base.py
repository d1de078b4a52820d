"""TrackedTask: the Celery task base class that writes every transition of a job's record.

Each hook is a short call into the record's state machine (results.models.Job); none holds
business logic. Hooks run in the pool child, except on_failure for a hard time limit, which
Celery calls in the worker's main process after it has killed the child.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sentry_sdk
from celery.contrib.django.task import DjangoTask
from celery.exceptions import Ignore, Reject, Retry
from celery.signals import task_failure, task_revoked
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.utils import timezone

from project.logging import bind_job
from project.sentry import TRACKED_TAG
from results.models import DeadLetterReason, Job, Status
from tasks.failure.dead_letters import dead_letter_job, reason_for
from tasks.runtime.direct_calls import JobResult, is_recorded, refuse_unrecorded, submit_direct_call
from tasks.runtime.durable import durable
from tasks.runtime.errors import AttemptSuperseded, JobCancelled, describe_error
from tasks.runtime.hooks import run_terminal_hook
from tasks.runtime.node import current_node
from tasks.runtime.stale import refused_as_stale

if TYPE_CHECKING:
    from billiard.einfo import ExceptionInfo
    from celery.result import AsyncResult

    from tasks.runtime.retry import RetryPolicy

logger = logging.getLogger(__name__)


class TrackedTask(DjangoTask):
    """A job type's task: claims the record, runs once per claim, records the outcome."""

    abstract = True
    # The Job row is the record clients read; writing the outcome again to the result backend
    # would double the database writes on the hot path for nothing.
    ignore_result = True
    store_errors_even_if_ignored = False
    job_retry_policy: RetryPolicy | None = None

    # -- the running job's view ----------------------------------------------------------------
    @property
    def job_id(self) -> str:
        return str(self.request.id)

    @property
    def attempt(self) -> int:
        return int(getattr(self.request, "terminus_attempt", 0))

    def heartbeat(self, progress: float | None = None, message: str | None = None) -> None:
        """Prove this attempt is alive (and report progress); stops the job if it was cancelled, or
        if a later attempt took it over (this worker was presumed dead), without touching the record."""
        attempt = self.attempt or None
        try:
            alive = Job(id=self.request.id).heartbeat(attempt=attempt, progress=progress, message=message)
        except (OperationalError, InterfaceError):
            logger.warning("heartbeat of job %s not recorded (database unavailable)", self.request.id)
            connection.close()
            return
        if alive:
            return
        if refused_as_stale(self.job_id, attempt=self.attempt, type_name=self.name, write="heartbeat"):
            raise AttemptSuperseded(f"job {self.request.id}: attempt {attempt} was superseded")
        raise JobCancelled(f"job {self.request.id} is no longer running")

    def _fence(self, task_id: str) -> dict[str, Any]:
        """What this process's writes about ``task_id`` are fenced by (results.models.jobs.fence): the
        attempt it claimed, in the pool child; its worker incarnation, in the main process (a hard time
        limit, or a job cancelled on a broker connection loss), which never claimed the attempt."""
        # (request_stack is None on a task object no app has bound: the request is then unknown)
        request = self.request_stack.top if self.request_stack is not None else None
        attempt = int(getattr(request, "terminus_attempt", 0) or 0) if getattr(request, "id", None) == task_id else 0
        if attempt:
            return {"attempt": attempt}
        return {"node": current_node()}

    # -- publishing ------------------------------------------------------------------------------
    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult | JobResult:
        """A caller's ``.delay()`` / ``.apply_async()`` is a submission (tasks.runtime.direct_calls).

        Celery's own retry (this job's id, from inside its attempt) and a message of a job already
        recorded are published as they are; publish_recorded() is the outbox's path, with no check.
        """
        if task_id is None:
            return submit_direct_call(self, args, kwargs, options)
        if task_id != self.request.id and not is_recorded(task_id):
            refuse_unrecorded(self, task_id)
        return super().apply_async(args, kwargs, task_id=task_id, **options)

    def publish_recorded(self, *, task_id: str, kwargs: dict[str, Any], **options: Any) -> AsyncResult:
        """Publish the message of job ``task_id``, recorded by the caller (tasks.submit.outbox.publish)."""
        return super().apply_async(kwargs=kwargs, task_id=task_id, **options)

    # -- Celery hooks --------------------------------------------------------------------------
    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        """Claim the record; a terminal or cancelled job (e.g. a redelivered message) does not run."""
        job = Job(id=task_id)  # id=, not pk=: pk= would also draw a default uuid4 for id, on every job
        try:
            claim = durable(
                lambda: job.mark_started(worker=self.request.hostname or "", node=current_node()),
                what=f"the start of {task_id}",
            )
        except (OperationalError, InterfaceError) as exc:
            raise self._give_back(task_id, "its start", exc) from exc
        if claim is None:
            logger.warning("job %s not run: it is terminal, cancelled or unknown", task_id)
            raise Ignore()
        self.request.terminus_attempt = claim.attempt
        bind_job(attempt=claim.attempt, correlation_id=claim.correlation_id)
        if settings.SENTRY_DSN:
            sentry_sdk.set_tag(TRACKED_TAG, "1")  # its failures reach Sentry through the dead letter
        if claim.lost_deliveries >= settings.TERMINUS_MAX_LOST_DELIVERIES:
            won = job.mark_failed(
                attempt=claim.attempt,
                error_type="worker_lost",
                error_message=(
                    f"the worker died {claim.lost_deliveries} times while running this job "
                    "(killed, out of memory or crashed); not delivering it again"
                ),
            )
            logger.error("job %s failed: its worker was lost %s times", task_id, claim.lost_deliveries)
            if won:
                dead_letter_job(task_id, reason=DeadLetterReason.WORKER_LOST)
                self._run_terminal_hook(task_id)
            raise Ignore()

    def retry(self, *args: Any, countdown: float | None = None, eta: Any = None, **options: Any) -> Retry:
        """Celery's retry, with the countdown taken from this job type's policy.

        A wait longer than TERMINUS_BROKER_DELAY_MAX is held in the database, not in the broker (a
        Redis visibility timeout or RabbitMQ consumer timeout never has to cover it): the retry is
        recorded, unpublished, and the repair pass publishes it when it is due.

        Celery turns a retry it cannot publish (the broker is down) into Reject(requeue=False), a
        final failure. A broker outage is not the job's failure: the retry is recorded the same way,
        and the repair pass publishes it once the broker is back.
        """
        if countdown is None and eta is None and self.job_retry_policy is not None:
            countdown = self.job_retry_policy.countdown(self.request.retries)
        retries_left = self.max_retries is None or self.request.retries < self.max_retries
        wait = countdown if eta is None else (eta - timezone.now()).total_seconds()
        if retries_left and not self.request.is_eager and (wait or 0) > settings.TERMINUS_BROKER_DELAY_MAX:
            self._hold_unpublished_retry(options.get("exc"), countdown=countdown, eta=eta, why="held in the database")
            raise Ignore()
        try:
            return super().retry(*args, countdown=countdown, eta=eta, **options)
        except Reject as refused:
            if refused.requeue or self.request.is_eager:
                raise
            why = f"not published: {refused.reason}"
            self._hold_unpublished_retry(options.get("exc"), countdown=countdown, eta=eta, why=why)
            raise Ignore() from refused

    def _hold_unpublished_retry(self, exc: Any, *, countdown: float | None, eta: Any, why: str) -> None:
        """Record the retry with its due time and no message in the broker: the repair pass publishes it."""
        task_id = self.job_id
        next_retry_at = eta or timezone.now() + timedelta(seconds=countdown or 0)
        error = describe_error(exc) if isinstance(exc, BaseException) else ("Retry", str(exc))
        logger.warning(
            "job %s: retry %s due at %s, %s; the repair pass publishes it",
            task_id,
            self.request.retries + 1,
            next_retry_at.isoformat(),
            why,
        )
        self._record_retry(task_id, error, next_retry_at, published=False)

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: ExceptionInfo) -> None:
        """Record the transient failure and when the next attempt is due."""
        # einfo is None when Celery's main process cancels the job on a broker connection loss.
        when = getattr(getattr(einfo, "exception", None), "when", None)
        if isinstance(when, int | float):
            next_retry_at = timezone.now() + timedelta(seconds=when)
        else:
            next_retry_at = when or timezone.now()
        # Cancelled by the main process on a broker connection loss (einfo None): no retry message was
        # published, and the unacked one comes back only after the broker's redelivery delay (Redis:
        # the visibility timeout). Recorded unpublished, the repair pass publishes it once the broker is back.
        self._record_retry(task_id, describe_error(exc), next_retry_at, published=einfo is not None)

    def _record_retry(self, task_id: str, error: tuple[str, str], next_retry_at: Any, *, published: bool) -> None:
        """The retrying transition of this process's attempt (fenced); a refused one is a stale write."""
        fence = self._fence(task_id)
        won = durable(
            lambda: Job(id=task_id).mark_retrying(
                error_type=error[0], error_message=error[1], next_retry_at=next_retry_at, published=published, **fence
            ),
            what=f"the retry of {task_id}",
        )
        if not won:
            refused_as_stale(task_id, attempt=fence.get("attempt", 0), type_name=self.name, write="retry")

    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        """Record the result; a job cancelled meanwhile keeps its cancelled state."""
        tries = 0
        attempt = self._fence(task_id).get("attempt")

        def write() -> bool:
            nonlocal tries
            tries += 1
            return Job(id=task_id).mark_succeeded(result=retval, attempt=attempt)

        try:
            won = durable(write, what=f"the result of {task_id}")
        except (DatabaseError, ValueError, TypeError) as exc:
            if isinstance(exc, OperationalError | InterfaceError):  # the database is away: not the result's fault
                raise self._give_back(task_id, "its result", exc) from exc
            self._fail_unstorable(task_id, exc)
            return
        if won or (tries > 1 and self._own_success_landed(task_id)):
            self._run_terminal_hook(task_id)
        elif not refused_as_stale(task_id, attempt=attempt or 0, type_name=self.name, write="success"):
            logger.warning("job %s finished but was no longer running; result discarded", task_id)

    def _give_back(self, task_id: str, what: str, exc: BaseException) -> Reject:
        """The record could not be written for TERMINUS_DB_RETRY_SECONDS: the message must not be acked
        as done. Rejected with requeue, it is delivered again, and its next claim (once the database is
        back) records this attempt as lost and runs the job again: at least once, never lost."""
        logger.error(
            "job %s: %s could not be recorded (database unavailable for %ss: %s); its message goes back to "
            "the queue and the job runs again once the database is back",
            task_id,
            what,
            settings.TERMINUS_DB_RETRY_SECONDS,
            exc,
        )
        connection.close()
        return Reject(f"{what} could not be recorded: {exc}", requeue=True)

    def _own_success_landed(self, task_id: str) -> bool:
        """After a retried write: did the first try commit before its connection broke? The retry then
        finds the job succeeded at this attempt, which only this attempt's success can write (fence).
        That is not a late finish of a job that ended without us (whose result is discarded), and its
        hook is due."""
        return Job.objects.filter(pk=task_id, status=Status.SUCCEEDED, attempts=self.attempt).exists()

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: ExceptionInfo) -> None:
        """Fail the record for good: retries exhausted, non-retryable error or a time limit."""
        error_type, error_message = describe_error(exc)
        traceback = str(einfo.traceback) if einfo is not None else ""
        fence = self._fence(task_id)
        try:
            won = durable(
                lambda: Job(id=task_id).mark_failed(
                    error_type=error_type, error_message=error_message, traceback=traceback, **fence
                ),
                what=f"the failure of {task_id}",
            )
        except (OperationalError, InterfaceError) as exc:
            if "attempt" not in fence:  # the main process (a hard time limit): the repair pass ends it
                raise
            raise self._give_back(task_id, "its failure", exc) from exc
        if not won:
            refused_as_stale(task_id, attempt=fence.get("attempt", 0), type_name=self.name, write="failure")
        if won:
            dead_letter_job(task_id, reason=reason_for(error_type, retryable=self._retryable(exc)))
            if self.request.id == task_id:  # in the pool child; the main process (hard limit) leaves it to the reaper
                self._run_terminal_hook(task_id)

    def _fail_unstorable(self, task_id: str, exc: BaseException) -> None:
        """The result could not be written even once made storable: fail the job saying why, never leave it open."""
        logger.error("job %s: its result could not be stored (%s); failing it", task_id, exc)
        message = f"the job finished but its result could not be stored: {type(exc).__name__}: {exc}"
        fence = self._fence(task_id)
        won = durable(
            lambda: Job(id=task_id).mark_failed(error_type="ResultNotStorable", error_message=message, **fence),
            what=f"the failure of {task_id}",
        )
        if won:
            dead_letter_job(task_id, reason=DeadLetterReason.NON_RETRYABLE)
            self._run_terminal_hook(task_id)

    def _run_terminal_hook(self, task_id: str) -> None:
        """The job type's on_terminal hook, right after this worker's terminal transition.

        It never changes the job's state; if it raises, or this process dies first, the reaper runs
        it again (tasks.runtime.hooks).
        """
        try:
            run_terminal_hook(task_id, type_name=self.name)
        except Exception:  # the record is already terminal; the reaper retries the hook
            logger.warning("on_terminal hook of job %s not run here; the reaper will", task_id, exc_info=True)

    def _retryable(self, exc: BaseException) -> bool:
        policy = self.job_retry_policy
        if policy is None:
            return False
        return isinstance(exc, policy.retry_on) and not isinstance(exc, policy.never_retry)


@task_revoked.connect
def _record_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, expired: bool = False, **_: Any
) -> None:
    """A revoke from outside the API (celery control revoke, an expired message) still ends the job."""
    if not isinstance(sender, TrackedTask) or request is None:
        return
    if expired:
        reason = "expired before a worker could run it"
    elif terminated:
        reason = "revoked and terminated by an operator"
    else:
        reason = "revoked by an operator"
    Job(pk=request.id).mark_cancelled(reason=reason)


@task_failure.connect
def _record_rejected(sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any) -> None:
    """A job that rejects its own message (Reject(requeue=False)) fails for good and is dead-lettered."""
    if not isinstance(sender, TrackedTask) or not isinstance(exception, Reject) or exception.requeue:
        return
    fence = sender._fence(str(task_id))
    if Job(id=task_id).mark_failed(error_type="Rejected", error_message=str(exception.reason or "rejected"), **fence):
        dead_letter_job(task_id, reason=DeadLetterReason.REJECTED)
