"""Operator admin for dead letters and the alerts sent about them: read-only, with replay and resolve.

Dead letters are written by the dead-letter path (``tasks.failure.dead_letters``), alerts and throttle
windows by the alerting path (``tasks.failure.alerting``), so the admin never edits them. Operators act
on a dead letter only through the calls the API and ``manage.py deadletters`` use
(``tasks.submit.actions.replay`` and ``resolve``); deleting is ``manage.py deadletters purge``'s job.

No change list here counts or scans a whole table (results.admin.base.LargeTableAdmin), and filters
take their choices from code, not ``SELECT DISTINCT``.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.utils.html import format_html
from django.utils.translation import ngettext

from results.admin.base import (
    LargeTableAdmin,
    ReadOnly,
    clean_search_term,
    dead_letter_link,
    job_link,
    pre,
    pretty_json,
)
from results.models import Alert, AlertWindow, DeadLetter, DeadLetterStatus
from results.querysets import scoped_by_job, sees_every_tenant
from tasks.failure.alerting import MailChannel, WebhookChannel
from tasks.runtime.types import job_types, redacted_message_body
from tasks.submit.actions import ReplayError, replay, resolve
from tasks.submit.validation import SubmissionError

if TYPE_CHECKING:
    from django.http import HttpRequest

# The change page, every field read-only; JSON and the traceback through their display methods.
IDENTITY_FIELDS = (
    "id", "status_badge", "reason", "task_name", "queue", "message_key", "job_link", "replay_job_link",
    "replayed_at", "resolved_at", "resolved_by",
)  # fmt: skip
ERROR_FIELDS = ("error_type", "error_message", "traceback_pre")
MESSAGE_FIELDS = ("body_pretty", "headers_pretty", "raw_body_pre")
TIMELINE_FIELDS = ("attempts", "first_failed_at", "last_failed_at", "created_at", "alerted_at")

STATUS_COLORS = {
    DeadLetterStatus.OPEN: "#dc3545",
    DeadLetterStatus.REPLAYED: "#0d6efd",
    DeadLetterStatus.RESOLVED: "#198754",
}
#: The "type" filter's choice for task names that are not a registered job type (poison messages).
OTHER_TYPE = "__other__"


class TaskNameFilter(admin.SimpleListFilter):
    """Job types from the registry (no ``SELECT DISTINCT``), plus "other" for unknown task names."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in job_types()] + [(OTHER_TYPE, "other (not a job type)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> QuerySet[DeadLetter]:
        if self.value() == OTHER_TYPE:
            return queryset.exclude(task_name__in=list(job_types()))
        return queryset.filter(task_name=self.value()) if self.value() else queryset


class ChannelFilter(admin.SimpleListFilter):
    """Alert channels from code: no ``SELECT DISTINCT channel`` per page view."""

    title = "channel"
    parameter_name = "channel"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(channel.name, channel.name) for channel in (WebhookChannel, MailChannel)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Alert]) -> QuerySet[Alert]:
        return queryset.filter(channel=self.value()) if self.value() else queryset


class AlertInline(ReadOnly, admin.TabularInline):
    """Every alert sent (or tried) about the dead letter, as the alerting path recorded it."""

    model = Alert
    fk_name = "dead_letter"
    fields = ("created_at", "channel", "status", "count", "subject", "sent_at", "duration_ms", "error")
    readonly_fields = fields
    ordering = ("created_at",)
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        # Alerts are part of the dead letter's record: whoever may view it may view them.
        user = request.user
        return user.has_perm("results.view_deadletter") or user.has_perm("results.change_deadletter")


