"""Operator admin for the crons: the schedule (read-only, from code), their runs, health, canaries, metrics.

The schedule is declared in code (one ``@cron`` per cron, tasks/crons/), not in the database: it is
reviewed and versioned with the code that runs it, and every process reads the same one. This admin
shows it, as the registry has it (tasks.crons.beat.load): each cron's schedule (seconds or a
crontab, and the setting that re-times it), when beat sends it next, its last run and skip count,
above the run history; nothing here is editable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin
from django.db.models import Count
from django.utils.html import format_html

from results.admin.base import ReadOnlyAdmin, pre, pretty_json
from results.models import CronRun, CronRunStatus, HealthState, MetricsRollup, QueueCanary
from tasks.crons.beat import load, next_run

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

RUN_COLORS = {
    CronRunStatus.RUNNING: "#0d6efd",
    CronRunStatus.SUCCEEDED: "#198754",
    CronRunStatus.FAILED: "#dc3545",
    CronRunStatus.SKIPPED: "#b8860b",
}


@admin.register(CronRun)
class CronRunAdmin(ReadOnlyAdmin):
    list_display = ("cron", "tick", "status_badge", "started_at", "duration_display", "duplicates", "error_type")
    list_filter = ("cron", "status")
    date_hierarchy = "started_at"
    show_full_result_count = False
    fields = (
        "cron", "tick", "status_badge", "task_id", "worker", "started_at", "finished_at", "duration_display",
        "duplicates", "result_pretty", "error_type", "error_message", "traceback_pre",
    )  # fmt: skip
    readonly_fields = fields
    change_list_template = "admin/results/cronrun/change_list.html"

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: CronRun) -> str:
        return format_html('<b style="color: {}">{}</b>', RUN_COLORS.get(run.status, "#000"), run.status)

    @admin.display(description="duration")
    def duration_display(self, run: CronRun) -> str:
        return "-" if run.duration is None else f"{run.duration:.2f} s"

    @admin.display(description="result")
    def result_pretty(self, run: CronRun) -> str:
        return pretty_json(run.result)

    @admin.display(description="traceback")
    def traceback_pre(self, run: CronRun) -> str:
        return pre(run.traceback)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {**(extra_context or {}), "schedule": schedule_rows()})


def schedule_rows() -> list[dict[str, Any]]:
    """One row per registered cron: schedule, next due time, last run, skips, health."""
    crons = load()
    skipped = dict(
        CronRun.objects.filter(status=CronRunStatus.SKIPPED).values_list("cron").annotate(n=Count("pk")).order_by()
    )
    health = {state.name: state for state in HealthState.objects.filter(name__startswith="cron:")}
    rows = []
    for name, entry in crons.items():
        last = CronRun.objects.filter(cron=name).order_by("-started_at").first()
        state = health.get(f"cron:{name}")
        rows.append(
            {
                "name": name,
                "task": entry.task,
                "schedule": str(entry.schedule),
                "crontab": entry.schedule.is_crontab,
                "zone": settings.TIME_ZONE,
                "setting": entry.setting,
                "time_limit": entry.time_limit,
                "what": entry.what,
                "next_run": next_run(entry),
                "last": last,
                "skipped": skipped.get(name, 0),
                "failing_since": state.since if state is not None and not state.ok else None,
            }
        )
    return rows


@admin.register(HealthState)
class HealthStateAdmin(ReadOnlyAdmin):
    list_display = ("name", "ok", "since", "checked_at", "error")
    list_filter = ("ok",)
    fields = ("name", "ok", "since", "checked_at", "detail_pretty")
    readonly_fields = fields

    @admin.display(description="error")
    def error(self, state: HealthState) -> str:
        return str((state.detail or {}).get("error", ""))[:200]

    @admin.display(description="detail")
    def detail_pretty(self, state: HealthState) -> str:
        return pretty_json(state.detail)


@admin.register(QueueCanary)
class QueueCanaryAdmin(ReadOnlyAdmin):
    list_display = ("queue", "waiting_since", "last_sent_at", "last_consumed_at", "last_consumed_sent_at")
    readonly_fields = list_display


@admin.register(MetricsRollup)
class MetricsRollupAdmin(ReadOnlyAdmin):
    list_display = (
        "hour", "job_type", "status", "count", "duration_p50", "duration_p95", "latency_p50", "latency_p95",
        "failure_rate_display",
    )  # fmt: skip
    list_filter = ("status", "job_type")
    date_hierarchy = "hour"
    show_full_result_count = False
    readonly_fields = (*list_display, "failure_rate", "computed_at")

    @admin.display(description="failure rate", ordering="failure_rate")
    def failure_rate_display(self, row: MetricsRollup) -> str:
        return f"{row.failure_rate:.1%}"
