"""The jobs API: submit, poll, list, cancel, retry, and the catalogue of job types.

Every view requires authentication (``Authorization: Token <key>`` or a session) and shows only
the jobs the user may see (``JobQuerySet.visible_to``): its tenant's, or its own without a
tenant; superusers and staff who act for no tenant see all (staff with a tenant, its jobs only).
A job the user may not see answers 404, exactly like a job that does not exist. Every error
has the body ``{"detail": "...", "errors": {field: [messages]}}`` (results.api.errors).
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import QuerySet
from django.urls import Resolver404, resolve, reverse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from results.models import Job, Status
from tasks.runtime.types import job_types_for
from tasks.submit.actions import cancel, rerun
from tasks.submit.outbox import submit_or_get
from tasks.submit.validation import SubmissionError

from . import examples
from .errors import Conflict
from .pagination import JobCursorPagination
from .parsers import LimitedJSONParser
from .responses import error_responses
from .serializers import (
    CancelSerializer,
    JobDetailSerializer,
    JobFilterSerializer,
    JobSerializer,
    JobTypeSerializer,
    SubmitSerializer,
    check_query_parameters,
)
from .throttling import SubmitRateThrottle

CORRELATION_HEADER = "X-Correlation-ID"
CORRELATION_MAX_CHARS = 100
#: Longest Retry-After a poll is told to wait, even when the next retry is further away.
RETRY_AFTER_MAX = 30
RETRYABLE_STATUSES = (Status.FAILED, Status.CANCELLED)
#: How often a long poll (``?wait=N``) re-reads the job's version while it holds the request.
LONG_POLL_INTERVAL = 0.25


JOB_ID = OpenApiParameter("id", uuid.UUID, OpenApiParameter.PATH, description="The job's id (404 if malformed).")
JOB_HEADERS = [
    OpenApiParameter("ETag", str, OpenApiParameter.HEADER, response=[200, 304], description="The job's version."),
    OpenApiParameter(
        "Retry-After",
        int,
        OpenApiParameter.HEADER,
        response=[200, 304],
        description="Only while the job is not terminal: seconds to wait before polling again (1-30).",
    ),
]


def retry_after(job: Job) -> int | None:
    """Seconds a poller should wait before asking again; None once the job is terminal."""
    if job.terminal:
        return None
    if job.status == Status.RETRYING and job.next_retry_at is not None:
        seconds = math.ceil((job.next_retry_at - timezone.now()).total_seconds())
        return max(1, min(RETRY_AFTER_MAX, seconds))
    return 1


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` or any listed tag, compared weakly."""
    if not if_none_match:
        return False
    candidates = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in candidates)


def long_poll_wait(request: Request) -> int:
    """Seconds a poll may be held (``?wait=N``): 0 without it; values above the cap count as the cap.

    Any other query parameter, an empty or repeated ``wait`` or a value that is not a whole
    number of seconds is a 400 keyed by the parameter.
    """
    cap = settings.TERMINUS_LONG_POLL_MAX
    check_query_parameters(request.query_params, allowed=["wait"], empty_checked=["wait"])
    values = request.query_params.getlist("wait")
    if not values:
        return 0
    value = values[0].strip()
    if not (value.isascii() and value.isdigit()):
        raise exceptions.ValidationError(
            {"wait": [f"must be a whole number of seconds, 0 or more; above {cap} counts as {cap} (got {values[0]!r})"]}
        )
    value = value.lstrip("0") or "0"
    if len(value) > len(str(cap)):  # thousands of digits would only waste int()'s time
        return cap
    return min(int(value), cap)


class TooManyLongPolls(exceptions.Throttled):
    default_detail = "too many long polls held at once; poll again when one returns"


@contextlib.contextmanager
def long_poll_slot(user: Any) -> Iterator[None]:
    """Hold one of the user's TERMINUS_LONG_POLL_PER_USER long-poll slots for the poll; 429 when none is free.

    Each slot is a cache key taken with ``add`` (atomic in Redis and in the database cache alike,
    unlike a counter's read-then-write), in the cache every web process shares; a slot expires a
    little after the longest poll, so a process killed mid-poll cannot keep it taken for good.
    """
    timeout = settings.TERMINUS_LONG_POLL_MAX + 30
    slots = (f"terminus:long-poll:{user.pk}:{n}" for n in range(settings.TERMINUS_LONG_POLL_PER_USER))
    taken = next((slot for slot in slots if cache.add(slot, 1, timeout=timeout)), None)
    if taken is None:
        raise TooManyLongPolls(wait=1)
    try:
        yield
    finally:
        cache.delete(taken)