@admin.register(DeadLetter)
class DeadLetterAdmin(LargeTableAdmin):
    """Read-only dead letters with replay and resolve actions; tenant staff see only their tenant's."""

    large_fields = ("traceback", "body", "raw_body", "headers", "error_message")
    operate_permission = "results.change_deadletter"

    list_display = (
        "id", "created_at", "task_name", "reason", "error_type", "attempts", "status_badge", "job_link",
    )  # fmt: skip
    list_filter = ("status", "reason", TaskNameFilter, ("created_at", admin.DateFieldListFilter))
    list_select_related = False
    # Sorting by an unindexed column would sort the whole table on every page view.
    sortable_by = ("created_at",)
    # Shown for the search box; the search itself is get_search_results (exact, indexed).
    search_fields = ("message_key",)
    search_help_text = "Exact message key, job id or replay job id."
    actions = ("replay", "resolve")
    inlines = (AlertInline,)
    fieldsets = (
        (None, {"fields": IDENTITY_FIELDS}),
        ("Error", {"fields": ERROR_FIELDS}),
        ("Message", {"fields": MESSAGE_FIELDS}),
        ("Timeline", {"fields": TIMELINE_FIELDS}),
    )
    readonly_fields = IDENTITY_FIELDS + ERROR_FIELDS + MESSAGE_FIELDS + TIMELINE_FIELDS

    # -- scope ---------------------------------------------------------------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetter]:
        """Superusers and staff without a tenant see every dead letter; tenant staff their tenant's jobs'."""
        return super().get_queryset(request).visible_to(request.user)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], search_term: str
    ) -> tuple[QuerySet[DeadLetter], bool]:
        """Exact match on the message key, the job id or the replay job's id (all unique, indexed).

        The default admin search would run ``icontains``, which no index serves.
        """
        term = clean_search_term(search_term)
        if not term:
            return queryset, False
        match = Q(message_key=term)
        with contextlib.suppress(ValueError):  # not a UUID: it can only be a message key
            job_id = uuid.UUID(term)
            match |= Q(job_id=job_id) | Q(replay_job_id=job_id)
        return queryset.filter(match), False

    # -- columns -------------------------------------------------------------------------------
    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: DeadLetter) -> str:
        color = STATUS_COLORS.get(obj.status, "#000")
        return format_html('<strong style="color: {}">{}</strong>', color, obj.get_status_display())

    @admin.display(description="job")
    def job_link(self, obj: DeadLetter) -> str:
        return job_link(obj.job_id) if obj.job_id else "- (no job: a message that never ran)"

    @admin.display(description="replayed as")
    def replay_job_link(self, obj: DeadLetter) -> str:
        return job_link(obj.replay_job_id) if obj.replay_job_id else "-"

    @admin.display(description="body")
    def body_pretty(self, obj: DeadLetter) -> str:
        return pretty_json(redacted_message_body(obj.task_name, obj.body))

    @admin.display(description="headers")
    def headers_pretty(self, obj: DeadLetter) -> str:
        return pretty_json(obj.headers or None)

    @admin.display(description="raw body (undecodable, base64)")
    def raw_body_pre(self, obj: DeadLetter) -> str:
        return pre(obj.raw_body)

    @admin.display(description="traceback")
    def traceback_pre(self, obj: DeadLetter) -> str:
        return pre(obj.traceback)

    # -- actions -------------------------------------------------------------------------------
    def _report_skipped(self, request: HttpRequest, skipped: int) -> None:
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "Skipped %(count)d dead letter that is not open.",
                    "Skipped %(count)d dead letters that are not open.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )

    @admin.action(description="Replay selected open dead letters (as new jobs)", permissions=["operate"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        letters = self.selection(request, queryset.defer(None), "replay", "dead letters")
        if letters is None:
            return
        replayed = 0
        skipped = 0
        refused: list[str] = []
        for letter in letters:
            if letter.status != DeadLetterStatus.OPEN:
                skipped += 1
                continue
            try:
                _job, created = replay(letter)  # the original job's owner and tenant keep the replay
            except (ReplayError, SubmissionError) as exc:  # no runnable type; the payload no longer validates
                refused.append(f"{letter.pk}: {exc}")
                continue
            if created:
                replayed += 1
            else:  # replayed meanwhile (by another operator): its first replay stands, nothing runs twice
                skipped += 1
        if replayed:
            self.message_user(
                request,
                ngettext(
                    "Replayed %(count)d dead letter as a new job.",
                    "Replayed %(count)d dead letters as new jobs.",
                    replayed,
                )
                % {"count": replayed},
                messages.SUCCESS,
            )
        self._report_skipped(request, skipped)
        if refused:
            self.message_user(
                request,
                ngettext(
                    "Could not replay %(count)d dead letter: %(why)s",
                    "Could not replay %(count)d dead letters: %(why)s",
                    len(refused),
                )
                % {"count": len(refused), "why": "; ".join(refused[:10])},
                messages.ERROR,
            )

    @admin.action(description="Resolve selected open dead letters (nothing more to do)", permissions=["operate"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        letters = self.selection(request, queryset.only("id", "status"), "resolve", "dead letters")
        if letters is None:
            return
        by = request.user.get_username()
        # resolve() is a guarded UPDATE: one replayed or resolved since the page was shown is left alone.
        resolved = sum(1 for letter in letters if letter.status == DeadLetterStatus.OPEN and resolve(letter, by=by))
        if resolved:
            self.message_user(
                request,
                ngettext("Resolved %(count)d dead letter.", "Resolved %(count)d dead letters.", resolved)
                % {"count": resolved},
                messages.SUCCESS,
            )
        self._report_skipped(request, len(letters) - resolved)


@admin.register(Alert)
class AlertAdmin(LargeTableAdmin):
    """Every alert recorded (dead letters, burst summaries, ops alerts): what was sent, where, whether it arrived."""

    list_display = ("created_at", "channel", "status", "count", "subject", "dead_letter_link", "sent_at", "duration_ms")
    list_filter = ("status", ChannelFilter, ("created_at", admin.DateFieldListFilter))
    sortable_by = ("created_at",)
    search_fields = ("key",)
    search_help_text = "Exact throttle key: <job type>|<error type>."
    fields = (
        "created_at", "channel", "status", "key", "count", "subject", "text", "dead_letter_link", "sent_at",
        "duration_ms", "error",
    )  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Alert]:
        """Tenant staff see the alerts about their tenant's dead letters; summaries and ops alerts are cross-tenant."""
        return scoped_by_job(super().get_queryset(request), request.user, "dead_letter__job")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Alert], search_term: str
    ) -> tuple[QuerySet[Alert], bool]:
        term = search_term.strip()
        return (queryset.filter(key=term), False) if term else (queryset, False)

    @admin.display(description="dead letter")
    def dead_letter_link(self, obj: Alert) -> str:
        if obj.dead_letter_id is None:
            return "- (not about one dead letter: a summary of a throttled burst, or an ops alert)"
        return dead_letter_link(obj.dead_letter_id)


@admin.register(AlertWindow)
class AlertWindowAdmin(LargeTableAdmin):
    """Throttle state per (job type, error type): one alert per window, then a summary with the count."""

    list_display = ("key", "opened_at", "count", "reported", "unreported")
    sortable_by = ("opened_at",)
    search_fields = ("key",)
    search_help_text = "Exact throttle key: <job type>|<error type>."
    fields = ("key", "opened_at", "count", "reported", "unreported")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[AlertWindow]:
        """Windows count failures across tenants: only superusers and staff without a tenant see them."""
        qs = super().get_queryset(request)
        return qs if sees_every_tenant(request.user) else qs.none()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[AlertWindow], search_term: str
    ) -> tuple[QuerySet[AlertWindow], bool]:
        term = search_term.strip()
        return (queryset.filter(key=term), False) if term else (queryset, False)

    @admin.display(description="waiting for a summary")
    def unreported(self, obj: AlertWindow) -> int:
        return max(0, obj.count - obj.reported)
