"""What every Terminus admin shares: one read-only base, the cheap paginator, and how values are rendered.

Every row Terminus keeps is written by machines (submit, workers, the reaper, the alerting path)
through the state machine in ``results.models``, so no admin adds, edits or deletes one; operators
act only through the calls the API and the CLI use (``tasks.submit.actions``). Tables that grow to
millions of rows (jobs, dead letters, alerts) also never count or scan the whole table per page.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

if TYPE_CHECKING:
    from django.http import HttpRequest

#: Longest JSON or traceback text rendered on a change page (the rest is cut, with a note).
MAX_RENDERED_CHARS = 100_000
#: Most rows one action (retry, cancel, replay, resolve) touches; a larger selection must be narrowed first.
MAX_ACTION_ROWS = 1_000


# -- rendering ------------------------------------------------------------------------------------
def pre(text: str) -> str:
    """``text`` preformatted and escaped, cut at MAX_RENDERED_CHARS with a note."""
    if not text:
        return "-"
    note = ""
    if len(text) > MAX_RENDERED_CHARS:
        note = f"\n… cut: {len(text) - MAX_RENDERED_CHARS} more characters"
        text = text[:MAX_RENDERED_CHARS]
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}{}</pre>', text, note)


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON, preformatted (``-`` for None)."""
    if value is None:
        return "-"
    return pre(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str))


def job_link(job_id: Any) -> str:
    return format_html('<a href="{}">{}</a>', reverse("admin:results_job_change", args=[job_id]), job_id)


def dead_letter_link(dead_letter_id: int) -> str:
    url = reverse("admin:results_deadletter_change", args=[dead_letter_id])
    return format_html('<a href="{}">{}</a>', url, dead_letter_id)


def clean_search_term(raw: str) -> str:
    """The search box's text without surrounding blanks and quotes (ids are pasted with them)."""
    return raw.strip().strip("\"'").strip()


# -- paging -----------------------------------------------------------------------------------------
class CheapCountPaginator(Paginator):
    """A paginator whose count costs at most ``exact_count_limit`` rows, whatever the table size.

    - Unfiltered on PostgreSQL: the planner's estimate (``pg_class.reltuples``, kept by
      autovacuum/ANALYZE) when it is above the limit: no scan at all.
    - Otherwise (filtered, SQLite, or a small/never-analyzed table): ``COUNT(*)`` over a
      ``LIMIT exact_count_limit + 1`` subquery, so the count stops after that many rows and a
      larger result reports the limit.

    ``approximate`` tells the page to say the count is an estimate or a floor.
    """

    #: Counted exactly up to this many rows; beyond it the count is an estimate or a cap.
    exact_count_limit = 10_000

    approximate = False

    @cached_property
    def count(self) -> int:
        estimate = self._table_estimate()
        if estimate is not None and estimate > self.exact_count_limit:
            self.approximate = True
            return estimate
        object_list = self.object_list
        if not isinstance(object_list, QuerySet):
            return len(object_list)
        counted = object_list.order_by()[: self.exact_count_limit + 1].count()
        if counted > self.exact_count_limit:
            self.approximate = True
            return self.exact_count_limit
        return counted

    def _table_estimate(self) -> int | None:
        """PostgreSQL's row estimate for an unfiltered queryset's table; None if not applicable."""
        qs = self.object_list
        if not isinstance(qs, QuerySet) or qs.query.where or qs.query.distinct or qs.query.is_sliced:
            return None
        connection = connections[qs.db]
        if connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                [connection.ops.quote_name(qs.model._meta.db_table)],
            )
            row = cursor.fetchone()
        # -1 (PostgreSQL 14+) or 0: never vacuumed or analyzed, so no estimate to trust.
        if row is None or row[0] is None or row[0] <= 0:
            return None
        return int(row[0])


class DeferringChangeList(ChangeList):
    """The change list's queryset, without the large columns it never shows (``large_fields``)."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer(*self.model_admin.large_fields) if self.model_admin.large_fields else queryset


# -- the base -------------------------------------------------------------------------------------
class ReadOnly:
    """Rows written by machines: shown, never added, edited or deleted here (superusers included).

    A mixin, so the model admins and the inlines refuse the same three things the same way.
    """

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Retention deletes in batches (the cleanup cron); a row deleted here could be one a client
        # polls, or an open job whose broker message would be orphaned.
        return False


class ReadOnlyAdmin(ReadOnly, admin.ModelAdmin):
    """The base of every Terminus model admin over machine-written rows."""


class LargeTableAdmin(ReadOnlyAdmin):
    """A read-only admin for a table of millions of rows: no full count, no facets, large columns deferred.

    ``operate_permission`` (a permission name) guards the actions: they need the model's change
    permission although the form itself stays read-only.
    """

    paginator = CheapCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    #: Columns the change list never loads: they can be large and it shows none of them.
    large_fields: tuple[str, ...] = ()
    #: The permission the actions need (e.g. ``results.change_job``).
    operate_permission = ""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DeferringChangeList

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return bool(self.operate_permission) and request.user.has_perm(self.operate_permission)

    def selection(self, request: HttpRequest, queryset: QuerySet, verb: str, noun: str) -> list[Any] | None:
        """The selected rows, oldest first (one query), or None with an error if there are more than MAX_ACTION_ROWS."""
        rows = list(queryset.order_by("created_at", "pk")[: MAX_ACTION_ROWS + 1])
        if len(rows) > MAX_ACTION_ROWS:
            self.message_user(
                request, f"Select at most {MAX_ACTION_ROWS:,} {noun} to {verb}; narrow the filter.", messages.ERROR
            )
            return None
        return rows
