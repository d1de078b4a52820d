"""Poison messages: ones no task can run (undecodable, an unknown task name, malformed).

Celery logs and drops them (on Redis a reject deletes the message). The worker's consumer here
first turns each into a dead letter, so a human sees it. On RabbitMQ the ones Celery rejects (an
unknown task, a body that is not a task) also reach the broker's dead-letter exchange, whose queue
``dead_letter.raw`` is drained into the same records (one row per message, however it arrives) by
tasks.failure.dlx; an undecodable one Celery acknowledges, so only this consumer's record keeps it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from vine import promise as _promise

from results.models import DeadLetterReason
from tasks.failure.dead_letters import DEAD_LETTER_QUEUE, poison_message, record_dead_letter, record_repr, store

logger = logging.getLogger(__name__)


JSON_TYPES = {"application/json", "json"}


def dead_letter_poison(message: Any, *, reason: str, body: Any, error: str, raw: bool = False) -> None:
    """Publish a poison message as a dead letter; if even that fails, store it directly.

    A body in any content type but JSON is kept as raw bytes and never decoded: decoding pickle
    would run the sender's code.
    """
    delivery = getattr(message, "delivery_info", None) or {}
    if (getattr(message, "content_type", None) or "application/json") not in JSON_TYPES:
        reason, raw = DeadLetterReason.UNDECODABLE, True
        error = f"content type {message.content_type!r} refused (only JSON is accepted): {error}"
    elif body is None and not raw:
        try:
            body = message.decode()
        except Exception:  # noqa: BLE001 - a body that will not decode is kept raw
            raw = True
    record = poison_message(
        reason=reason,
        body=None if raw else body,
        raw=message.body if raw else None,
        headers=dict(getattr(message, "headers", None) or {}),
        queue=str(delivery.get("routing_key") or delivery.get("exchange") or ""),
        error=error,
        wire_body=message.body,
    )
    try:
        record_dead_letter.apply_async(
            kwargs=record, queue=DEAD_LETTER_QUEUE, argsrepr="()", kwargsrepr=record_repr(record)
        )
    except Exception:  # noqa: BLE001 - the broker refused: keep the evidence in the database
        logger.warning("could not publish poison message %s; storing it directly", record["message_key"])
        store(record)


def _is_task_body(body: Any) -> bool:
    """Protocol 2's body: [args, kwargs, embed]."""
    return (
        isinstance(body, list | tuple)
        and len(body) == 3
        and isinstance(body[0], list | tuple)
        and isinstance(body[1], dict)
        and (body[2] is None or isinstance(body[2], dict))
    )


class TerminusConsumer(Consumer):
    """Celery's consumer, recording poison messages as dead letters before rejecting them."""

    class Blueprint(Consumer.Blueprint):
        """Celery's consumer steps, plus the drain of RabbitMQ's dead-letter exchange (tasks.failure.dlx)."""

        default_steps = [*Consumer.Blueprint.default_steps, "tasks.failure.dlx:DeadLetterExchangeDrain"]

    def create_task_handler(self, promise: Any = _promise) -> Any:
        """Celery's handler; a message it would crash on (kombu trusts application/data and
        application/text; a body that is not [args, kwargs, embed]) becomes a dead letter instead."""
        handle = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            if "task" in (getattr(message, "headers", None) or {}):  # protocol 2
                if (message.content_type or "") not in JSON_TYPES:
                    return self.on_decode_error(
                        message, ContentDisallowed(f"content type {message.content_type!r} is not JSON")
                    )
                try:
                    body = message.decode()  # cached: the strategy reads the same payload
                except Exception as exc:  # noqa: BLE001 - any undecodable body is a poison message
                    return self.on_decode_error(message, exc)
                if not _is_task_body(body):
                    return self.on_invalid_task(
                        body, message, InvalidTaskError("task body is not [args, kwargs, embed]")
                    )
            return handle(message)

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        dead_letter_poison(
            message,
            reason=DeadLetterReason.UNDECODABLE,
            body=None,
            raw=True,
            error=f"{type(exc).__name__}: {exc} (content type {message.content_type!r})",
        )
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter_poison(message, reason=DeadLetterReason.INVALID, body=body, error="not a task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (getattr(message, "headers", None) or {}).get("task", "?")
        dead_letter_poison(
            message, reason=DeadLetterReason.UNKNOWN_TASK, body=body, error=f"no worker knows task {name!r}"
        )
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_poison(message, reason=DeadLetterReason.INVALID, body=body, error=f"{type(exc).__name__}: {exc}")
        super().on_invalid_task(body, message, exc)
