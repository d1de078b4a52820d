"""Validating a submission before anything is recorded: the job type's input model, and what JSON can store."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from pydantic import BaseModel, ValidationError

from tasks.runtime.types import JobType, get_job_type, job_types, job_types_for


class SubmissionError(Exception):
    """Bad input for a submission; ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, Any]):
        super().__init__(json.dumps(errors, default=str))
        self.errors = errors


class PayloadTooLarge(SubmissionError):
    pass


class IdempotencyKeyRetired(Exception):
    """The idempotency key submitted a job that the cleanup has deleted since: it is still reserved
    (results.models.RetiredKey), so the submission is refused, never run a second time."""

    def __init__(self, *, key: str, job_id: Any, job_status: str, reserved_until: Any):
        self.errors = {
            "idempotency_key": [
                f"already used by job {job_id} ({job_status}), since cleaned up; "
                f"the key is reserved until {reserved_until.isoformat()}"
            ]
        }
        self.job_id = job_id
        super().__init__(self.errors["idempotency_key"][0])


#: Deeper payloads exhaust the recursion of JSON encoders on the way to the worker.
MAX_PAYLOAD_DEPTH = 100


def storable_json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored and sent as a job payload, or None.

    PostgreSQL's jsonb refuses NUL characters (``\\u0000``) in strings and keys, which would
    otherwise surface as a database error on one backend and not the other; very deep nesting
    exhausts the recursion of every JSON encoder on the way to the worker; and a number JSON
    cannot represent (``1e999`` parses to infinity) would be stored changed or sent as a body no
    JSON parser accepts.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return f"must not be nested more than {MAX_PAYLOAD_DEPTH} levels deep"
        if isinstance(item, str):
            if "\x00" in item:
                return "must not contain NUL characters (\\u0000)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "must not contain numbers JSON cannot represent (too large: infinite, or NaN)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in str(key):
                    return "must not contain NUL characters (\\u0000)"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


def validate_payload(type_name: str, payload: Any, *, by: Any = None) -> dict[str, Any]:
    """The payload as the job type's schema normalises it, or SubmissionError with field errors.

    ``payload`` is a JSON object, or an instance of the job type's input model (the typed Python
    API: ``submit(SleepInput(seconds=3))``), checked again like a dict: a model built with
    ``model_construct`` or changed after it was built is not trusted as valid. A field the model
    does not declare is refused (``payload.<name>``: "unknown field"), unless the job type takes
    extra fields (``@job(extra_fields=True)``, or the model's own ``extra`` config).

    ``by``: the user submitting through a face (API, bulk, watch page, retry, replay). A type that
    user may not submit (tasks.runtime.types.Audience) is answered exactly as an unknown one, so
    its existence is not disclosed; code (``by=None``) may submit every type.
    """
    job_type = get_job_type(type_name)
    known = job_types() if by is None else job_types_for(by)
    if job_type is None or type_name not in known:
        raise SubmissionError({"type": [f"unknown job type {type_name!r}; known types: {', '.join(known)}"]})
    if isinstance(payload, BaseModel):
        payload = model_payload(job_type, payload)
    if not isinstance(payload, dict):
        raise SubmissionError({"payload": ["must be a JSON object"]})
    problem = storable_json_problem(payload)
    if problem:
        raise SubmissionError({"payload": [problem]})
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    if size > settings.TERMINUS_MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            {"payload": [f"payload is {size} bytes; the limit is {settings.TERMINUS_MAX_PAYLOAD_BYTES}"]}
        )
    try:
        data = job_type.input.model_validate(payload, extra=None if job_type.extra_fields else "forbid")
    except ValidationError as exc:
        raise SubmissionError(field_errors(job_type, exc)) from None
    return data.model_dump(mode="json")


def model_payload(job_type: JobType, model: BaseModel) -> dict[str, Any]:
    """An input model instance as the JSON object it stands for; one of another model is a 400."""
    if not isinstance(model, job_type.input):
        raise SubmissionError(
            {
                "payload": [
                    f"a {type(model).__name__} is not the input of {job_type.name}; "
                    f"it takes {job_type.input.__module__}.{job_type.input.__name__}"
                ]
            }
        )
    return model.model_dump(mode="json", by_alias=True)


def field_errors(job_type: JobType, exc: ValidationError) -> dict[str, list[str]]:
    """Pydantic's errors keyed ``payload.<field>``; an unknown top-level field names the fields there are."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
            if len(error["loc"]) == 1:
                message += f"; {job_type.name} takes: {', '.join(job_type.input.model_fields) or 'no fields'}"
        errors.setdefault(f"payload.{where}" if where != "payload" else where, []).append(message)
    return errors


def schedule_countdown(
    countdown: Any, scheduled_for: Any, *, now: datetime, errors: dict[str, list[str]]
) -> int | None:
    """The wait before the first attempt, whole seconds, from ``countdown`` or ``scheduled_for`` (an aware
    datetime or its ISO 8601 text): the one check of both, for submit(), the API and bulk items. A bad
    value adds its message to ``errors`` (keyed by the field) and gives None."""
    days = settings.TERMINUS_MAX_SCHEDULE_DAYS
    limit = days * 86400
    if scheduled_for is not None:
        when = parse_datetime(scheduled_for) if isinstance(scheduled_for, str) else scheduled_for
        if countdown is not None:
            errors["scheduled_for"] = ["give countdown or scheduled_for, not both"]
        elif not isinstance(when, datetime) or timezone.is_naive(when):
            errors["scheduled_for"] = ["must be an ISO 8601 date-time with a time zone, e.g. 2026-12-24T03:00:00Z"]
        elif (seconds := math.ceil((when - now).total_seconds())) > limit:
            errors["scheduled_for"] = [f"at most {days} days ahead (TERMINUS_MAX_SCHEDULE_DAYS)"]
        else:
            return max(0, seconds)  # a time already past starts the job at once
        return None
    if countdown is not None and (
        not isinstance(countdown, int) or isinstance(countdown, bool) or not 0 <= countdown <= limit
    ):
        errors["countdown"] = [f"must be a whole number of seconds between 0 and {limit} ({days} days)"]
        return None
    return countdown
