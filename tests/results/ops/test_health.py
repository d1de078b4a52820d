"""/healthz and /readyz, served by a real web process, against a broker the test can stop.

The readiness stack runs on a Redis of its own (a private ``redis-server``), whatever the pass's
broker: stopping a broker is the point, and the shared one must never stop. The database is the
pass's (PostgreSQL or SQLite).
"""

from __future__ import annotations

import pytest
from django.test import Client

from results.models import DeadLetter, HealthState
from tests.helpers import ARTIFACTS, WorkerProcess, alerting_env, wait_for
from tests.tasks.crons.cron_support import FAST_CRONS, PrivateRedis, beat, get_json, web, webhooks_with_key

pytestmark = pytest.mark.django_db(transaction=True)
#: The metrics token of the readiness stack: its bearer sees every check.
OPS_TOKEN = "readyz-ops-token"


def test_healthz_answers_without_the_database_or_the_broker():
    response = Client().get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_goes_red_when_the_broker_stops_and_green_again_when_it_returns(alert_sink, mail_dir, tmp_path):
    # Given a whole deployment on its own broker: a worker on every queue, beat, and a web process
    broker = PrivateRedis(tmp_path / "redis").start()
    env = {
        **FAST_CRONS,
        **alerting_env(alert_sink, mail_dir),
        "CELERY_BROKER_URL": broker.url,
        "TERMINUS_CRON_QUEUE": "crons",
        "TERMINUS_CANARY_TIMEOUT": "3",
        "TERMINUS_METRICS_TOKEN": OPS_TOKEN,
        "TERMINUS_REPAIR_INTERVAL": "15",  # the production default: the worker runs the repair pass
    }
    processes = []
    try:
        processes.append(beat("readyz-beat", env=env, schedule_dir=tmp_path / "beat", wait=False))
        processes.append(
            WorkerProcess(
                queues="default,slow,dead_letter,crons", log_path=ARTIFACTS / "readyz-worker.log", **env
            ).start()
        )
        web_process, base = web("readyz", env=env)
        processes.append(web_process)

        def readyz() -> tuple[int, dict]:
            return get_json(f"{base}/readyz", timeout=30, token=OPS_TOKEN)

        # Then /readyz is green once a cron has run and every queue's canary came back
        _, body = wait_for(lambda: (r := readyz())[0] == 200 and r, timeout=60, what="/readyz to be green")
        assert body["status"] == "ok" and body["failing"] == []
        assert set(body["checks"]) == {
            *("database", "broker", "workers", "beat", "dead_letters", "canaries", "deadlines", "repairs")
        }
        assert body["checks"]["workers"]["answered"], body
        assert body["checks"]["repairs"]["last_pass_age_seconds"] <= 45, body
        # An anonymous caller gets the verdict alone: no node names, vendor or errors
        assert get_json(f"{base}/readyz", timeout=30) == (200, {"status": "ok"})
        # When the broker stops
        broker.stop()
        _, body = wait_for(lambda: (r := readyz())[0] == 503 and r, timeout=30, what="/readyz to go red")
        # Then it answers (within the probe's timeout) saying what failed, and what did not
        assert body["status"] == "failing"
        assert {"broker", "workers"} <= set(body["failing"])
        assert body["checks"]["broker"]["error"]
        assert body["checks"]["workers"]["error"] == "not checked: the broker is unreachable"
        assert body["checks"]["database"]["ok"] is True
        # And however often it is probed, the flip is alerted once
        for _ in range(3):
            assert readyz()[0] == 503
        failing = wait_for(lambda: webhooks_with_key(alert_sink, "health|broker"), what="the broker alert")
        assert len(failing) == 1 and "failing" in failing[0]["text"]
        assert HealthState.objects.get(name="broker").ok is False
        # When the broker returns (empty: a restart without persistence)
        broker.start()
        # Then the worker reconnects, a new canary goes through every queue, and /readyz is green again
        wait_for(lambda: readyz()[0] == 200, timeout=90, what="/readyz to be green again")
        alerts = wait_for(
            lambda: (hooks := webhooks_with_key(alert_sink, "health|broker"))[1:] and hooks, what="the recovery alert"
        )
        assert len(alerts) == 2 and "recovered" in alerts[1]["text"]
        assert HealthState.objects.get(name="broker").ok is True
    finally:
        for process in reversed(processes):
            process.stop()
        broker.stop()


def test_readyz_names_every_failing_check_with_its_reason_to_staff_only(settings, admin_client):
    staff_client = admin_client
    # Given open dead letters over the threshold, a job past its deadline and no cron ever run
    from datetime import timedelta

    from django.utils import timezone

    from tasks.submit.outbox import _new_job

    settings.TERMINUS_READY_DLQ_MAX_OPEN = 0
    settings.TERMINUS_READY_DEADLINE_GRACE = 0
    DeadLetter.objects.create(message_key="poison-1", reason="undecodable")
    job = _new_job(
        "diagnostics.sleep", {}, owner=None, tenant=None, queue=None, countdown=None, correlation_id=None,
        now=timezone.now() - timedelta(days=1),
    )  # fmt: skip
    job.terminal_by = timezone.now() - timedelta(minutes=1)
    job.save(force_insert=True)
    settings.TERMINUS_READY_CACHE_SECONDS = 0
    settings.TERMINUS_REPAIR_INTERVAL = 15  # and no worker has completed a repair pass
    anonymous = Client().get("/readyz?check=database,dead_letters&check=deadlines&check=beat")
    assert (anonymous.status_code, anonymous.json()) == (503, {"status": "failing"})
    response = staff_client.get("/readyz?check=database,dead_letters&check=deadlines&check=beat,repairs")
    assert response.status_code == 503
    body = response.json()
    # in the order of tasks.fleet.readiness.CHECKS
    assert body["failing"] == ["beat", "dead_letters", "deadlines", "repairs"]
    assert set(body["checks"]) == {"database", "dead_letters", "deadlines", "beat", "repairs"}
    assert "no repair pass has completed yet" in body["checks"]["repairs"]["error"]
    assert body["checks"]["dead_letters"]["error"] == "1 open dead letters (threshold 0)"
    assert body["checks"]["deadlines"]["past_deadline"] == 1
    assert "no cron has run yet" in body["checks"]["beat"]["error"]
    assert Client().get("/readyz?check=database").status_code == 200
    assert Client().get("/readyz?check=nonsense").status_code == 400
