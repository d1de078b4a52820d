"""Fault injection: a batch of jobs, a fault, recovery — then every job terminal, none lost,
none completed twice, none past its deadline. Each scenario prints one figure line."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from results.models import DeadLetter, Job, Status
from tasks.submit import submit_many
from tests.conftest import broker_kind, wait_for
from tests.reliability.conftest import CHAOS_JOBS, proxied_database_url, report

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]

FAST_REDELIVERY = {  # Redis: hand a dead worker's messages back within seconds, not the hour
    "CELERY_VISIBILITY_TIMEOUT": "6",
    "TERMINUS_MAX_TIME_LIMIT": "5",
    "CELERY_UNACKED_RESTORE_INTERVAL": "1",
    "CELERY_UNACKED_RESTORE_THROTTLE": "1",
}


def batch(queue: str, n: int = CHAOS_JOBS, seconds: float = 0.05, **extra) -> list:
    jobs = []
    for start in range(0, n, 500):
        items = [
            {"type": "diagnostics.sleep", "payload": {"seconds": seconds, **extra}, "queue": queue}
            for _ in range(min(500, n - start))
        ]
        jobs += submit_many(items)
    return [job.pk for job in jobs]


def assert_clean(figures: dict[str, int], *, all_succeeded: bool = True) -> None:
    assert figures["lost"] == 0
    assert figures["terminal"] == figures["jobs"]
    assert figures["duplicates"] == 0
    assert figures["past_deadline"] == 0
    if all_succeeded:
        assert figures["succeeded"] == figures["jobs"]


def test_kill9_of_pool_children_mid_batch_loses_nothing(start_worker, drill_queue):
    worker = start_worker(drill_queue, concurrency=2)
    ids = batch(drill_queue, seconds=0.1)
    # SIGKILL the pool children three times while the batch runs (OOM kills)
    for _ in range(3):
        wait_for(lambda: worker.children(), timeout=20, what="pool children")
        time.sleep(1.0)
        for child in worker.children():
            child.send_signal(signal.SIGKILL)
    figures = report("kill9-children", ids)
    assert_clean(figures)
    assert figures["redelivered"] >= 1  # the killed attempts came back


def test_kill9_of_the_whole_worker_then_restart_loses_nothing(start_worker, drill_queue):
    if broker_kind() == "filesystem":
        pytest.skip("needs a broker that keeps unacked messages")
    first = start_worker(drill_queue, concurrency=2, **FAST_REDELIVERY)
    ids = batch(drill_queue, seconds=0.1)
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() > 10, timeout=60)
    first.kill()
    start_worker(drill_queue, concurrency=2, **FAST_REDELIVERY)
    figures = report("kill9-worker", ids)
    assert_clean(figures)


def test_postgresql_unavailable_mid_batch_every_terminal_write_lands(start_worker, drill_queue, pg_proxy):
    # Given workers whose only way to the database is a link we can cut
    start_worker(drill_queue, concurrency=2, DATABASE_URL=proxied_database_url(pg_proxy), CELERY_DB_REUSE_MAX="1000")
    ids = batch(drill_queue, seconds=0.1)
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() > 10, timeout=60)
    # When PostgreSQL vanishes for 5 s (connections dropped, new ones refused) and comes back
    pg_proxy.cut()
    time.sleep(5)
    pg_proxy.restore()
    # Then the workers wait it out and replace their broken connections: every job succeeds once
    figures = report("postgres-outage", ids)
    assert_clean(figures)


def test_hard_time_limits_in_a_batch_end_failed_and_the_rest_succeed(start_worker, drill_queue):
    start_worker(drill_queue, concurrency=2)
    ids = batch(drill_queue, n=max(20, CHAOS_JOBS // 2), seconds=0.02)
    slow = [
        job.pk
        for job in submit_many(
            [
                {
                    "type": "diagnostics.fail",
                    "payload": {"mode": "sleep", "seconds": 30, "ignore_soft_limit": True},
                    "queue": drill_queue,
                }
                for _ in range(4)
            ]
        )
    ]
    figures = report("hard-time-limit", ids + slow)
    assert_clean(figures, all_succeeded=False)
    assert figures["failed"] == 4
    assert set(Job.objects.filter(pk__in=slow).values_list("error_type", flat=True)) == {"TimeLimitExceeded"}


def test_memory_limit_recycles_children_without_losing_jobs(start_worker, drill_queue):
    # Given jobs that leak 200 MB each, and children replaced once they pass 150 MB resident
    worker = start_worker(drill_queue, concurrency=2, CELERY_WORKER_MAX_MEMORY_PER_CHILD=str(150 * 1024))
    first_children = {child.pid for child in worker.children()}
    ids = batch(drill_queue, n=max(20, CHAOS_JOBS // 3), seconds=0.05, leak_mb=200)
    figures = report("memory-limit", ids)
    assert_clean(figures)
    # Then the leaking children were recycled (new processes), and no job was lost doing it
    assert first_children.isdisjoint(child.pid for child in worker.children())


def test_poison_messages_in_a_batch_are_dead_lettered_and_the_batch_finishes(start_worker, drill_queue):
    from kombu import Connection, Producer

    from project.celery import app

    start_worker(drill_queue, concurrency=2)
    ids = batch(drill_queue, seconds=0.02)
    poison_ids = []
    with Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options) as conn:
        producer = Producer(conn)
        for n in range(5):
            message_id = str(uuid.uuid4())
            poison_ids.append(message_id)
            producer.publish(
                b"\x80\x04garbage" + bytes([n]),
                routing_key=drill_queue,
                content_type="application/x-python-serialize",
                content_encoding="binary",
                headers={"id": message_id, "task": "diagnostics.sleep"},
            )
    figures = report("poison", ids)
    assert_clean(figures)
    wait_for(lambda: DeadLetter.objects.filter(message_key__in=poison_ids).count() == 5, what="5 poison records")
    print(f"poison: messages 5, dead-lettered {DeadLetter.objects.filter(message_key__in=poison_ids).count()}")
