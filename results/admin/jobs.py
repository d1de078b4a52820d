"""Operator admin for job records: read-only, tenant-scoped, and cheap on a table of millions of rows.

Job rows are written by machines (submit, workers, the reaper) through the state machine in
``results.models``, so the admin never edits them: operators act on jobs only through the same
calls the API uses (``tasks.submit.actions.rerun`` and ``tasks.submit.actions.cancel``).

Nothing on the change list scans the whole table: the paginator never runs a bare ``COUNT(*)``,
the filters take their choices from code (the registry, settings), not ``SELECT DISTINCT``, and
search is exact-match on indexed columns.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext

from results.admin.base import LargeTableAdmin, clean_search_term, job_link, pre, pretty_json
from results.models import Job, Status
from results.querysets import OPEN_STATUSES
from tasks.runtime.types import job_types, redacted_payload
from tasks.submit.actions import cancel, rerun
from tasks.submit.validation import SubmissionError

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

# The change page, every field read-only; JSON and the traceback through their display methods.
IDENTITY_FIELDS = (
    "id", "type", "status_badge", "queue", "tenant", "owner", "correlation_id", "idempotency_key",
    "retry_of_link", "reruns_links",
)  # fmt: skip
OUTCOME_FIELDS = ("payload_pretty", "result_pretty", "error_type", "error_message", "traceback_pre")
PROGRESS_FIELDS = (
    "attempts", "max_retries", "lost_deliveries", "progress", "progress_message", "worker", "time_limit", "version",
)  # fmt: skip
ATTEMPT_FIELDS = ("attempt_history_table",)
TIMELINE_FIELDS = (
    "created_at", "dispatched_at", "started_at", "heartbeat_at", "next_retry_at", "finished_at", "terminal_by",
    "dead_lettered_at", "updated_at",
)  # fmt: skip

STATUS_COLORS = {
    Status.QUEUED: "#6c757d",
    Status.RUNNING: "#0d6efd",
    Status.RETRYING: "#b8860b",
    Status.SUCCEEDED: "#198754",
    Status.FAILED: "#dc3545",
    Status.CANCELLED: "#6f42c1",
}


class JobTypeFilter(admin.SimpleListFilter):
    """Job types from the registry: no ``SELECT DISTINCT type`` over the whole table."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in job_types()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(type=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    """Queues from settings: no ``SELECT DISTINCT queue`` (an unindexed column) per page view."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in settings.TERMINUS_QUEUES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(queue=self.value()) if self.value() else queryset


