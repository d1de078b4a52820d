"""RabbitMQ's dead-letter exchange, drained into dead-letter records.

A consumer step of the worker's consumer (tasks.failure.poison.TerminusConsumer's blueprint): on
RabbitMQ, a worker that consumes ``dead_letter`` also drains the broker's dead-letter queue.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from kombu import Consumer as KombuConsumer
from kombu import Queue

from results.models import DeadLetterReason
from tasks.failure.dead_letters import DEAD_LETTER_QUEUE, poison_message, store

RAW_QUEUE = "dead_letter.raw"
AMQP_SCHEMES = ("amqp", "pyamqp")


class DeadLetterExchangeDrain(bootsteps.ConsumerStep):
    """RabbitMQ only, on workers that consume ``dead_letter``: records what the DLX collected."""

    def get_consumers(self, channel: Any) -> list[KombuConsumer]:
        app = self.app if hasattr(self, "app") else None
        if app is None or not str(app.conf.broker_url or "").startswith(AMQP_SCHEMES):
            return []
        consume_from = getattr(getattr(getattr(app, "amqp", None), "queues", None), "consume_from", {}) or {}
        if DEAD_LETTER_QUEUE not in consume_from:
            return []
        queue = app.amqp.queues[RAW_QUEUE] if RAW_QUEUE in app.amqp.queues else Queue(RAW_QUEUE)
        return [KombuConsumer(channel, queues=[queue], on_message=self.on_message, accept=[])]

    def start(self, c: Any) -> None:
        self.app = c.app
        super().start(c)

    def on_message(self, message: Any) -> None:
        """Record the raw message (never deserialized: it may be pickle), then ack it."""
        headers = dict(message.headers or {})
        death = (headers.get("x-death") or [{}])[0]
        record = poison_message(
            reason=DeadLetterReason.REJECTED,
            body=None,
            raw=message.body,
            headers=headers,
            queue=str(death.get("queue", "")),
            error=f"rejected by the broker ({death.get('reason', 'rejected')}) from queue {death.get('queue', '?')}",
        )
        store(record)
        message.ack()
