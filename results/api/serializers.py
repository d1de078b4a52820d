"""What goes over the wire: the submission, the job as clients poll it, list filters, job types.

Errors from any of these reach the client in the one shape of ``results.api.errors``:
``{"detail": "...", "errors": {"<field>": ["<message>"]}}`` with status 400 (413 when too large).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from results.models import Job, JobAttempt, Status
from tasks.submit.validation import storable_json_problem


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of turning them into strings."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class SubmitSerializer(serializers.Serializer):
    """Body of ``POST /api/jobs/``.

    ``type`` must be a registered job type (``GET /api/job-types/``) and ``payload`` an object
    valid for its input schema; schema errors come back keyed ``payload.<field>``. Unknown
    top-level fields are refused (a typo such as ``paylod`` must not be silently ignored).
    Errors: 400 ``{"detail", "errors"}``; 413 when the payload or the body is over its limit.
    """

    type = StrictCharField(max_length=100, help_text="A registered job type, e.g. diagnostics.sleep.")
    payload = serializers.JSONField(help_text="The job's input: a JSON object valid for the type's input schema.")
    idempotency_key = StrictCharField(
        max_length=255,
        required=False,
        allow_null=True,
        help_text="Same key again (same tenant, or same user without a tenant) returns the first job with 200.",
    )
    queue = StrictCharField(
        max_length=100,
        required=False,
        allow_null=True,
        help_text=f"Broker queue; default: the type's own. Known: {', '.join(settings.TERMINUS_QUEUES)}.",
    )
    countdown = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text=(
            f"Seconds to wait before the first attempt, 0 to {settings.TERMINUS_MAX_SCHEDULE_DAYS} days "
            "(TERMINUS_MAX_SCHEDULE_DAYS); the job is recorded at once, queued, due at scheduled_for."
        ),
    )
    scheduled_for = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text=(
            "When the first attempt may start (ISO 8601 with a time zone), instead of countdown: at most "
            f"{settings.TERMINUS_MAX_SCHEDULE_DAYS} days ahead; a time already past starts it at once."
        ),
    )

    def validate_payload(self, payload: Any) -> Any:
        problem = storable_json_problem(payload)
        if problem:
            raise serializers.ValidationError(problem)
        return payload

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            allowed = ", ".join(self.fields)
            raise serializers.ValidationError({name: [f"unknown field; allowed: {allowed}"] for name in unknown})
        return attrs


class CancelSerializer(serializers.Serializer):
    """Optional body of ``POST /api/jobs/{id}/cancel/``."""

    reason = StrictCharField(
        max_length=500,
        required=False,
        default="cancelled by request",
        help_text="Stored as the job's error_message.",
    )


class JobAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobAttempt
        fields = ("number", "worker", "started_at", "finished_at", "outcome", "error_type", "error_message")
        read_only_fields = fields


class JobSerializer(serializers.ModelSerializer):
    """A job as the list shows it: everything but its attempt history.

    ``attempt`` of ``max_attempts`` is "attempt k of n" (0 until the first attempt starts;
    n = max_retries + 1). ``traceback`` is shown to staff only and is null for everyone else.
    Empty strings in error_type, error_message, worker and progress_message mean "none".
    """

    terminal = serializers.BooleanField(read_only=True, help_text="True once succeeded, failed or cancelled.")
    attempt = serializers.IntegerField(source="attempts", read_only=True, help_text="k in 'attempt k of n'.")
    max_attempts = serializers.SerializerMethodField(help_text="n in 'attempt k of n': max_retries + 1.")
    traceback = serializers.SerializerMethodField(help_text="Staff only; null for other users.")
    retry_of = serializers.UUIDField(
        source="retry_of_id", read_only=True, allow_null=True, help_text="The job this one runs again, if any."
    )
    scheduled_for = serializers.SerializerMethodField(
        help_text="While queued with a countdown or scheduled_for: when its first attempt is due; else null."
    )

    class Meta:
        model = Job
        fields = (
            "id",
            "type",
            "queue",
            "status",
            "terminal",
            "attempts",
            "max_retries",
            "attempt",
            "max_attempts",
            "next_retry_at",
            "scheduled_for",
            "heartbeat_at",
            "terminal_by",
            "progress",
            "progress_message",
            "result",
            "error_type",
            "error_message",
            "traceback",
            "worker",
            "correlation_id",
            "idempotency_key",
            "retry_of",
            "created_at",
            "dispatched_at",
            "started_at",
            "finished_at",
        )
        read_only_fields = fields

    def get_max_attempts(self, job: Job) -> int:
        return job.max_retries + 1

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_scheduled_for(self, job: Job) -> str | None:
        if job.status != Status.QUEUED or job.next_retry_at is None:
            return None
        return serializers.DateTimeField().to_representation(job.next_retry_at)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_traceback(self, job: Job) -> str | None:
        request = self.context.get("request")
        user = getattr(request, "user", None)
        return job.traceback if user is not None and user.is_staff else None


class JobDetailSerializer(JobSerializer):
    """A job as ``GET /api/jobs/{id}/`` shows it: with every attempt, oldest first."""

    attempt_history = JobAttemptSerializer(
        many=True,
        read_only=True,
        help_text="One entry per attempt, oldest first; while the job runs, the last one is 'running'.",
    )

    class Meta(JobSerializer.Meta):
        fields = (*JobSerializer.Meta.fields, "attempt_history")
        read_only_fields = fields


# -- query parameters ----------------------------------------------------------------------------
def check_query_parameters(
    params: Any, allowed: Iterable[str] = (), repeatable: Iterable[str] = (), *, empty_checked: Iterable[str] = ()
) -> None:
    """400 keyed by each query parameter that is unknown, empty or given more than once.

    The one check every endpoint applies to its query string before reading it: a typo
    (``?stauts=``) or an empty value (``?type=`` from an unset variable) would otherwise be read as
    "not given" and widen a list, and a repeated single-valued parameter (``?type=a&type=b``) as
    one of its values, silently. Only the ``repeatable`` parameters (lists) may be repeated; an
    empty ``empty_checked`` parameter is left to its caller, whose own message is more precise.
    """
    allowed, repeatable, empty_checked = list(allowed), set(repeatable), set(empty_checked)
    getlist = getattr(params, "getlist", lambda name: [params[name]])
    errors: dict[str, list[str]] = {}
    for name in sorted(params):
        values = getlist(name)
        if name not in allowed:
            hint = f"allowed: {', '.join(allowed)}" if allowed else "this endpoint takes none"
            errors[name] = [f"unknown query parameter; {hint}"]
        elif name not in empty_checked and not any(str(value).strip() for value in values):
            errors[name] = ["must not be empty; leave the parameter out"]
        elif len(values) > 1 and name not in repeatable:
            errors[name] = [f"give {name} once"]
    if errors:
        raise serializers.ValidationError(errors)


class CommaSeparatedChoiceField(serializers.ListField):
    """``?status=open,replayed`` or ``?status=open&status=replayed``; errors name the bad value."""

    default_error_messages = {"unknown_value": "unknown value {value!r}; known: {known}"}

    def __init__(self, *, choices: type[models.TextChoices], **kwargs: Any):
        self.known = list(choices.values)
        super().__init__(child=serializers.ChoiceField(choices=choices.choices), **kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        values = [data] if isinstance(data, str) else list(data)
        split = [part.strip() for value in values for part in str(value).split(",") if part.strip()]
        for value in split:
            if value not in self.known:
                self.fail("unknown_value", value=value, known=", ".join(self.known))
        return super().to_internal_value(split)


class QueryParametersSerializer(serializers.Serializer):
    """Query parameters of a list: the declared fields only, each non-empty, lists alone repeated.

    A bad value is a 400 keyed by the parameter; ``created_after`` must come before
    ``created_before`` when a subclass declares both.
    """

    def to_internal_value(self, data: Any) -> Any:
        repeatable = [name for name, field in self.fields.items() if isinstance(field, serializers.ListField)]
        check_query_parameters(data, allowed=self.fields, repeatable=repeatable)
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after is not None and before is not None and after >= before:
            raise serializers.ValidationError({"created_before": ["must be later than created_after"]})
        return attrs


class JobFilterSerializer(QueryParametersSerializer):
    """Query parameters of ``GET /api/jobs/``; a bad value is a 400 keyed by the parameter."""

    status = CommaSeparatedChoiceField(
        choices=Status, required=False, help_text="Only jobs in these statuses (comma-separated or repeated)."
    )
    type = serializers.CharField(required=False, max_length=100, help_text="Only jobs of this type.")
    created_after = serializers.DateTimeField(required=False, help_text="Created at or after (ISO 8601).")
    created_before = serializers.DateTimeField(required=False, help_text="Created before (ISO 8601).")
    # The paginator's own parameters, declared because any other parameter is refused as a typo.
    cursor = serializers.CharField(required=False, help_text="Opaque; take it from next/previous.")
    page_size = serializers.IntegerField(
        required=False, min_value=1, help_text="Jobs per page (default 50); above 500 counts as 500."
    )


class JobTypeSerializer(serializers.Serializer):
    """A registered job type; ``input_schema`` is the JSON Schema its payload must satisfy."""

    name = serializers.CharField()
    queue = serializers.CharField()
    max_retries = serializers.IntegerField(source="retry.max_retries")
    time_limit = serializers.IntegerField(help_text="Hard time limit of one attempt, seconds.")
    soft_time_limit = serializers.IntegerField()
    description = serializers.CharField()
    input_schema = serializers.SerializerMethodField(help_text="JSON Schema of the payload (pydantic).")

    def get_input_schema(self, job_type: Any) -> dict[str, Any]:
        return job_type.input.model_json_schema()


class ErrorSerializer(serializers.Serializer):
    """The body of every error response (see results.api.errors)."""

    detail = serializers.CharField(help_text="One human-readable sentence.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Field -> messages; {} when no field is to blame.",
    )
