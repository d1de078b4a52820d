"""Example requests and answers shown by /api/docs/ and /api/redoc/ (the OpenAPI schema's ``examples``)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample

_JOB_ID = "7f9c1f8e-3c1a-4c57-9a57-8f0e6f7f6f2b"

#: A job as a poll returns it, while it runs.
JOB = {
    "id": _JOB_ID,
    "type": "diagnostics.sleep",
    "queue": "default",
    "status": "running",
    "terminal": False,
    "attempts": 1,
    "max_retries": 5,
    "attempt": 1,
    "max_attempts": 6,
    "next_retry_at": None,
    "heartbeat_at": "2026-01-05T10:00:02Z",
    "terminal_by": "2026-01-05T11:40:00Z",
    "progress": 0.4,
    "progress_message": "",
    "result": None,
    "error_type": "",
    "error_message": "",
    "traceback": None,
    "worker": "celery@worker-1",
    "correlation_id": "checkout-4711",
    "idempotency_key": "order-4711-receipt",
    "retry_of": None,
    "created_at": "2026-01-05T10:00:00Z",
    "dispatched_at": "2026-01-05T10:00:00Z",
    "started_at": "2026-01-05T10:00:01Z",
    "finished_at": None,
}
JOB_DETAIL = {
    **JOB,
    "attempt_history": [
        {
            "number": 1,
            "worker": "celery@worker-1",
            "started_at": "2026-01-05T10:00:01Z",
            "finished_at": None,
            "outcome": "running",
            "error_type": "",
            "error_message": "",
        }
    ],
}
QUEUED = {**JOB_DETAIL, "status": "queued", "attempts": 0, "attempt": 0, "progress": None, "worker": "",
          "heartbeat_at": None, "started_at": None, "attempt_history": []}  # fmt: skip

SUBMIT = [
    OpenApiExample(
        "Sleep 5 seconds",
        value={"type": "diagnostics.sleep", "payload": {"seconds": 5}, "idempotency_key": "order-4711-receipt"},
        request_only=True,
    ),
    OpenApiExample(
        "Deliver a webhook in 10 minutes",
        value={
            "type": "webhook.deliver",
            "payload": {"url": "https://hooks.example.com/orders", "body": {"order": 4711}},
            "countdown": 600,
        },
        request_only=True,
    ),
    OpenApiExample("Accepted", value=QUEUED, response_only=True, status_codes=["202", "200"]),
]
POLL = [OpenApiExample("Running", value=JOB_DETAIL, response_only=True, status_codes=["200"])]
LIST = [
    OpenApiExample(
        "A page",
        value={"next": "https://terminus.example.com/api/jobs/?cursor=cD0yMDI2", "previous": None, "results": [JOB]},
        response_only=True,
        status_codes=["200"],
    )
]
CANCEL = [
    OpenApiExample("With a reason", value={"reason": "the order was refunded"}, request_only=True),
    OpenApiExample(
        "Cancelled",
        value={**JOB_DETAIL, "status": "cancelled", "terminal": True, "error_message": "the order was refunded"},
        response_only=True,
        status_codes=["200"],
    ),
]
RETRY = [OpenApiExample("The new job", value={**QUEUED, "retry_of": _JOB_ID}, response_only=True, status_codes=["202"])]
BULK = [
    OpenApiExample(
        "Two jobs",
        value={
            "jobs": [
                {"type": "diagnostics.sleep", "payload": {"seconds": 1}},
                {"type": "diagnostics.sleep", "payload": {"seconds": 2}, "queue": "slow", "countdown": 30},
            ]
        },
        request_only=True,
    ),
    OpenApiExample(
        "Accepted",
        value={
            "count": 1,
            "correlation_id": "b5a1f0c2d3e44f5a8b9c0d1e2f3a4b5c",
            "jobs": [{"id": _JOB_ID, "type": "diagnostics.sleep", "status": "queued", "url": f"/api/jobs/{_JOB_ID}/"}],
        },
        response_only=True,
        status_codes=["202"],
    ),
]
JOB_TYPES = [
    OpenApiExample(
        "One type",
        value=[
            {
                "name": "diagnostics.sleep",
                "queue": "default",
                "max_retries": 5,
                "time_limit": 3600,
                "soft_time_limit": 3599,
                "description": "Sleep for ``seconds`` reporting progress; idempotent (no side effects).",
                "input_schema": {
                    "title": "SleepInput",
                    "type": "object",
                    "properties": {"seconds": {"type": "number", "default": 0, "minimum": 0, "maximum": 3600}},
                },
            }
        ],
        response_only=True,
        status_codes=["200"],
    )
]
REPLAY = [
    OpenApiExample("The original payload again", value={}, request_only=True),
    OpenApiExample("An edited payload", value={"payload": {"mode": "times", "times": 1}}, request_only=True),
    OpenApiExample(
        "The new job",
        value={**QUEUED, "type": "diagnostics.fail", "retry_of": _JOB_ID},
        response_only=True,
        status_codes=["202", "200"],
    ),
]
DEAD_LETTER_STATS = [
    OpenApiExample(
        "Figures",
        value={"open": 3, "oldest_age_seconds": 5400.0, "total": 41},
        response_only=True,
        status_codes=["200"],
    )
]
#: A dead letter as the list shows it.
DEAD_LETTER = {
    "id": 12,
    "job": _JOB_ID,
    "type": "webhook.deliver",
    "queue": "default",
    "reason": "retries_exhausted",
    "status": "open",
    "error_type": "WebhookError",
    "error_message": "the receiver answered 503",
    "attempts": 6,
    "first_failed_at": "2026-01-05T10:00:03Z",
    "last_failed_at": "2026-01-05T10:21:40Z",
    "created_at": "2026-01-05T10:21:40Z",
    "alerted_at": "2026-01-05T10:21:41Z",
    "replay_job": None,
    "replayed_at": None,
    "resolved_at": None,
    "resolved_by": "",
    "message_key": "",
}
DEAD_LETTER_DETAIL = {
    **DEAD_LETTER,
    "traceback": None,
    "body": {"args": [], "kwargs": {"url": "https://hooks.example.com/orders", "headers": "[redacted]"}},
    "raw_body": None,
    "headers": {"correlation_id": "checkout-4711"},
    "alerts": [
        {
            "channel": "webhook",
            "status": "sent",
            "count": 1,
            "subject": "webhook.deliver failed for good",
            "created_at": "2026-01-05T10:21:41Z",
            "sent_at": "2026-01-05T10:21:41Z",
            "error": None,
        }
    ],
}
DEAD_LETTERS = [
    OpenApiExample(
        "A page",
        value={"next": None, "previous": None, "results": [DEAD_LETTER]},
        response_only=True,
        status_codes=["200"],
    )
]
DEAD_LETTER_INSPECT = [
    OpenApiExample("Open", value=DEAD_LETTER_DETAIL, response_only=True, status_codes=["200"]),
]
RESOLVE = [
    OpenApiExample(
        "Resolved",
        value={**DEAD_LETTER_DETAIL, "status": "resolved", "resolved_at": "2026-01-05T11:00:00Z", "resolved_by": "ada"},
        response_only=True,
        status_codes=["200"],
    )
]
