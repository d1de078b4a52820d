"""Recovery at production defaults: a paused worker cannot overwrite a newer attempt, and a database
outage while jobs finish loses nothing. Each scenario prints its figure line (``make chaos``).

The workers run with PRODUCTION_RECOVERY (no shortened time limit, grace, heartbeat, dead-after or
repair interval: what these scenarios prove depends on them).
"""

from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.db.models.functions import Now

from results.models import AttemptOutcome, Job, Status
from tasks.recovery.repairs import NODE_DEAD
from tasks.submit.outbox import submit
from tests.helpers import PRODUCTION_RECOVERY, wait_for, wait_terminal
from tests.reliability.helpers import TcpProxy, proxied_database_url, report

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]


def test_zombie_worker_its_late_writes_are_refused_and_the_result_is_the_new_attempts(start_worker, drill_queue):
    # Given a job running on a worker, and a second worker on the same queue
    zombie = start_worker(drill_queue, **PRODUCTION_RECOVERY)
    job = submit("diagnostics.sleep", {"seconds": 20, "heartbeat_every": 1}, queue=drill_queue)
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=Status.RUNNING).exists(), what="the job running")
    healthy = start_worker(drill_queue, **PRODUCTION_RECOVERY)
    # When the first is paused (SIGSTOP: a GC pause, a frozen VM) past the time a node is dead
    os.killpg(zombie.pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        second = wait_for(
            lambda: Job.objects.filter(pk=job.pk, status=Status.RUNNING, attempts=2).first(),
            timeout=90,
            what="the job running again on the live worker",
        )
        recovered_s = time.monotonic() - paused_at
    finally:
        os.killpg(zombie.pid, signal.SIGCONT)  # and comes back
    # Then the zombie's next heartbeat is refused, its body stops, and the job's outcome is the new attempt's
    wait_for(lambda: b"refused: a later attempt has started" in zombie.log_bytes(), what="the refused write")
    done = wait_terminal(job.pk, timeout=90)
    stale_writes = zombie.log().count("refused: a later attempt has started")
    figures = report(
        "zombie-worker", [job.pk], extra=lambda: {"recovered_s": round(recovered_s, 1), "stale_writes": stale_writes}
    )
    assert (done.status, done.attempts, done.worker) == (Status.SUCCEEDED, 2, healthy.name)
    assert second.worker == healthy.name
    assert figures["stale_writes"] >= 1 and figures["duplicates"] == 0 and figures["lost"] == 0
    assert [a.outcome for a in done.attempt_history()] == [AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED]
    assert done.attempt_history()[0].error_message == NODE_DEAD
    assert figures["recovered_s"] <= 60


def test_db_outage_at_success_every_job_ends_terminal_and_none_is_lost(start_worker, drill_queue, pg_proxy):
    # Given a worker whose only way to the database is a link we can cut, running jobs of 3 s
    start_worker(drill_queue, concurrency=2, DATABASE_URL=proxied_database_url(pg_proxy), **PRODUCTION_RECOVERY)
    jobs = [submit("diagnostics.sleep", {"seconds": 3}, queue=drill_queue) for _ in range(6)]
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status=Status.RUNNING).count() == 2)
    # When PostgreSQL is unreachable for 90 s while their bodies finish (longer than the workers'
    # TERMINUS_DB_RETRY_SECONDS: their result writes give up)
    pg_proxy.cut()
    time.sleep(90)
    pg_proxy.restore()
    restored_at = time.monotonic()
    # Then no message was acked without its terminal write: every job ends terminal, succeeded, none lost
    ids = [job.pk for job in jobs]
    figures = report(
        "db-outage-at-success",
        ids,
        timeout=240,
        extra=lambda: {"terminal_after_restore_s": round(time.monotonic() - restored_at, 1)},
    )
    assert figures["succeeded"] == figures["jobs"] and figures["lost"] == 0 and figures["past_deadline"] == 0
    assert not Job.objects.filter(pk__in=ids, error_type="lost").exists()


