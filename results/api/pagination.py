"""Cursor pagination of the job list: stable under inserts, cheap at any depth (no COUNT, no OFFSET scan)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions
from rest_framework.pagination import CursorPagination

from results.models import Job


class JobCursorPagination(CursorPagination):
    """Newest first; ``?page_size=`` (1-500, default 50); follow ``next`` until it is null.

    A cursor that was tampered with or truncated is a 400 on ``cursor`` rather than DRF's 404,
    so a client can tell "bad cursor" from "no such endpoint".
    """

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    invalid_cursor_help = "invalid cursor: use the next/previous links as given"

    def decode_cursor(self, request: Any) -> Any:
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None:
                # DRF puts the position into the query as is: a forged one must not reach the
                # database as a malformed datetime (a 500), so check it parses as one.
                Job._meta.get_field("created_at").to_python(cursor.position)
        except (exceptions.NotFound, DjangoValidationError):
            raise exceptions.ValidationError({self.cursor_query_param: [self.invalid_cursor_help]}) from None
        return cursor
