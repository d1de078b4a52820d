"""Canaries catch a worker that is alive but no longer consuming; a flipping check alerts once."""

from __future__ import annotations

import pytest

from project.celery import app
from results.models import Alert, HealthState, QueueCanary
from tasks.fleet.probes import known_queues
from tasks.fleet.readiness import Check, record
from tests.helpers import wait_for
from tests.tasks.crons.cron_support import start_cron_stack, webhooks_with_key

pytestmark = pytest.mark.django_db(transaction=True)


def alerts_about(sink, key: str, needle: str) -> list[dict]:
    return [alert for alert in webhooks_with_key(sink, key) if needle in alert["text"]]


def test_a_queue_whose_worker_stopped_consuming_is_reported_while_the_worker_still_answers_pings(
    start_worker, drill_queue, alert_sink, mail_dir
):
    # Given beat, a cron worker, and a worker on a job queue whose canaries it consumes
    stack = start_cron_stack(
        "canaries",
        sink=alert_sink,
        mail_dir=mail_dir,
        TERMINUS_QUEUES=f"default,slow,{drill_queue}",
        TERMINUS_CANARY_TIMEOUT="2",
    )
    try:
        worker = start_worker(drill_queue)
        wait_for(
            lambda: QueueCanary.objects.filter(queue=drill_queue, last_consumed_at__isnull=False).exists(),
            what="the drill queue's first canary to be consumed",
        )
        # When the worker stops consuming the queue but stays up (what a broker reconnect can do)
        app.control.cancel_consumer(drill_queue, destination=[worker.name], reply=True, timeout=5)
        # Then the health cron reports that queue, though the worker still answers pings
        state = wait_for(
            lambda: HealthState.objects.filter(name="canaries", ok=False).first(), timeout=60, what="canaries failing"
        )
        assert drill_queue in state.detail["error"]
        assert state.detail["queues"][drill_queue].startswith("canary waiting")
        assert HealthState.objects.get(name="workers").ok is True
        wait_for(lambda: alerts_about(alert_sink, "health|canaries", drill_queue), what="the alert")
        # When it consumes again, the queue recovers (and says so once)
        recoveries = len(alerts_about(alert_sink, "health|canaries", "recovered"))
        app.control.add_consumer(drill_queue, destination=[worker.name], reply=True, timeout=5)
        wait_for(lambda: HealthState.objects.get(name="canaries").ok, timeout=60, what="canaries to recover")
        wait_for(
            lambda: len(alerts_about(alert_sink, "health|canaries", "recovered")) > recoveries,
            what="the recovery alert",
        )
        assert len(alerts_about(alert_sink, "health|canaries", "recovered")) == recoveries + 1
    finally:
        stack.stop()


def test_a_check_alerts_once_when_it_starts_failing_and_once_when_it_recovers(settings, alert_sink):
    settings.TERMINUS_ALERT_WEBHOOK_URL = f"{alert_sink.url}/alerts"
    failing = Check("dead_letters", False, {"error": "1500 open dead letters (threshold 1000)"})
    assert [record(failing) for _ in range(3)] == ["failing", None, None]
    assert [record(Check("dead_letters", True)) for _ in range(2)] == ["recovered", None]
    sent = list(Alert.objects.filter(key="health|dead_letters").order_by("created_at").values_list("subject", "status"))
    assert sent == [
        ("[Terminus] readiness check dead_letters failing", "sent"),
        ("[Terminus] readiness check dead_letters recovered", "sent"),
    ]


def test_every_queue_a_worker_must_consume_gets_a_canary(settings):
    settings.TERMINUS_QUEUES = ["default", "slow"]
    settings.TERMINUS_CRON_QUEUE = "crons"
    assert known_queues() == ["default", "slow", "dead_letter", "crons"]
