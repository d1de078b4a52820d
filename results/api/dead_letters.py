"""The dead-letter API: see, replay and resolve what failed for good.

Jobs that fail for good, and broker messages that never became a job run (unknown task,
undecodable, malformed), are kept as ``DeadLetter`` rows by ``tasks.failure.dead_letters``. These
endpoints are the human side of that store; they call the same functions as the admin and
``manage.py deadletters`` (``replay``, ``resolve``, ``queue_stats``):

- ``GET /api/dead-letters/``: newest first, cursor-paginated, filtered (``DeadLetterFilterSerializer``).
- ``GET /api/dead-letters/stats/``: ``{"open", "oldest_age_seconds", "total"}`` for the caller's scope.
- ``GET /api/dead-letters/{id}/``: one dead letter, with its message and the alerts sent about it.
- ``POST /api/dead-letters/{id}/replay/``: run it again as a new job; 202 with the job, 200 with
  the same job when it was replayed before (never a second run), 409 when it cannot be replayed.
- ``POST /api/dead-letters/{id}/resolve/``: close it without running it; idempotent (200 again
  when already resolved), 409 when it was replayed.

Scope: staff without a tenant (and superusers) see every dead letter, poison messages included;
everyone else, tenant staff too, sees only dead letters of jobs they may see (their tenant's, or
their own without a tenant), so a message with no job is staff-only. Tracebacks and raw
(undecodable) bodies are shown to staff only. Errors have the API's one shape
(``results.api.errors``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Min, Prefetch, QuerySet
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from results.models import Alert, AlertStatus, DeadLetter, DeadLetterReason, DeadLetterStatus, Job
from results.querysets import DeadLetterQuerySet, sees_every_tenant
from tasks.failure.dead_letters import queue_stats
from tasks.runtime.types import redacted_message_body
from tasks.submit.actions import ReplayError, replay, resolve
from tasks.submit.validation import PayloadTooLarge, SubmissionError

from . import examples
from .errors import Conflict
from .pagination import JobCursorPagination
from .parsers import LimitedJSONParser
from .responses import error_responses
from .serializers import (
    CommaSeparatedChoiceField,
    JobDetailSerializer,
    QueryParametersSerializer,
    check_query_parameters,
)
from .throttling import SubmitRateThrottle
from .views import body_object

#: Largest id PostgreSQL's bigint holds: a longer number names no dead letter (404, not a 500).
MAX_ID = 2**63 - 1
#: Longest ``?older_than=`` (seconds), as ``manage.py deadletters --older-than``: 100 years.
OLDER_THAN_MAX = 100 * 365 * 86400


DEAD_LETTER_ID = OpenApiParameter(
    "id", int, OpenApiParameter.PATH, description="The dead letter's id (404 if unknown or not a number)."
)


# -- helpers -------------------------------------------------------------------------------------
def _is_staff(context: dict[str, Any]) -> bool:
    user = getattr(context.get("request"), "user", None)
    return bool(user is not None and user.is_staff)


# -- serializers -------------------------------------------------------------------------------
def status_field(choices: type[DeadLetterStatus] | type[AlertStatus], help_text: str) -> serializers.ChoiceField:
    """A read-only status with its values inlined in the schema.

    Jobs, dead letters and alerts each have a ``status`` with its own values; as named enum
    components they would collide on the name ``StatusEnum``.
    """
    inline = type(f"{choices.__name__}Field", (serializers.ChoiceField,), {})  # annotate a subclass, not DRF's own
    inline = extend_schema_field(
        {"type": "string", "enum": list(choices.values)}, component_name=f"{choices.__name__}Enum"
    )(inline)
    return inline(choices=choices.choices, read_only=True, help_text=help_text)


class DeadLetterAlertSerializer(serializers.ModelSerializer):
    """One alert sent (or being sent) about the dead letter, on one channel."""

    status = status_field(AlertStatus, "pending, sent, failed (retried) or suppressed.")
    error = serializers.SerializerMethodField(help_text="Why the channel refused it; staff only, null for others.")

    class Meta:
        model = Alert
        fields = ("channel", "status", "count", "subject", "created_at", "sent_at", "error")
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_error(self, alert: Alert) -> str | None:
        return alert.error if _is_staff(self.context) else None


class DeadLetterSerializer(serializers.ModelSerializer):
    """A dead letter as the list shows it.

    ``job`` is the failed job (poll it at ``/api/jobs/{job}/``), null for a message that never
    became a job run; ``replay_job`` is the job a replay created. Empty strings mean "none".
    """

    job = serializers.UUIDField(
        source="job_id", read_only=True, allow_null=True, help_text="The failed job; null for a poison message."
    )
    type = serializers.CharField(
        source="task_name", read_only=True, help_text="The job type (for a poison message: the task it named)."
    )
    status = status_field(DeadLetterStatus, "open (waiting for a human), replayed or resolved.")
    replay_job = serializers.UUIDField(
        source="replay_job_id", read_only=True, allow_null=True, help_text="The job a replay created, if any."
    )

    class Meta:
        model = DeadLetter
        fields = (
            "id",
            "job",
            "type",
            "queue",
            "reason",
            "status",
            "error_type",
            "error_message",
            "attempts",
            "first_failed_at",
            "last_failed_at",
            "created_at",
            "alerted_at",
            "replay_job",
            "replayed_at",
            "resolved_at",
            "resolved_by",
            "message_key",
        )
        read_only_fields = fields


class DeadLetterDetailSerializer(DeadLetterSerializer):
    """A dead letter with its message (body, headers) and the alerts sent about it.

    ``body.kwargs`` is the payload a replay runs unless the replay sends its own. ``traceback``
    and ``raw_body`` (an undecodable message, base64) are shown to staff only, null for others.
    """

    traceback = serializers.SerializerMethodField(help_text="Staff only; null for other users.")
    body = serializers.SerializerMethodField(
        help_text="The message's args and kwargs; the job type's secret fields (webhook headers) show as [redacted]."
    )
    raw_body = serializers.SerializerMethodField(help_text="An undecodable body (base64); staff only.")
    alerts = DeadLetterAlertSerializer(many=True, read_only=True, help_text="Oldest first.")

    class Meta(DeadLetterSerializer.Meta):
        fields = (*DeadLetterSerializer.Meta.fields, "traceback", "body", "raw_body", "headers", "alerts")
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_traceback(self, letter: DeadLetter) -> str | None:
        return letter.traceback if _is_staff(self.context) else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_raw_body(self, letter: DeadLetter) -> str | None:
        return letter.raw_body if _is_staff(self.context) else None

    @extend_schema_field(serializers.JSONField(allow_null=True))
    def get_body(self, letter: DeadLetter) -> Any:
        return redacted_message_body(letter.task_name, letter.body)


class DeadLetterStatsSerializer(serializers.Serializer):
    open = serializers.IntegerField(help_text="Dead letters waiting for a human.")
    oldest_age_seconds = serializers.FloatField(help_text="Age of the oldest open one; 0 when none is open.")
    total = serializers.IntegerField(help_text="All dead letters kept (open, replayed and resolved).")


class DeadLetterFilterSerializer(QueryParametersSerializer):
    """Query parameters of ``GET /api/dead-letters/``; a bad or unknown one is a 400 keyed by its name."""

    status = CommaSeparatedChoiceField(
        choices=DeadLetterStatus, required=False, help_text="open, replayed, resolved (comma-separated or repeated)."
    )
    type = serializers.CharField(required=False, max_length=200, help_text="Only this job type (exact).")
    error_type = serializers.CharField(
        required=False, max_length=200, help_text="Only this error type (exact), e.g. PermanentError."
    )
    reason = CommaSeparatedChoiceField(
        choices=DeadLetterReason, required=False, help_text="Only these reasons (comma-separated or repeated)."
    )
    job = serializers.UUIDField(required=False, help_text="The dead letter of this job id.")
    created_after = serializers.DateTimeField(required=False, help_text="Dead-lettered at or after (ISO 8601).")
    created_before = serializers.DateTimeField(required=False, help_text="Dead-lettered before (ISO 8601).")
    older_than = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=OLDER_THAN_MAX,
        help_text=f"Dead-lettered more than this many seconds ago (0 to {OLDER_THAN_MAX}: 100 years).",
    )
    # The paginator's own parameters, declared because any other parameter is refused as a typo.
    cursor = serializers.CharField(required=False, help_text="Opaque; take it from next/previous.")
    page_size = serializers.IntegerField(
        required=False, min_value=1, help_text="Dead letters per page (default 50); above 500 counts as 500."
    )

    def filter(self, letters: DeadLetterQuerySet) -> DeadLetterQuerySet:
        """``letters`` narrowed by the validated parameters (all of them combine with AND)."""
        data = self.validated_data
        older_than = data.get("older_than")
        return letters.matching(
            statuses=data.get("status"),
            reasons=data.get("reason"),
            task_name=data.get("type"),
            error_type=data.get("error_type"),
            job=data.get("job"),
            created_after=data.get("created_after"),
            created_before=data.get("created_before"),
            older_than=timedelta(seconds=older_than) if older_than is not None else None,
        )


class ReplaySerializer(serializers.Serializer):
    """Optional body of ``POST /api/dead-letters/{id}/replay/``."""

    payload = serializers.JSONField(
        required=False,
        help_text=(
            "Replaces the original input; validated like a new submission (400 with payload.<field> "
            "errors). Without it the original payload runs again."
        ),
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["unknown field; allowed: payload"] for name in unknown})
        return attrs


def no_query_parameters(request: Request) -> None:
    check_query_parameters(request.query_params)


# -- views -------------------------------------------------------------------------------------
class DeadLetterViewSet(viewsets.GenericViewSet):
    """Dead letters of the jobs the user may see (all of them for staff without a tenant)."""

    serializer_class = DeadLetterSerializer
    pagination_class = JobCursorPagination
    parser_classes = [LimitedJSONParser]
    throttle_classes = [SubmitRateThrottle]
    queryset = DeadLetter.objects.none()  # for schema generation; requests use get_queryset()

    @property
    def throttle_scope(self) -> str | None:
        """A replay submits a job: it counts against the same rate as submissions."""
        return "submit" if getattr(self, "action", None) == "replay" else None

    def get_queryset(self) -> QuerySet[DeadLetter]:
        return DeadLetter.objects.visible_to(self.request.user)

    def get_letter(self, pk: str) -> DeadLetter:
        """The dead letter, or 404 alike for a malformed id, an unknown id and one the user may not see."""
        not_found = exceptions.NotFound(f"No dead letter {pk}.")
        if not (pk.isascii() and pk.isdigit()) or int(pk) > MAX_ID:
            raise not_found
        letter = self.get_queryset().filter(pk=int(pk)).first()
        if letter is None:
            raise not_found
        return letter

    def detail_response(self, letter: DeadLetter) -> Response:
        alerts = Prefetch("alerts", queryset=Alert.objects.order_by("created_at", "pk"))
        letter = DeadLetter.objects.prefetch_related(alerts).get(pk=letter.pk)
        data = DeadLetterDetailSerializer(letter, context=self.get_serializer_context()).data
        return Response(data)

    # -- endpoints -----------------------------------------------------------------------------
    @extend_schema(
        summary="List dead letters",
        description=(
            "Jobs (and messages) that failed for good, newest first, cursor-paginated: follow `next` "
            "until it is null. Filters combine with AND; `older_than` (seconds) and "
            "`created_after`/`created_before` (ISO 8601) both filter on when the dead letter was "
            "recorded. An unknown parameter or a bad value is a 400. Staff without a tenant see "
            "every dead letter; other users those of their tenant's jobs (or their own jobs)."
        ),
        parameters=[DeadLetterFilterSerializer],
        responses={200: DeadLetterSerializer(many=True), **error_responses(400, 401, resource="dead letter")},
        examples=examples.DEAD_LETTERS,
    )
    def list(self, request: Request) -> Response:
        params = DeadLetterFilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        # The list never shows them: traceback, message body and headers stay on the detail page.
        letters = params.filter(self.get_queryset()).defer("traceback", "body", "raw_body", "headers")
        page = self.paginate_queryset(letters)
        serializer = DeadLetterSerializer(page, many=True, context=self.get_serializer_context())
        return self.get_paginated_response(serializer.data)

    @extend_schema(
        operation_id="dead_letters_stats",
        summary="Dead-letter queue figures",
        description=(
            "For monitoring: open dead letters, the age of the oldest open one (seconds) and the total "
            "kept. Staff without a tenant get the whole store's figures; other users the figures of "
            "the dead letters they can see."
        ),
        responses={200: DeadLetterStatsSerializer, **error_responses(400, 401, resource="dead letter")},
        examples=examples.DEAD_LETTER_STATS,
    )
    def stats(self, request: Request) -> Response:
        no_query_parameters(request)
        everything = sees_every_tenant(request.user)
        figures = queue_stats() if everything else scoped_stats(self.get_queryset())
        return Response(DeadLetterStatsSerializer(figures).data)

    @extend_schema(
        summary="Inspect a dead letter",
        description=(
            "The dead letter with its message (`body`, `headers`), failure window and the alerts sent "
            "about it. `body.kwargs` is the payload a replay runs unless the replay sends its own."
        ),
        parameters=[DEAD_LETTER_ID],
        responses={200: DeadLetterDetailSerializer, **error_responses(400, 401, 404, resource="dead letter")},
        examples=examples.DEAD_LETTER_INSPECT,
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        no_query_parameters(request)
        return self.detail_response(self.get_letter(pk))

    @extend_schema(
        operation_id="dead_letters_replay",
        summary="Replay a dead letter as a new job",
        description=(
            "Submits a new job of the same type (fresh retry budget, same tenant, queue and correlation "
            "id), linked to the failed job by `retry_of`, and marks the dead letter replayed. 202 with "
            "the new job; poll it at `Location`. Replaying again answers 200 with the same job and runs "
            "nothing. An edited `payload` is validated like a submission (400 with `payload.<field>` "
            "errors). 409 when the dead letter is resolved, names no known job type, or its original "
            "payload no longer validates (send an edited one)."
        ),
        request=ReplaySerializer,
        parameters=[
            DEAD_LETTER_ID,
            OpenApiParameter(
                "Location", str, OpenApiParameter.HEADER, response=[200, 202], description="The replay job's URL."
            ),
        ],
        responses={
            202: OpenApiResponse(JobDetailSerializer, description="The new job."),
            200: OpenApiResponse(JobDetailSerializer, description="The job of an earlier replay; nothing new runs."),
            **error_responses(400, 401, 404, 409, 413, 415, 429, resource="dead letter"),
        },
        examples=examples.REPLAY,
    )
    def replay(self, request: Request, pk: str) -> Response:
        body = ReplaySerializer(data=body_object(request))
        body.is_valid(raise_exception=True)
        payload = body.validated_data.get("payload")
        letter = self.get_letter(pk)
        try:
            # The original job's owner keeps the replay (so its users see it); a message with no
            # job (staff-only) is owned by whoever replays it.
            job, created = replay(
                letter, payload=payload, owner=None if letter.job_id else request.user, by=request.user
            )
        except ReplayError as exc:
            current = DeadLetter.objects.filter(pk=letter.pk).values_list("status", flat=True).first()
            raise Conflict({"status" if current != DeadLetterStatus.OPEN else "type": [str(exc)]}) from None
        except PayloadTooLarge:
            raise  # 413 (results.api.errors)
        except SubmissionError as exc:
            if payload is not None:
                raise  # the client's payload: 400 with its field errors (results.api.errors)
            raise Conflict(
                exc.errors,
                detail="The dead letter's original input can no longer be submitted; replay it with an edited payload.",
            ) from None
        job = Job.objects.get(pk=job.pk)  # as stored: dispatched_at is set once the broker took it
        data = JobDetailSerializer(job, context=self.get_serializer_context()).data
        location = request.build_absolute_uri(reverse("api-job-detail", args=[str(job.pk)]))
        return Response(
            data, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK, headers={"Location": location}
        )

    @extend_schema(
        operation_id="dead_letters_resolve",
        summary="Resolve a dead letter",
        description=(
            "Closes it without running anything (a human decided nothing more is needed) and records "
            "who did. Idempotent: resolving a resolved dead letter answers 200 and changes nothing. "
            "409 when it was replayed (its replay job is the outcome)."
        ),
        request=None,
        parameters=[DEAD_LETTER_ID],
        responses={200: DeadLetterDetailSerializer, **error_responses(401, 404, 409, resource="dead letter")},
        examples=examples.RESOLVE,
    )
    def resolve(self, request: Request, pk: str) -> Response:
        letter = self.get_letter(pk)
        if letter.status == DeadLetterStatus.OPEN:
            resolve(letter, by=request.user.get_username())  # guarded: a replay may win the race
            letter = DeadLetter.objects.get(pk=letter.pk)
        if letter.status == DeadLetterStatus.REPLAYED:
            raise Conflict(
                {
                    "status": [
                        f"dead letter {letter.pk} was replayed as job {letter.replay_job_id}; "
                        "only open dead letters can be resolved"
                    ]
                }
            )
        return self.detail_response(letter)


def scoped_stats(letters: QuerySet[DeadLetter]) -> dict[str, Any]:
    """``queue_stats()`` over the dead letters one user can see."""
    open_letters = letters.filter(status=DeadLetterStatus.OPEN)
    oldest = open_letters.aggregate(oldest=Min("created_at"))["oldest"]
    return {
        "open": open_letters.count(),
        "oldest_age_seconds": (timezone.now() - oldest).total_seconds() if oldest else 0.0,
        "total": letters.count(),
    }
