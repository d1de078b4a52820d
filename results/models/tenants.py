"""Tenants and who acts for them: the unit of isolation between customers."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Tenant(models.Model):
    """A customer account: users of one tenant see only that tenant's jobs."""

    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """Which tenant a user acts for (one per user; staff without one see everything)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="members")

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant}"
