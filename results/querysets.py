"""Read-side queries on jobs and dead letters, named for what their callers ask.

The API, the CLI and the admin filter through these, so a filter means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

OPEN_STATUSES = ("queued", "running", "retrying")


def database_now_plus(seconds: float) -> models.Expression:
    """``now() + seconds`` computed by the database (see database_now_minus)."""
    return database_now_minus(-seconds)


def database_now_minus(seconds: float) -> models.Expression:
    """``now() - seconds`` computed by the database: one clock for every cutoff that compares with a
    timestamp the database wrote (heartbeats, leases, liveness), whatever the asking host's clock says."""
    return models.ExpressionWrapper(
        Now() - models.Value(timedelta(seconds=seconds), output_field=models.DurationField()),
        output_field=models.DateTimeField(),
    )


QS = TypeVar("QS", bound=models.QuerySet)


def sees_every_tenant(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Superusers, and staff who act for no tenant: every tenant's rows (the one scoping rule).

    Staff with a tenant Membership act for that tenant and are scoped to it like its users, in
    the API and in the admin alike; ``is_staff`` alone only opens the admin.
    """
    if not user.is_authenticated:
        return False
    return bool(user.is_superuser or (user.is_staff and getattr(user, "membership", None) is None))


def scoped_by_job(queryset: QS, user: AbstractBaseUser | AnonymousUser, job: str = "job") -> QS:
    """``queryset`` narrowed to the rows whose job (reached through ``job``; ``""``: the rows are
    jobs) the user may see.

    The rule of ``JobQuerySet.visible_to``, also for rows that belong to a job (dead letters,
    alerts): everything for ``sees_every_tenant``, else the user's tenant's (or, without one, their own),
    so a row with no job (a poison message, an ops alert) is for those who see every tenant only.
    """
    if not user.is_authenticated:
        return queryset.none()
    if sees_every_tenant(user):
        return queryset
    prefix = f"{job}__" if job else ""
    membership = getattr(user, "membership", None)
    if membership is not None:
        return queryset.filter(**{f"{prefix}tenant_id": membership.tenant_id})
    return queryset.filter(**{f"{prefix}owner": user, f"{prefix}tenant__isnull": True})


class JobQuerySet(models.QuerySet):
    def visible_to(self, user: AbstractBaseUser | AnonymousUser) -> JobQuerySet:
        """Every job for ``sees_every_tenant``; else the user's tenant's (or, without one, their own)."""
        return scoped_by_job(self, user, job="")

    def open(self) -> JobQuerySet:
        """Jobs not yet terminal."""
        return self.filter(status__in=OPEN_STATUSES)

    def past_deadline(self) -> JobQuerySet:
        """Open jobs past their terminal_by deadline: the key health figure, which must stay 0."""
        return self.open().filter(terminal_by__lt=Now())

    def undispatched(self) -> JobQuerySet:
        """Queued jobs whose message never reached the broker (it was down at submit)."""
        return self.filter(status="queued", dispatched_at__isnull=True)


class DeadLetterQuerySet(models.QuerySet):
    def visible_to(self, user: AbstractBaseUser | AnonymousUser) -> DeadLetterQuerySet:
        """Everything (poison messages included) for ``sees_every_tenant``; else the dead letters of
        the jobs the user may see."""
        return scoped_by_job(self, user, job="job")

    def open(self) -> DeadLetterQuerySet:
        """Dead letters waiting for a human."""
        return self.filter(status="open")

    def matching(
        self,
        *,
        statuses: Iterable[str] | None = None,
        reasons: Iterable[str] | None = None,
        task_name: str | None = None,
        error_type: str | None = None,
        job: Any = None,
        ids: Iterable[int] | None = None,
        jobs: Iterable[Any] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        older_than: timedelta | None = None,
    ) -> DeadLetterQuerySet:
        """The dead letters every given filter matches (they combine with AND; ``None`` or empty:
        no filter). ``ids`` and ``jobs`` combine with each other by OR: the letters named either way."""
        letters = self
        if statuses:
            letters = letters.filter(status__in=list(statuses))
        if reasons:
            letters = letters.filter(reason__in=list(reasons))
        if task_name:
            letters = letters.filter(task_name=task_name)
        if error_type:
            letters = letters.filter(error_type=error_type)
        if job:
            letters = letters.filter(job_id=job)
        if ids or jobs:
            letters = letters.filter(Q(pk__in=list(ids or ())) | Q(job_id__in=list(jobs or ())))
        if created_after is not None:
            letters = letters.filter(created_at__gte=created_after)
        if created_before is not None:
            letters = letters.filter(created_at__lt=created_before)
        if older_than is not None:
            letters = letters.filter(created_at__lt=timezone.now() - older_than)
        return letters
