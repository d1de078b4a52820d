"""Submitting jobs: validate, record, then publish once the record is committed.

The record is the outbox: it is committed before the message is published, so a worker never
receives an id it cannot find, and a broker outage leaves a ``queued`` record with an empty
``dispatched_at`` that can be dispatched again later. Nothing the client was told about is lost.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict, Unpack, overload

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from pydantic import BaseModel

from results.models import HookState, Job, RetiredKey
from tasks.runtime.direct_calls import install_submitter
from tasks.runtime.types import get_job_type, job_type_for_input
from tasks.submit.validation import (
    IdempotencyKeyRetired,
    PayloadTooLarge,
    SubmissionError,
    schedule_countdown,
    validate_payload,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from results.models import Tenant

logger = logging.getLogger(__name__)


class SubmitOptions(TypedDict, total=False):
    """The keyword options of submit() and submit_or_get() (see submit_or_get)."""

    owner: AbstractBaseUser | None
    tenant: Tenant | None
    idempotency_key: str | None
    queue: str | None
    countdown: int | None
    scheduled_for: datetime | str | None
    correlation_id: str | None
    retry_of: Job | None
    by: AbstractBaseUser | None


@overload
def submit(type_name: BaseModel, /, **options: Unpack[SubmitOptions]) -> Job: ...
@overload
def submit(type_name: str, payload: dict[str, Any] | BaseModel, /, **options: Unpack[SubmitOptions]) -> Job: ...
def submit(type_name: str | BaseModel, payload: dict[str, Any] | BaseModel | None = None, /, **options: Any) -> Job:
    """Record a job and publish it on commit; returns the Job (its id is the Celery task id).

    Typed: ``submit(SleepInput(seconds=3))`` runs the one job type whose input model is
    ``SleepInput`` (``submit("diagnostics.sleep", SleepInput(...))`` names it, for a model that
    several types take); ``submit("diagnostics.sleep", {"seconds": 3})`` takes the JSON object.
    Either way the payload is validated the same (SubmissionError naming the field).

    Options are submit_or_get()'s: owner, tenant, idempotency_key, queue, countdown or scheduled_for,
    correlation_id, retry_of, by (the user submitting through a face: the job type's audience applies).
    """
    return submit_or_get(type_name, payload, **options)[0]  # type: ignore[arg-type]


def job_type_name_of(type_name: Any, payload: Any) -> tuple[Any, Any]:
    """``(type name, payload)`` for submit's two forms: ``(name, payload)``, or an input model alone."""
    if not isinstance(type_name, BaseModel):
        return type_name, payload
    if payload is not None:
        raise TypeError("submit(model) takes the input model alone; submit(type_name, model) names the type")
    job_type = job_type_for_input(type(type_name))
    if job_type is None:
        model = f"{type(type_name).__module__}.{type(type_name).__name__}"
        raise SubmissionError(
            {"type": [f"no single job type takes {model} as its input; name it: submit('<job type>', model)"]}
        )
    return job_type.name, type_name


def submit_or_get(
    type_name: str | BaseModel,
    payload: dict[str, Any] | BaseModel | None = None,
    *,
    owner: AbstractBaseUser | None = None,
    tenant: Tenant | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
    countdown: int | None = None,
    scheduled_for: datetime | str | None = None,
    correlation_id: str | None = None,
    retry_of: Job | None = None,
    by: AbstractBaseUser | None = None,
) -> tuple[Job, bool]:
    """Like submit(); also says whether the job is new (False: the idempotency key matched).

    ``countdown`` (seconds) or ``scheduled_for`` (an aware datetime, or ISO 8601 text) delays the first
    attempt, up to TERMINUS_MAX_SCHEDULE_DAYS; a wait past TERMINUS_BROKER_DELAY_MAX is held in the
    database and published by the repair pass when due.
    """
    type_name, payload = job_type_name_of(type_name, payload)
    now = timezone.now()
    job = _new_job(
        type_name,
        payload,
        owner=owner,
        tenant=tenant,
        queue=queue,
        countdown=countdown,
        scheduled_for=scheduled_for,
        correlation_id=correlation_id,
        now=now,
        idempotency_key=idempotency_key,
        retry_of=retry_of,
        by=by,
    )
    countdown = wait_of(job, now)
    if idempotency_key is not None:
        retired = RetiredKey.find(idempotency_key, owner_id=job.owner_id, tenant_id=job.tenant_id)
        if retired is not None:
            raise IdempotencyKeyRetired(
                key=idempotency_key,
                job_id=retired.job_id,
                job_status=retired.job_status,
                reserved_until=retired.reserved_until,
            )
    if idempotency_key is None and not transaction.get_connection().in_atomic_block:
        # One INSERT in autocommit: committed when it returns, so the message can follow at once
        # (saves the BEGIN and COMMIT round trips of an atomic block around a single statement).
        job.save(force_insert=True)
        dispatch(job, countdown=countdown)
        return job, True
    with transaction.atomic():
        if idempotency_key is not None:
            try:
                with transaction.atomic():
                    job.save(force_insert=True)
            except IntegrityError:
                existing = _find_by_idempotency_key(idempotency_key, owner=job.owner, tenant=tenant)
                if existing is None:
                    raise
                return existing, False
        else:
            job.save(force_insert=True)
        transaction.on_commit(lambda: dispatch(job, countdown=countdown))
    return job, True


def submit_many(
    items: list[dict[str, Any]],
    *,
    owner: AbstractBaseUser | None = None,
    tenant: Tenant | None = None,
    correlation_id: str | None = None,
    by: AbstractBaseUser | None = None,
) -> list[Job]:
    """Record many jobs in one transaction and publish them on commit over one connection.

    All or nothing: every item is validated first, and one bad item refuses the batch with its
    index in the error keys (``jobs.3.payload.seconds``): PayloadTooLarge (413) when an item's
    payload is over the size limit, as for a single submission, else SubmissionError (400). Items
    take the keys of a single submission except ``idempotency_key`` (a batch is retried as a
    whole by its caller).
    """
    if not isinstance(items, list) or not items:
        raise SubmissionError({"jobs": ["must be a non-empty list of jobs"]})
    if len(items) > settings.TERMINUS_MAX_BULK:
        raise SubmissionError({"jobs": [f"at most {settings.TERMINUS_MAX_BULK} jobs per request; got {len(items)}"]})
    errors: dict[str, list[str]] = {}
    too_large = False
    jobs: list[Job] = []
    countdowns: dict[Any, int | None] = {}
    now = timezone.now()
    for index, item in enumerate(items):
        try:
            _check_bulk_item(item)
            job = _new_job(
                item.get("type"),
                item.get("payload"),
                owner=owner,
                tenant=tenant,
                queue=item.get("queue"),
                countdown=item.get("countdown"),
                scheduled_for=item.get("scheduled_for"),
                correlation_id=correlation_id,
                now=now,
                by=by,
            )
        except SubmissionError as exc:
            too_large = too_large or isinstance(exc, PayloadTooLarge)
            for field, messages in exc.errors.items():
                errors[f"jobs.{index}" + (f".{field}" if field else "")] = list(messages)
            continue
        jobs.append(job)
        countdowns[job.pk] = wait_of(job, now)
    if errors:
        raise (PayloadTooLarge if too_large else SubmissionError)(errors)
    with transaction.atomic():
        Job.objects.bulk_create(jobs, batch_size=500)
        transaction.on_commit(lambda: dispatch_many(jobs, countdowns=countdowns))
    return jobs


#: What a bulk item may hold: a single submission's fields but the idempotency key.
BULK_ITEM_FIELDS = ("type", "payload", "queue", "countdown", "scheduled_for")


def _check_bulk_item(item: Any) -> None:
    if not isinstance(item, dict):
        raise SubmissionError({"": ["must be an object with type and payload"]})
    unknown = sorted(set(item) - set(BULK_ITEM_FIELDS))
    if unknown:
        allowed = ", ".join(BULK_ITEM_FIELDS)
        raise SubmissionError({name: [f"unknown field; allowed: {allowed}"] for name in unknown})


def _new_job(
    type_name: Any,
    payload: Any,
    *,
    owner: Any,
    tenant: Tenant | None,
    queue: Any,
    countdown: Any,
    correlation_id: str | None,
    now: Any,
    scheduled_for: Any = None,
    idempotency_key: str | None = None,
    retry_of: Job | None = None,
    by: Any = None,
) -> Job:
    """A validated, unsaved Job: the one place a submission becomes a record."""
    if not isinstance(type_name, str):
        raise SubmissionError({"type": ["must be a string naming a job type"]})
    clean = validate_payload(type_name, payload, by=by)
    job_type = get_job_type(type_name)
    assert job_type is not None  # validate_payload checked it
    errors: dict[str, list[str]] = {}
    queue = queue or job_type.queue
    if not isinstance(queue, str) or queue not in settings.TERMINUS_QUEUES:
        errors["queue"] = [f"unknown queue {queue!r}; known queues: {', '.join(settings.TERMINUS_QUEUES)}"]
    countdown = schedule_countdown(countdown, scheduled_for, now=now, errors=errors)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        errors["idempotency_key"] = ["must be 1 to 255 characters"]
    if errors:
        raise SubmissionError(errors)
    held = _held(countdown)
    return Job(
        id=uuid.uuid4(),
        type=type_name,
        queue=queue,
        payload=clean,
        max_retries=job_type.retry.max_retries,
        time_limit=job_type.time_limit,
        owner=owner if owner is not None and owner.is_authenticated else None,
        tenant=tenant,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id or uuid.uuid4().hex,
        retry_of=retry_of,
        created_at=now,
        updated_at=now,
        # Taken back if the broker refuses the message (dispatch). A longer wait than
        # TERMINUS_BROKER_DELAY_MAX is held here instead: unpublished, due at next_retry_at, published
        # by the repair pass when due (no broker has to keep a message that long). Any countdown's due
        # time is kept (the API's scheduled_for).
        dispatched_at=None if held else now,
        next_retry_at=now + timedelta(seconds=countdown) if countdown else None,
        terminal_by=now + timedelta(seconds=job_type.deadline_budget(countdown or 0)),
        terminal_hook=HookState.PENDING if job_type.on_terminal else HookState.NONE,
    )


def wait_of(job: Job, now: datetime) -> int | None:
    """The countdown _new_job gave the job (from countdown or scheduled_for): its due time's distance from ``now``."""
    return None if job.next_retry_at is None else round((job.next_retry_at - now).total_seconds())


#: The priority of a job run again because its worker died: served before the backlog (on Redis,
#: where every other message has CELERY_TASK_DEFAULT_PRIORITY 3; other brokers ignore it).
FIRST = 0


def publish(
    job: Job, *, countdown: float | None = None, retries: int = 0, producer: Any = None, priority: int | None = None
) -> None:
    """Send the job's message (raises when the broker is unreachable); ``priority=FIRST`` puts it ahead.

    The message carries the payload, but its log and event representation does not: Celery's
    "Task received" lines and task events show ``argsrepr``/``kwargsrepr``, and a payload may hold
    secrets (webhook headers, tokens) that must stay in the record alone.
    """
    job_type = get_job_type(job.type)
    assert job_type is not None  # callers check it
    job_type.task.publish_recorded(
        kwargs=job.payload,
        task_id=str(job.pk),
        queue=job.queue,
        countdown=countdown,
        retries=retries,
        headers={"correlation_id": job.correlation_id},
        argsrepr="()",
        kwargsrepr=PAYLOAD_REPR,
        producer=producer,
        # None would override CELERY_TASK_DEFAULT_PRIORITY: only an explicit priority is passed
        **({} if priority is None else {"priority": priority}),
    )


#: What logs and task events show instead of a job's payload.
PAYLOAD_REPR = "{<payload not logged>}"


def dispatch_many(jobs: list[Job], *, countdowns: dict[Any, int | None] | None = None) -> int:
    """Publish many jobs in one broker round trip where the transport batches (a Redis pipeline).

    Jobs count as published only once the batch is flushed; if the flush fails, their published
    mark is taken back. Some messages may then be in the broker while their jobs stay
    undispatched: the reaper publishes those again, and the claim refuses the second copy of a
    job that is terminal by then (one that arrives while the first copy runs counts as a lost
    delivery: a flush failing half-way is the one known way to get such a pair).
    """
    countdowns = countdowns or {}
    jobs = [job for job in jobs if not _held(countdowns.get(job.pk))]
    if not jobs:
        return 0
    app = get_job_type(jobs[0].type).task.app  # type: ignore[union-attr]
    published: list[Any] = []
    sent: list[Any] = []
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=len(jobs)):
            for job in jobs:
                publish(job, countdown=countdowns.get(job.pk), producer=producer)
                sent.append(job.pk)
        published = sent
    except Exception:
        logger.warning(
            "%s of %s jobs recorded but not published (broker unavailable)",
            len(jobs) - len(published),
            len(jobs),
            exc_info=True,
        )
    done = set(published)
    Job.mark_many_undispatched([job.pk for job in jobs if job.pk not in done and job.dispatched_at is not None])
    Job.mark_many_dispatched([job.pk for job in jobs if job.pk in done and job.dispatched_at is None])
    return len(published)


