"""Read-side queries on jobs, named for what their callers ask."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.db.models.functions import Now

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

OPEN_STATUSES = ("queued", "running", "retrying")


class JobQuerySet(models.QuerySet):
    def visible_to(self, user: AbstractBaseUser | AnonymousUser) -> JobQuerySet:
        """Staff see every job; everyone else only their tenant's (or, without one, their own)."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        membership = getattr(user, "membership", None)
        if membership is not None:
            return self.filter(tenant_id=membership.tenant_id)
        return self.filter(owner=user, tenant__isnull=True)

    def open(self) -> JobQuerySet:
        """Jobs not yet terminal."""
        return self.filter(status__in=OPEN_STATUSES)

    def past_deadline(self) -> JobQuerySet:
        """Open jobs past their terminal_by deadline: the key health figure, which must stay 0."""
        return self.open().filter(terminal_by__lt=Now())

    def undispatched(self) -> JobQuerySet:
        """Queued jobs whose message never reached the broker (it was down at submit)."""
        return self.filter(status="queued", dispatched_at__isnull=True)