def test_broker_outage_at_retry_time_is_not_a_final_failure(start_worker, drill_queue):
    # Given a worker whose only way to Redis is a link we can cut, running jobs that fail once
    # (transiently) after 1.5 s and then succeed (the message carries this process's time limits:
    # the suite's shortened ones, 2 s soft for diagnostics.fail)
    url = urlsplit(settings.CELERY_BROKER_URL)
    if url.scheme not in {"redis", "rediss"}:
        pytest.skip("the broker link is cut with a TCP proxy in front of Redis")
    proxy = TcpProxy(url.port or 6379, url.hostname or "127.0.0.1").start()
    try:
        proxied = url._replace(netloc=f"{url.hostname}:{proxy.port}").geturl()
        worker = start_worker(drill_queue, concurrency=2, CELERY_BROKER_URL=proxied, **PRODUCTION_RECOVERY)
        jobs = [
            submit("diagnostics.fail", {"mode": "times", "times": 1, "seconds": 1.5}, queue=drill_queue)
            for _ in range(6)
        ]
        ids = [job.pk for job in jobs]
        wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.RUNNING).count() == 2, what="two running")
        # When the broker is unreachable for 10 s just as their attempts fail and ask for a retry
        proxy.cut()
        time.sleep(10)
        proxy.restore()
        restored_at = time.monotonic()
        # Then no job failed for it: each retry was held and published by the repair pass once the
        # broker was back, and every job succeeded
        figures = report(
            "broker-outage-at-retry",
            ids,
            timeout=180,
            extra=lambda: {
                "terminal_after_restore_s": round(time.monotonic() - restored_at, 1),
                # retries the broker refused, or attempts a connection loss cancelled: held, then
                # published by the repair pass
                "held": worker.log().count("published by the repair pass"),
            },
        )
    finally:
        proxy.cut()
    assert figures["held"] >= 1  # the outage really hit a retry
    assert not Job.objects.filter(pk__in=ids, error_type="Rejected").exists()
    assert figures["succeeded"] == figures["jobs"] and figures["lost"] == 0 and figures["past_deadline"] == 0


def test_crons_worker_dead_a_killed_workers_jobs_still_end_terminal(start_stack, start_worker, drill_queue):
    # Given beat and the crons worker (the reaper cron's runners) stopped for good
    stack = start_stack(**PRODUCTION_RECOVERY)
    stack.stop()
    # and a job worker running jobs of 3 s
    doomed = start_worker(drill_queue, concurrency=2, **PRODUCTION_RECOVERY)
    ids = [submit("diagnostics.sleep", {"seconds": 3}, queue=drill_queue).pk for _ in range(8)]
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.RUNNING).count() == 2, what="two running")
    # When it is SIGKILLed and replaced a second later by a worker under another name (a new pod: the
    # restart of the same node name is kill9-worker-restart)
    doomed.kill()
    killed_at = time.monotonic()
    time.sleep(1)
    start_worker(drill_queue, concurrency=2, **PRODUCTION_RECOVERY)
    # Then the replacement's repair loop finds the dead node and every job ends terminal, no cron involved
    figures = report(
        "crons-worker-dead",
        ids,
        timeout=180,
        extra=lambda: {"terminal_after_kill_s": round(time.monotonic() - killed_at, 1)},
    )
    assert figures["succeeded"] == figures["jobs"] and figures["lost"] == 0 and figures["duplicates"] == 0
    assert figures["redelivered"] == 2 and figures["past_deadline"] == 0
    lost = {
        a.error_message for job in Job.objects.filter(pk__in=ids) for a in job.attempt_history() if a.outcome == "lost"
    }
    assert lost == {NODE_DEAD}
    assert figures["terminal_after_kill_s"] <= 60


@pytest.mark.timeout(600)  # waits out the 5-minute visibility timeout
def test_long_countdown_on_redis_with_a_five_minute_visibility_timeout_runs_once(start_worker, drill_queue):
    if not settings.CELERY_BROKER_URL.startswith(("redis", "rediss")):
        pytest.skip("the visibility timeout is Redis's redelivery rule")
    # Given a worker on Redis with a 5-minute visibility timeout (the longest job type's limit lowered to
    # fit under it; the job here runs in no time)
    visibility = 300
    start_worker(
        drill_queue,
        **{**PRODUCTION_RECOVERY, "TERMINUS_MAX_TIME_LIMIT": "200", "CELERY_VISIBILITY_TIMEOUT": str(visibility)},
    )
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    # When a job is submitted with a countdown of 2 hours
    job = submit("diagnostics.sleep", {"seconds": 0}, queue=drill_queue, countdown=7200)
    submitted_at = time.monotonic()
    # Then for longer than the visibility timeout (and kombu's restore sweeps) no message exists to be
    # restored and delivered twice: the job waits in the database, unpublished
    while time.monotonic() - submitted_at < visibility + 15:
        held = Job.objects.get(pk=job.pk)
        assert (held.status, held.attempts, held.dispatched_at) == (Status.QUEUED, 0, None)
        assert not any(broker.llen(key) for key in broker.scan_iter(f"{drill_queue}*"))  # every priority list
        assert not any(str(job.pk).encode() in message for message in broker.hvals("unacked"))
        time.sleep(5)
    # And once its 2 hours are over (the due time moved: the hours themselves are not waited out), the
    # worker's repair loop publishes it and it runs once
    Job.objects.filter(pk=job.pk).update(next_retry_at=Now())
    done = wait_terminal(job.pk, timeout=60)
    time.sleep(15)  # a second copy would have run by now
    figures = report(
        "long-countdown",
        [job.pk],
        extra=lambda: {"held_s": round(time.monotonic() - submitted_at), "runs": Job.objects.get(pk=job.pk).attempts},
    )
    assert (done.status, figures["runs"], figures["duplicates"], figures["lost"]) == (Status.SUCCEEDED, 1, 0, 0)
