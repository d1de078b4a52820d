"""Read-side queries on jobs, named for what their callers ask."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from django.db import models
from django.db.models.functions import Now

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

OPEN_STATUSES = ("queued", "running", "retrying")

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
