"""Validating a submission before anything is recorded: the job type's input model, and what JSON can store."""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings
from pydantic import ValidationError

from tasks.runtime.types import get_job_type, job_types, job_types_for


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

    ``by``: the user submitting through a face (API, bulk, watch page, retry, replay). A type that
    user may not submit (tasks.runtime.types.Audience) is answered exactly as an unknown one, so
    its existence is not disclosed; code (``by=None``) may submit every type.
    """
    job_type = get_job_type(type_name)
    known = job_types() if by is None else job_types_for(by)
    if job_type is None or type_name not in known:
        raise SubmissionError({"type": [f"unknown job type {type_name!r}; known types: {', '.join(known)}"]})
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
        data = job_type.input.model_validate(payload)
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "payload"
            errors.setdefault(f"payload.{where}" if where != "payload" else where, []).append(error["msg"])
        raise SubmissionError(errors) from None
    return data.model_dump(mode="json")