def _find_by_idempotency_key(key: str, *, owner: Any, tenant: Tenant | None) -> Job | None:
    scope = {"tenant": tenant} if tenant is not None else {"tenant__isnull": True, "owner": owner}
    return Job.objects.filter(idempotency_key=key, **scope).first()


def _held(countdown: float | None) -> bool:
    """A wait this long is held in the database (see _new_job): nothing to publish yet."""
    return bool(countdown) and countdown > settings.TERMINUS_BROKER_DELAY_MAX


def dispatch(job: Job, *, countdown: float | None = None) -> bool:
    """Publish the job's message (same id every time, so a re-dispatch cannot run it twice).

    A new job is recorded as dispatched (``dispatched_at`` set in its INSERT) and the mark is
    taken back if the broker refuses the message: the happy path then costs no second write of
    the row. Returns False, leaving the record queued and undispatched (the reaper publishes it
    later), when the broker cannot be reached.
    """
    if _held(countdown):
        return True  # the repair pass publishes it when due
    job_type = get_job_type(job.type)
    if job_type is None:  # a type removed from the code while jobs of it were queued
        Job(pk=job.pk).mark_failed(
            error_type="unknown_job_type", error_message=f"job type {job.type!r} is not registered"
        )
        return False
    try:
        publish(job, countdown=countdown)
    except Exception:
        logger.warning("job %s recorded but not published (broker unavailable); it stays queued", job.pk, exc_info=True)
        if job.dispatched_at is not None:
            Job.mark_many_undispatched([job.pk])
        return False
    if job.dispatched_at is None:  # the reaper publishing a job the broker refused at submit
        Job(pk=job.pk).mark_dispatched()
    return True


install_submitter(submit_or_get)  # a job type's task.delay() submits (tasks.runtime.direct_calls)
