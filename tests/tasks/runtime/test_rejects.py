"""Rejected messages: a job that rejects its message, and RabbitMQ's real dead-letter exchange."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from results.models import DeadLetter, DeadLetterReason, Status
from tasks.submit.outbox import submit
from tests.helpers import broker_kind, wait_for, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]


def broker_connection() -> Connection:
    from project.celery import app

    return Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options)


def test_a_job_that_rejects_its_own_message_fails_and_is_dead_lettered_once(worker):
    job = submit("diagnostics.fail", {"mode": "reject", "message": "cannot handle this"})
    done = wait_terminal(job.id)
    assert (done.status, done.error_type, done.error_message) == (Status.FAILED, "Rejected", "cannot handle this")
    letter = wait_for(lambda: DeadLetter.objects.filter(job_id=job.id).first(), what="the dead letter")
    assert letter.reason == DeadLetterReason.REJECTED
    # (on RabbitMQ the DLX copy of the same message lands in the same row)
    assert DeadLetter.objects.filter(message_key=str(job.id)).count() == 1
    assert letter.task_name == "diagnostics.fail" and letter.attempts == 1


def test_rabbitmq_dead_letters_a_rejected_message_through_its_exchange(worker):
    if not broker_kind().startswith("amqp"):
        pytest.skip("only RabbitMQ has a dead-letter exchange; Redis deletes rejected messages")
    # Given a work queue declared with the dead-letter exchange, as Terminus declares its queues
    name = f"drill-dlx-{uuid.uuid4().hex[:8]}"
    queue = Queue(
        name,
        Exchange(name, type="direct"),
        routing_key=name,
        queue_arguments={"x-dead-letter-exchange": "terminus.dlx", "x-dead-letter-routing-key": "dead_letter.raw"},
    )
    body = json.dumps({"not": "a task"}).encode()
    with broker_connection() as conn:
        channel = conn.channel()
        queue(channel).declare()
        Producer(channel).publish(body, exchange=queue.exchange, routing_key=name, content_type="application/json")
        # When a consumer rejects it without requeue (what Celery does with a poison message)
        rejected = []

        def reject(message):
            message.reject(requeue=False)
            rejected.append(message)

        with Consumer(channel, queues=[queue], on_message=reject, accept=[]):
            wait_for(lambda: conn.drain_events(timeout=1) or rejected, timeout=10, what="the message")
        queue(channel).delete()
    # Then the broker routed it to dead_letter.raw and a worker recorded it, never decoded
    key = "sha256:" + hashlib.sha256(body).hexdigest()
    letter = wait_for(lambda: DeadLetter.objects.filter(message_key=key).first(), what="the DLX record")
    assert letter.reason == DeadLetterReason.REJECTED
    assert name in letter.error_message
    assert letter.raw_body.startswith("base64:")


def test_a_message_that_is_not_a_task_is_recorded_once_on_every_broker(worker):
    body = json.dumps({"hello": "world"}).encode()
    with broker_connection() as conn:
        from project.celery import app

        Producer(conn).publish(
            body,
            routing_key="slow",
            content_type="application/json",
            declare=[app.amqp.queues["slow"]] if "slow" in app.amqp.queues else None,
        )
    key = "sha256:" + hashlib.sha256(body).hexdigest()
    letter = wait_for(lambda: DeadLetter.objects.filter(message_key=key).first(), what="the poison record")
    wait_for(lambda: DeadLetter.objects.get(pk=letter.pk).reason == DeadLetterReason.INVALID, what="the reason")
    assert DeadLetter.objects.filter(message_key=key).count() == 1