@admin.register(Job)
class JobAdmin(LargeTableAdmin):
    """Read-only job records with retry and cancel actions; tenant staff see only their tenant."""

    large_fields = ("payload", "result", "traceback", "error_message")
    operate_permission = "results.change_job"

    list_display = ("id", "type", "status_badge", "queue", "attempts", "tenant", "owner", "created_at", "finished_at")
    list_filter = ("status", JobTypeFilter, QueueFilter, ("created_at", admin.DateFieldListFilter))
    list_select_related = ("tenant", "owner")
    # Sorting by an unindexed column would sort the whole table on every page view.
    sortable_by = ("created_at",)
    # Shown for the search box; the search itself is get_search_results (exact, indexed).
    search_fields = ("id", "correlation_id", "idempotency_key")
    search_help_text = "Exact job id, correlation id or idempotency key."
    actions = ("retry", "cancel")
    fieldsets = (
        (None, {"fields": IDENTITY_FIELDS}),
        ("Input and outcome", {"fields": OUTCOME_FIELDS}),
        ("Progress", {"fields": PROGRESS_FIELDS}),
        ("Attempts", {"fields": ATTEMPT_FIELDS}),
        ("Timeline", {"fields": TIMELINE_FIELDS}),
    )
    readonly_fields = IDENTITY_FIELDS + OUTCOME_FIELDS + PROGRESS_FIELDS + ATTEMPT_FIELDS + TIMELINE_FIELDS

    # -- scope ---------------------------------------------------------------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        """Superusers and staff without a tenant see every job; staff who act for a tenant its jobs."""
        return super().get_queryset(request).select_related("tenant", "owner").visible_to(request.user)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        """Exact match on the primary key or correlation id (both indexed), else the idempotency key.

        The default admin search would run ``icontains`` (or ``CAST(id AS text)`` for the UUID key),
        which no index serves: a scan of every row per search.
        """
        term = clean_search_term(search_term)
        if not term:
            return queryset, False
        by_key = Q(correlation_id=term)
        with contextlib.suppress(ValueError):  # not a UUID: it can only be a correlation id
            by_key |= Q(pk=uuid.UUID(term))
        matches = queryset.filter(by_key)
        if matches.exists():
            return matches, False
        return queryset.filter(idempotency_key=term), False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        cl = getattr(response, "context_data", None) and response.context_data.get("cl")
        paginator = getattr(cl, "paginator", None)
        if getattr(paginator, "approximate", False):
            limit = paginator.exact_count_limit
            if paginator.count > limit:
                response.context_data["subtitle"] = f"About {paginator.count:,} jobs (PostgreSQL's estimate)"
            else:
                response.context_data["subtitle"] = f"More than {limit:,} jobs match: pages stop at {limit:,}"
        return response

    # -- columns -------------------------------------------------------------------------------
    @admin.display(description="status")
    @admin.display(description="attempt history")
    def attempt_history_table(self, obj: Job) -> str:
        """Every attempt, oldest first, the running or succeeded one included (Job.attempt_history)."""
        history = obj.attempt_history()
        if not history:
            return "no attempt yet"
        head = format_html_join(
            "",
            "<th>{}</th>",
            ((name,) for name in ("#", "outcome", "worker", "started", "finished", "error type", "error")),
        )
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    attempt.number,
                    attempt.outcome,
                    attempt.worker or "-",
                    attempt.started_at,
                    attempt.finished_at or "-",
                    attempt.error_type or "-",
                    attempt.error_message[:500] or "-",
                )
                for attempt in history
            ),
        )
        return format_html(
            '<table class="attempt-history"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
            head,
            rows,
        )

    def status_badge(self, obj: Job) -> str:
        color = STATUS_COLORS.get(obj.status, "#000")
        return format_html('<strong style="color: {}">{}</strong>', color, obj.get_status_display())

    @admin.display(description="payload")
    def payload_pretty(self, obj: Job) -> str:
        return pretty_json(redacted_payload(obj.type, obj.payload))

    @admin.display(description="result")
    def result_pretty(self, obj: Job) -> str:
        return pretty_json(obj.result)

    @admin.display(description="traceback")
    def traceback_pre(self, obj: Job) -> str:
        return pre(obj.traceback)

    @admin.display(description="retry of")
    def retry_of_link(self, obj: Job) -> str:
        return job_link(obj.retry_of_id) if obj.retry_of_id else "-"

    @admin.display(description="re-run as")
    def reruns_links(self, obj: Job) -> str:
        ids = list(Job.objects.filter(retry_of_id=obj.pk).order_by("created_at").values_list("id", flat=True)[:20])
        if not ids:
            return "-"
        return format_html_join(
            ", ", '<a href="{}">{}</a>', ((reverse("admin:results_job_change", args=[i]), i) for i in ids)
        )

    # -- actions -------------------------------------------------------------------------------
    @admin.action(description="Retry selected failed or cancelled jobs (as new jobs)", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        # defer(None): rerun() needs the payload the change list leaves out.
        jobs = self.selection(request, queryset.defer(None), "retry", "jobs")
        if jobs is None:
            return
        retried = 0
        refused: list[str] = []
        retryable = [job for job in jobs if job.status in (Status.FAILED, Status.CANCELLED)]
        for job in retryable:
            try:
                rerun(job)
            except SubmissionError as exc:  # e.g. its type was removed or its schema changed since
                refused.append(f"{job.pk}: {exc}")
            else:
                retried += 1
        if retried:
            self.message_user(
                request,
                ngettext("Retried %(count)d job as a new job.", "Retried %(count)d jobs as new jobs.", retried)
                % {"count": retried},
                messages.SUCCESS,
            )
        if skipped := len(jobs) - len(retryable):
            self.message_user(
                request,
                ngettext(
                    "Skipped %(count)d job that is not failed or cancelled.",
                    "Skipped %(count)d jobs that are not failed or cancelled.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )
        if refused:
            self.message_user(
                request,
                ngettext(
                    "Could not retry %(count)d job: %(why)s", "Could not retry %(count)d jobs: %(why)s", len(refused)
                )
                % {"count": len(refused), "why": "; ".join(refused[:10])},
                messages.ERROR,
            )

    @admin.action(description="Cancel selected jobs that are not finished", permissions=["operate"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        selected = queryset.select_related(None).only("id", "type", "status")
        jobs = self.selection(request, selected, "cancel", "jobs")
        if jobs is None:
            return
        reason = f"cancelled by {request.user.get_username()} in the admin"
        # cancel() is a guarded UPDATE: a job that finished since the page was shown is left alone.
        cancelled = sum(1 for job in jobs if job.status in OPEN_STATUSES and cancel(job, reason=reason))
        if cancelled:
            self.message_user(
                request,
                ngettext("Cancelled %(count)d job.", "Cancelled %(count)d jobs.", cancelled) % {"count": cancelled},
                messages.SUCCESS,
            )
        if skipped := len(jobs) - cancelled:
            self.message_user(
                request,
                ngettext(
                    "Skipped %(count)d job that had already finished.",
                    "Skipped %(count)d jobs that had already finished.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )
