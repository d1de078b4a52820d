"""Worker nodes and the repair lease: which worker incarnations are alive, and when repairs last ran."""

from __future__ import annotations

from django.contrib import admin

from results.admin.base import ReadOnlyAdmin, pretty_json
from results.models import RepairLease, WorkerNode


@admin.register(WorkerNode)
class WorkerNodeAdmin(ReadOnlyAdmin):
    list_display = ("hostname", "pid", "started_at", "last_seen_at", "stopped_at")
    list_filter = (("stopped_at", admin.EmptyFieldListFilter),)
    search_fields = ("=hostname",)
    fields = ("id", "hostname", "pid", "boot_id", "started_at", "last_seen_at", "stopped_at")
    readonly_fields = fields


@admin.register(RepairLease)
class RepairLeaseAdmin(ReadOnlyAdmin):
    list_display = ("name", "last_completed_at", "holder", "held_until")
    fields = ("name", "holder", "held_until", "last_completed_at", "counts_pretty")
    readonly_fields = fields

    @admin.display(description="last counts")
    def counts_pretty(self, lease: RepairLease) -> str:
        return pretty_json(lease.last_counts)
