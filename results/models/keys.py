"""Idempotency keys that outlive their job: a key stays reserved after cleanup deleted its job.

A client retrying a submission weeks later (a queue replayed, a cron that re-sends) must never get a
second run. While the job row exists, its unique constraints hold the key; when the cleanup deletes
it, the key is retired here first, for TERMINUS_IDEMPOTENCY_KEY_DAYS, with the job's id and its
last known state, and a submission with it is refused (409) naming that job.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from results.models.tenants import Tenant


class RetiredKey(models.Model):
    """An idempotency key whose job was cleaned up: reserved until ``retired_at`` + TERMINUS_IDEMPOTENCY_KEY_DAYS."""

    key = models.CharField(max_length=255)
    # The key's scope, as on the job: its tenant, or (no tenant) its owner.
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, db_index=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, db_index=False, related_name="+"
    )
    job_id = models.UUIDField(help_text="The job the key submitted (deleted by the cleanup).")
    job_status = models.CharField(max_length=16, help_text="Its last known state.")
    retired_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-retired_at",)
        indexes = [models.Index(fields=["retired_at"], name="retiredkey_retired")]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "key"], name="retiredkey_per_tenant", condition=Q(tenant__isnull=False)
            ),
            models.UniqueConstraint(
                fields=["owner", "key"], name="retiredkey_per_owner", condition=Q(tenant__isnull=True)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key} -> {self.job_id} ({self.job_status})"

    @classmethod
    def find(cls, key: str, *, owner_id: int | None, tenant_id: int | None) -> RetiredKey | None:
        scope = {"tenant_id": tenant_id} if tenant_id is not None else {"tenant__isnull": True, "owner_id": owner_id}
        return cls.objects.filter(key=key, **scope).first()

    @property
    def reserved_until(self) -> datetime:
        return self.retired_at + timedelta(days=settings.TERMINUS_IDEMPOTENCY_KEY_DAYS)