def body_object(request: Request) -> dict[str, Any]:
    data = request.data
    if not isinstance(data, dict):
        raise exceptions.ValidationError({"body": [f"must be a JSON object, not {type(data).__name__}"]})
    return data


def correlation_id_from(request: Request) -> str | None:
    """The client's X-Correlation-ID: 1-100 printable ASCII characters, or None to generate one."""
    value = request.headers.get(CORRELATION_HEADER, "").strip()
    if not value:
        return None
    if len(value) > CORRELATION_MAX_CHARS or not all(" " <= char <= "~" for char in value):
        raise exceptions.ValidationError(
            {CORRELATION_HEADER: [f"must be 1 to {CORRELATION_MAX_CHARS} printable ASCII characters"]}
        )
    return value


def tenant_of(user: Any) -> Any:
    membership = getattr(user, "membership", None)
    return membership.tenant if membership is not None else None


@extend_schema_view(
    list=extend_schema(
        summary="List jobs",
        description=(
            "Newest first, cursor-paginated: follow `next` until it is null. Filters combine with AND. "
            "An unknown parameter or a bad value is a 400."
        ),
        parameters=[JobFilterSerializer],
        responses={200: JobSerializer(many=True), **error_responses(400, 401)},
        examples=examples.LIST,
    ),
    create=extend_schema(
        summary="Submit a job",
        description=(
            "Records the job, then publishes it. 202 with the new job; 200 with the existing job when "
            "`idempotency_key` was used before (per tenant, or per user without a tenant). A broker "
            "outage still answers 202: the job stays queued with `dispatched_at` null and is "
            "published later. `payload` must be valid for the type's `input_schema` "
            "(`GET /api/job-types/`); a field the type does not declare is a 400 naming it "
            "(`payload.<field>`), so a typo never runs the job with its defaults."
        ),
        request=SubmitSerializer,
        examples=examples.SUBMIT,
        parameters=[
            OpenApiParameter(
                CORRELATION_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="Optional, 1-100 printable ASCII characters; generated when absent.",
            ),
            OpenApiParameter(
                CORRELATION_HEADER,
                str,
                OpenApiParameter.HEADER,
                response=[200, 202],
                description="The job's correlation id.",
            ),
            OpenApiParameter(
                "Location", str, OpenApiParameter.HEADER, response=[200, 202], description="The job's URL."
            ),
        ],
        responses={
            202: OpenApiResponse(JobDetailSerializer, description="Accepted: a new job."),
            200: OpenApiResponse(JobDetailSerializer, description="The job first submitted with this key."),
            **error_responses(400, 401, 413, 415, 429),
        },
    ),
    retrieve=extend_schema(
        summary="Poll a job",
        description=(
            "The job with its attempt history. While it is not terminal the answer carries `Retry-After`. "
            "Send the last `ETag` in `If-None-Match` to get 304 with no body while nothing changed.\n\n"
            "Long poll: with `?wait=N` the server holds the request while the job is not terminal "
            "and nothing changed (any change: status, attempt, progress, ...), and answers as soon as "
            "its version moves past the one in `If-None-Match` (or, without that header, past the "
            "version at request time): 200 with the job. After N seconds with no change it answers "
            "304 if `If-None-Match` matched, else 200. A terminal job, or an `If-None-Match` that is "
            "already stale, is answered at once. N is capped by `TERMINUS_LONG_POLL_MAX` (default 60; "
            "larger values count as the cap). Each held poll occupies one server thread and re-reads "
            "the job's version every 0.25 s."
        ),
        parameters=[
            JOB_ID,
            OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER, description="A previous ETag."),
            OpenApiParameter(
                "wait",
                int,
                OpenApiParameter.QUERY,
                description=(
                    "Long poll: hold the request up to this many seconds until the job changes "
                    "(0 to the server's cap, default 60; above the cap counts as the cap)."
                ),
            ),
            *JOB_HEADERS,
        ],
        responses={
            200: JobDetailSerializer,
            304: OpenApiResponse(description="Not modified since the ETag in If-None-Match."),
            **error_responses(400, 401, 404, 429),
        },
        examples=examples.POLL,
    ),
)
class JobViewSet(viewsets.GenericViewSet):
    """Jobs of the user's tenant (all jobs for superusers and staff without a tenant)."""

    serializer_class = JobSerializer
    pagination_class = JobCursorPagination
    parser_classes = [LimitedJSONParser]
    throttle_classes = [SubmitRateThrottle]
    queryset = Job.objects.none()  # for schema generation; requests use get_queryset()
    correlation_id: str | None = None

    @property
    def throttle_scope(self) -> str | None:
        """Only submissions (and reruns, which submit) are throttled."""
        return "submit" if getattr(self, "action", None) in {"create", "retry"} else None

    def get_queryset(self) -> QuerySet[Job]:
        # The payload (up to TERMINUS_MAX_PAYLOAD_BYTES each) is never shown: never read it.
        jobs = Job.objects.visible_to(self.request.user).defer("payload")
        if not self.request.user.is_staff:
            jobs = jobs.defer("traceback")  # shown to staff only
        return jobs

    def get_job(self, pk: str, queryset: QuerySet[Job] | None = None) -> Job:
        """The job, or 404 alike for a malformed id, an unknown id and another tenant's job."""
        try:
            job_id = uuid.UUID(str(pk))
        except ValueError:
            raise exceptions.NotFound("No job with this id (not a valid job id).") from None
        job = (queryset if queryset is not None else self.get_queryset()).filter(pk=job_id).first()
        if job is None:
            raise exceptions.NotFound(f"No job {job_id}.")
        return job

    def job_headers(self, job: Job) -> dict[str, str]:
        headers = {"ETag": job.etag, "Cache-Control": "private, no-cache"}
        wait = retry_after(job)
        if wait is not None:
            headers["Retry-After"] = str(wait)
        return headers

    def detail_response(self, job: Job, status_code: int = status.HTTP_200_OK, **headers: str) -> Response:
        data = JobDetailSerializer(job, context=self.get_serializer_context()).data
        return Response(data, status=status_code, headers={**self.job_headers(job), **headers})

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.correlation_id and CORRELATION_HEADER not in response:
            response[CORRELATION_HEADER] = self.correlation_id
        return response

    # -- endpoints -----------------------------------------------------------------------------
    def list(self, request: Request) -> Response:
        params = JobFilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        filters = params.validated_data
        jobs = self.get_queryset()
        if filters.get("status"):
            jobs = jobs.filter(status__in=filters["status"])
        if filters.get("type"):
            jobs = jobs.filter(type=filters["type"])
        if filters.get("created_after"):
            jobs = jobs.filter(created_at__gte=filters["created_after"])
        if filters.get("created_before"):
            jobs = jobs.filter(created_at__lt=filters["created_before"])
        page = self.paginate_queryset(jobs)
        return self.get_paginated_response(JobSerializer(page, many=True, context=self.get_serializer_context()).data)

    def create(self, request: Request) -> Response:
        self.correlation_id = correlation_id_from(request)
        submission = SubmitSerializer(data=body_object(request))
        submission.is_valid(raise_exception=True)
        data = submission.validated_data
        job, created = submit_or_get(
            data["type"],
            data["payload"],
            owner=request.user,
            tenant=tenant_of(request.user),
            idempotency_key=data.get("idempotency_key"),
            queue=data.get("queue"),
            countdown=data.get("countdown"),
            scheduled_for=data.get("scheduled_for"),
            correlation_id=self.correlation_id,
            by=request.user,
        )
        self.correlation_id = job.correlation_id
        job = self.get_job(str(job.pk))  # as stored: dispatched_at is set once the broker took it
        return self.detail_response(
            job, status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK, Location=self.job_url(job)
        )

    def retrieve(self, request: Request, pk: str) -> Response:
        wait = long_poll_wait(request)
        job = self.get_job(pk)
        if_none_match = request.headers.get("If-None-Match")
        matched = etag_matches(if_none_match, job.etag)
        if wait and not job.terminal and (matched or not if_none_match):
            with long_poll_slot(request.user):
                changed = self.wait_for_change(job, wait)
            if changed:
                return self.detail_response(self.get_job(pk))
        if matched:
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=self.job_headers(job))
        return self.detail_response(job)

    def wait_for_change(self, job: Job, seconds: int) -> bool:
        """Hold the request until the job's version moves (True) or ``seconds`` pass (False).

        Each check is one primary-key read in autocommit, so no transaction (and no snapshot, no
        lock) is held between checks; a job deleted or hidden meanwhile counts as a change, and
        the re-read that follows answers 404.
        """
        versions = self.get_queryset().filter(pk=job.pk).values_list("version", flat=True)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(LONG_POLL_INTERVAL, remaining))
            if versions.first() != job.version:
                return True
        return False

    @extend_schema(
        operation_id="jobs_cancel",
        summary="Cancel a job",
        description="Cancels a queued, running or retrying job (a running attempt stops at its next heartbeat).",
        request=CancelSerializer,
        parameters=[JOB_ID],
        responses={200: JobDetailSerializer, **error_responses(400, 401, 404, 409, 415)},
        examples=examples.CANCEL,
    )
    def cancel(self, request: Request, pk: str) -> Response:
        body = CancelSerializer(data=body_object(request))
        body.is_valid(raise_exception=True)
        job = self.get_job(pk)
        if job.terminal or not cancel(job, reason=body.validated_data["reason"]):
            current = Job.objects.filter(pk=job.pk).values_list("status", flat=True).first()
            raise Conflict(
                {"status": [f"the job is already {current}; only queued, running or retrying jobs can be cancelled"]}
            )
        return self.detail_response(self.get_job(pk))

    @extend_schema(
        operation_id="jobs_retry",
        summary="Run a failed or cancelled job again",
        description="Submits a new job with the same type, payload and queue, linked by `retry_of`.",
        request=None,
        parameters=[
            JOB_ID,
            OpenApiParameter(
                "Location", str, OpenApiParameter.HEADER, response=[202], description="The new job's URL."
            ),
        ],
        responses={
            202: OpenApiResponse(JobDetailSerializer, description="The new job."),
            **error_responses(401, 404, 409, 429),
        },
        examples=examples.RETRY,
    )
    def retry(self, request: Request, pk: str) -> Response:
        job = self.get_job(pk, Job.objects.visible_to(request.user))  # with its payload, to submit again
        if job.status not in RETRYABLE_STATUSES:
            raise Conflict({"status": [f"the job is {job.status}; only failed or cancelled jobs can be retried"]})
        try:
            new_job = rerun(job, owner=request.user, by=request.user)
        except SubmissionError as exc:  # e.g. its type or queue no longer exists
            raise Conflict(exc.errors) from None
        new_job = self.get_job(str(new_job.pk))
        return self.detail_response(new_job, status.HTTP_202_ACCEPTED, Location=self.job_url(new_job))

    def job_url(self, job: Job) -> str:
        return self.request.build_absolute_uri(reverse("api-job-detail", args=[str(job.pk)]))


class JobTypeListView(APIView):
    """The registered job types, for clients building submissions (and reading 400s)."""

    @extend_schema(
        summary="List job types",
        description=(
            "The job types this user may submit, each with the JSON Schema its `payload` must satisfy. "
            "Fields a schema does not declare are refused (400) unless the type accepts extra fields."
        ),
        responses={200: JobTypeSerializer(many=True), **error_responses(401)},
        examples=examples.JOB_TYPES,
    )
    def get(self, request: Request) -> Response:
        return Response(JobTypeSerializer(list(job_types_for(request.user).values()), many=True).data)


@extend_schema(exclude=True)
class NotFoundView(APIView):
    """Any other path under /api/: the 404 in the API's error shape (and 401 when not signed in)."""

    def not_found(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        detail = f"No API endpoint at {request.path}."
        if not request.path.endswith("/"):
            try:
                match = resolve(request.path + "/")
            except Resolver404:
                match = None
            if match is not None and match.url_name != "api-not-found":
                detail += f" Did you mean {request.path}/ (with the trailing slash)?"
        raise exceptions.NotFound(detail)

    get = post = put = patch = delete = head = options = not_found
