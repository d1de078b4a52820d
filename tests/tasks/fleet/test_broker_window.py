"""The broker's redelivery window outlasts every job: refused at start when it would not, declared on
RabbitMQ's work queues, and a RabbitMQ too old to honour the declaration is named at worker start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

from project.celery import app
from tasks.fleet.broker_window import consumer_timeout_advice, rabbitmq_version
from tests.helpers import ROOT, broker_kind, wait_for

pytestmark = [pytest.mark.rabbitmq]


def test_a_redelivery_window_shorter_than_the_longest_job_is_refused_at_start():
    env = {**os.environ, "CELERY_VISIBILITY_TIMEOUT": "3000", "TERMINUS_MAX_TIME_LIMIT": "3600"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "CELERY_VISIBILITY_TIMEOUT (3000) must exceed TERMINUS_MAX_TIME_LIMIT (3600)" in result.stderr


def test_the_rabbitmq_work_queues_carry_the_redelivery_window_as_their_consumer_timeout():
    if not broker_kind().startswith("amqp"):
        pytest.skip("x-consumer-timeout is a RabbitMQ queue argument")
    expected = settings.CELERY_VISIBILITY_TIMEOUT * 1000
    for queue in settings.CELERY_TASK_QUEUES:
        if queue.name != "dead_letter.raw":
            assert queue.queue_arguments["x-consumer-timeout"] == expected, queue.name
    assert expected > (settings.TERMINUS_MAX_TIME_LIMIT + settings.TERMINUS_BROKER_DELAY_MAX) * 1000


def test_a_worker_on_a_rabbitmq_older_than_3_12_says_which_consumer_timeout_to_set(start_worker, drill_queue):
    if not broker_kind().startswith("amqp"):
        pytest.skip("only RabbitMQ has a consumer timeout")
    worker = start_worker(drill_queue)
    version = server_version()
    if version >= (3, 12):
        assert "ignores the work queues' x-consumer-timeout" not in worker.log()
        return
    wait_for(lambda: "ignores the work queues' x-consumer-timeout" in worker.log(), what="the advice in the log")
    assert f"consumer_timeout = {settings.CELERY_VISIBILITY_TIMEOUT * 1000}" in worker.log()


def server_version() -> tuple[int, int]:
    """The RabbitMQ server's version, as the AMQP connection reports it."""
    with app.connection_for_read() as connection:
        connection.connect()
        version = rabbitmq_version(connection.connection.server_properties)
    assert version is not None
    return version


def test_the_advice_is_given_below_3_12_only():
    assert consumer_timeout_advice((3, 10)) is not None
    assert consumer_timeout_advice((3, 12)) is None
    assert consumer_timeout_advice((4, 0)) is None
    assert consumer_timeout_advice(None) is None
    assert rabbitmq_version({"product": b"RabbitMQ", "version": b"3.10.8"}) == (3, 10)
    assert rabbitmq_version({"product": b"SomethingElse", "version": b"1.0"}) is None
