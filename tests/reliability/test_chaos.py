"""Fault injection: a batch of jobs, a fault, recovery — then every job terminal, none lost,
none completed twice, none past its deadline. Each scenario prints one figure line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import psutil
import pytest
from django.utils import timezone

from results.models import (
    TERMINAL_STATUSES,
    AttemptOutcome,
    CronRun,
    DeadLetter,
    DeadLetterReason,
    Job,
    JobAttempt,
    Status,
)
from tasks.submit.outbox import submit_many
from tests.helpers import FAST_REDELIVERY, quiesce, wait_for
from tests.reliability.helpers import (
    CHAOS_JOBS,
    FAST_REAPER,
    RABBITMQ,
    REDIS,
    chaos_env,
    claim_figures,
    dlx_tap,
    effect_figures,
    on_each_broker,
    producing_to,
    proxied_database_url,
    reaper_did,
    report,
    supervised,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]


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


def fresh_children(worker, killed: set[int]) -> list[psutil.Process]:
    """The worker's live pool children not killed yet (a killed child is a zombie until it is reaped)."""
    children = []
    for child in worker.children():
        with contextlib.suppress(psutil.Error):
            if child.pid not in killed and child.status() != psutil.STATUS_ZOMBIE:
                children.append(child)
    return children


@on_each_broker
def test_kill9_of_pool_children_mid_batch_loses_nothing(broker, start_worker, drill_queue):
    worker = start_worker(drill_queue, concurrency=2, **broker.worker_env)
    ids = batch(drill_queue, seconds=0.1)
    # SIGKILL the pool children three times while the batch runs (OOM kills); each round kills the
    # replacements of the last (on Redis the worker notices its children died only seconds later)
    killed: set[int] = set()
    for _ in range(3):
        wait_for(lambda: fresh_children(worker, killed), timeout=20, what="pool children")
        time.sleep(1.0)
        for child in fresh_children(worker, killed):
            child.send_signal(signal.SIGKILL)
            killed.add(child.pid)
    figures = report(broker.label("kill9-children"), ids, extra=lambda: {"killed": len(killed), **claim_figures(ids)})
    assert_clean(figures)
    assert figures["redelivered"] >= 1  # the killed attempts came back
    # each redelivery of a job still running was counted, and its dead attempt closed, by the claim;
    # none more than one per kill
    assert_redeliveries_claimed(figures)
    assert figures["redelivered"] <= figures["killed"]


@on_each_broker
def test_kill9_of_the_whole_worker_then_restart_loses_nothing(broker, start_worker, drill_queue):
    # Redis hands a dead worker's unacked messages back once their visibility timeout has passed (an
    # hour in production, seconds here); RabbitMQ requeues them as soon as the worker's connection
    # drops, with nothing to tune
    env = FAST_REDELIVERY if broker.name == REDIS else broker.worker_env
    first = start_worker(drill_queue, concurrency=2, **env)
    ids = batch(drill_queue, seconds=0.1)
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() > 10, timeout=60)
    # (killed while a job has just started on it, so at least one job dies mid-run)
    wait_for(
        lambda: Job.objects.filter(
            pk__in=ids,
            status=Status.RUNNING,
            worker=first.name,
            started_at__gte=timezone.now() - timedelta(seconds=0.04),
        ).exists(),
        timeout=30,
        interval=0.01,
        what="a job just started on the doomed worker",
    )
    first.kill()
    orphans = set(Job.objects.filter(pk__in=ids, status=Status.RUNNING, worker=first.name).values_list("pk", flat=True))
    start_worker(drill_queue, concurrency=2, **env)
    restarted = time.monotonic()
    wait_for(
        lambda: not Job.objects.filter(pk__in=orphans).exclude(status__in=TERMINAL_STATUSES).exists(),
        timeout=120,
        interval=0.1,
        what="the jobs running at the kill to end",
    )
    orphans_done_s = round(time.monotonic() - restarted, 1)
    figures = report(
        broker.label("kill9-worker"),
        ids,
        extra=lambda: {"running_at_kill": len(orphans), "orphans_done_s": orphans_done_s, **claim_figures(ids)},
    )
    assert_clean(figures)
    # Each job that died mid-run came back once; its claim closed the dead attempt as lost and counted it
    assert figures["running_at_kill"] >= 1
    assert figures["redelivered"] == figures["running_at_kill"]
    assert (
        set(JobAttempt.objects.filter(job_id__in=ids, outcome=AttemptOutcome.LOST).values_list("job_id", flat=True))
        == orphans
    )
    assert_redeliveries_claimed(figures)
    if broker.name == RABBITMQ:  # at once: no visibility timeout to wait out (Redis: 6 s here)
        assert figures["orphans_done_s"] < 6


def assert_redeliveries_claimed(figures: dict[str, int]) -> None:
    """Every lost attempt was closed by the claim of its redelivery (worker_lost), and counted once."""
    assert figures["lost_not_by_claim"] == 0
    assert figures["lost_deliveries"] == figures["redelivered"]


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


#: The poison messages of the scenario, by the dead-letter reason each must end with. A message that
#: does not decode is acked by Celery; one naming an unknown task, or not a task at all, is rejected,
#: which on RabbitMQ also dead-letters it through the exchange (its copy lands in the same row).
POISON = {
    "undecodable": (DeadLetterReason.UNDECODABLE, 2, False),
    "unknown_task": (DeadLetterReason.UNKNOWN_TASK, 2, True),
    "not_a_task": (DeadLetterReason.INVALID, 1, True),
}


def publish_poison(queue: str) -> dict[str, str]:
    """Publish the POISON messages to ``queue``; returns each one's dead-letter key and expected reason."""
    from kombu import Connection, Producer

    from project.celery import app

    expected = {}
    with Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options) as conn:
        producer = Producer(conn)
        for n in range(POISON["undecodable"][1]):
            message_id = str(uuid.uuid4())
            expected[message_id] = POISON["undecodable"][0]
            producer.publish(
                b"\x80\x04garbage" + bytes([n]),
                routing_key=queue,
                content_type="application/x-python-serialize",
                content_encoding="binary",
                headers={"id": message_id, "task": "diagnostics.sleep"},
            )
        for _ in range(POISON["unknown_task"][1]):
            message_id = str(uuid.uuid4())
            expected[message_id] = POISON["unknown_task"][0]
            app.send_task("chaos.nonexistent", kwargs={"n": 1}, task_id=message_id, queue=queue)
        for _ in range(POISON["not_a_task"][1]):
            body = json.dumps({"poison": str(uuid.uuid4())}).encode()
            expected["sha256:" + hashlib.sha256(body).hexdigest()] = POISON["not_a_task"][0]
            producer.publish(body, routing_key=queue, content_type="application/json")
    return expected


@on_each_broker
def test_poison_messages_in_a_batch_are_dead_lettered_and_the_batch_finishes(broker, start_worker, drill_queue):
    start_worker(drill_queue, concurrency=2, **broker.worker_env)
    ids = batch(drill_queue, seconds=0.02)
    rejected = sum(n for _, n, rejects in POISON.values() if rejects)
    with dlx_tap(drill_queue) if broker.name == RABBITMQ else contextlib.nullcontext() as dlx_copies:
        poison = publish_poison(drill_queue)

        def reasons() -> dict[str, str]:
            return dict(DeadLetter.objects.filter(message_key__in=poison).values_list("message_key", "reason"))

        def recorded() -> dict[str, int]:
            # one row per message, however many ways it arrived, with the worker's account of it
            wait_for(lambda: reasons() == poison, timeout=30, what="every poison message recorded, with its reason")
            figures = {"poison": len(poison), "dead_lettered": len(reasons())}
            if dlx_copies is not None:
                wait_for(lambda: dlx_copies() >= rejected, timeout=30, what="the DLX copies of the rejected ones")
                figures["via_dlx"] = dlx_copies()
            return figures

        figures = report(broker.label("poison"), ids, extra=recorded)
    assert_clean(figures)
    assert figures["dead_lettered"] == figures["poison"] == 5
    if broker.name == RABBITMQ:  # the rejected ones, once each, through the exchange
        assert figures["via_dlx"] == rejected
    quiesce()  # their alerts are sent before the tables are flushed


# -- the reaper, the broker and the schedulers under fault -------------------------------------------
# These batches run chaos.effect (tests/reliability/chaos_jobs.py): a job type whose side effect
# is counted per job, so "applied twice" is measured, not inferred from the attempt rows.
def effect_batch(queue: str, n: int = CHAOS_JOBS, seconds: float = 0.1) -> list:
    jobs = []
    for start in range(0, n, 500):
        items = [{"type": "chaos.effect", "payload": {"seconds": seconds}, "queue": queue}] * min(500, n - start)
        jobs += submit_many(items)
    return [job.pk for job in jobs]


def assert_effects_once(figures: dict) -> None:
    assert figures["effects_twice"] == 0
    assert figures["effects_missing"] == 0
    assert figures["effects"] == figures["succeeded"]


def test_worker_killed_and_never_restarted_its_running_jobs_are_finished_by_the_reaper(
    chaos_job_type, start_stack, start_worker, drill_queue
):
    # Given the reaper ticking every second (beat + cron worker), and one worker on the batch's queue
    start_stack(TERMINUS_QUEUES=f"default,slow,{drill_queue}", **FAST_REAPER)
    doomed = start_worker(drill_queue, concurrency=2, **chaos_env())
    ids = effect_batch(drill_queue, seconds=0.2)
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() > 10, timeout=60)
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.RUNNING, worker=doomed.name).exists(), timeout=30)
    # When the whole worker is SIGKILLed mid-batch and never comes back
    doomed.kill()
    killed_at = timezone.now()
    orphans = set(
        Job.objects.filter(pk__in=ids, status=Status.RUNNING, worker=doomed.name).values_list("pk", flat=True)
    )
    # (a new worker serves what is still queued; the orphans' messages stay unacked in the broker for
    # the visibility timeout, an hour: only the reaper can end them in time)
    start_worker(drill_queue, concurrency=2, **chaos_env())
    figures = report(
        "worker-lost-no-restart",
        ids,
        timeout=120,
        extra=lambda: {
            "orphaned": len(orphans),
            "reaped": reaper_did(killed_at, "lost_requeued", "lost_failed"),
            "republished_again": reaper_did(killed_at, "retries_redispatched", "queued_redispatched"),
            **effect_figures(ids),
        },
    )
    # Then every job ended, none twice; each orphan's attempt was closed as lost by the reaper
    # ("lost"), not by a redelivery ("worker_lost"), and its next attempt succeeded
    assert_clean(figures)
    assert_effects_once(figures)
    assert figures["orphaned"] >= 1
    assert figures["reaped"] == figures["orphaned"]
    # ... and published once: its new message waiting behind the backlog was not taken for lost
    # (a second copy could run alongside the first). A job the dead worker had taken but not yet
    # started is published again once: it is queued, and its message is in the dead worker's hands.
    assert figures["republished_again"] <= 2
    lost = JobAttempt.objects.filter(job_id__in=ids, outcome=AttemptOutcome.LOST)
    assert set(lost.values_list("job_id", flat=True)) == orphans
    assert set(lost.values_list("error_type", flat=True)) == {"lost"}
    assert figures["redelivered"] == len(orphans)


def test_redis_restarted_without_persistence_mid_batch_every_job_still_ends(
    chaos_job_type, private_redis, start_stack, start_worker, drill_queue
):
    # Given a deployment on a Redis of its own (no AOF, no RDB): reaper stack and a worker
    broker = {"CELERY_BROKER_URL": private_redis.url}
    stack = start_stack(TERMINUS_QUEUES=f"default,slow,{drill_queue}", **FAST_REAPER, **broker)
    worker = start_worker(f"{drill_queue},dead_letter", concurrency=2, **chaos_env(**broker))
    with producing_to(private_redis.url):
        ids = effect_batch(drill_queue, seconds=0.1)
    wait_for(lambda: Job.objects.filter(pk__in=ids, status=Status.SUCCEEDED).count() > 10, timeout=60)
    # When Redis crashes and comes back empty: queued and unacked messages are gone
    in_flight = Job.objects.filter(pk__in=ids).exclude(status__in=TERMINAL_STATUSES).count()
    restarted_at = timezone.now()
    with supervised(worker, stack.worker) as crashes:
        private_redis.restart()
        # Then the reaper publishes every job whose message was lost, and every job ends, once
        figures = report(
            "redis-restart-no-persistence",
            ids,
            timeout=120,
            extra=lambda: {
                "open_at_restart": in_flight,
                "redispatched": reaper_did(
                    restarted_at,
                    "queued_redispatched",
                    "retries_redispatched",
                    "lost_requeued",
                    "undispatched_dispatched",
                ),
                "worker_crashes": len(crashes),
                **effect_figures(ids),
            },
        )
    if crashes:
        print(f"  restarted after exiting (kombu 5.7 crash on a broker connection loss): {crashes}")
    assert_clean(figures)
    assert_effects_once(figures)
    assert figures["open_at_restart"] >= 20  # the restart really hit the batch
    # each job whose message was lost was published again, once (not again while it waited)
    assert 1 <= figures["redispatched"] <= figures["open_at_restart"]


def test_broker_down_at_submit_every_submission_is_accepted_recorded_and_published_later(
    chaos_job_type, private_redis, start_stack, start_worker, drill_queue, django_user_model
):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    # Given a deployment on a broker that is about to stop, and a client with a token
    broker = {"CELERY_BROKER_URL": private_redis.url}
    stack = start_stack(TERMINUS_QUEUES=f"default,slow,{drill_queue}", TERMINUS_REAPER_UNDISPATCHED_AFTER="1", **broker)
    worker = start_worker(f"{drill_queue},dead_letter", concurrency=2, **chaos_env(**broker))
    token = Token.objects.create(user=django_user_model.objects.create_user("chaos-client")).key
    body = {"type": "chaos.effect", "payload": {"seconds": 0.05}, "queue": drill_queue}

    def post(_: int) -> tuple[int, str | None, float]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        try:
            started = time.perf_counter()
            response = client.post("/api/jobs/", body, format="json")
            elapsed = time.perf_counter() - started
        finally:
            connection.close()  # this thread's; the test database is dropped at the end
        return response.status_code, (response.json() or {}).get("id"), elapsed

    with supervised(worker, stack.worker) as crashes:
        # When the broker is down while clients submit (4 at a time) through the API
        private_redis.stop()
        with producing_to(private_redis.url), quiet("tasks.submit.outbox"), ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(post, range(CHAOS_JOBS)))  # (one warning with a traceback each)
        # Then every submission was answered 202 with an id, and recorded: queued, never published
        assert {code for code, _, _ in answers} == {202}, answers[:5]
        ids = [job_id for _, job_id, _ in answers]
        assert len(set(ids)) == CHAOS_JOBS
        assert Job.objects.filter(pk__in=ids).undispatched().count() == CHAOS_JOBS
        latencies = sorted(elapsed for _, _, elapsed in answers)
        # When the broker comes back (empty)
        restored_at = timezone.now()
        private_redis.start()
        # Then the reaper's never-published sweep publishes each of them once, and all succeed
        figures = report(
            "broker-down-at-submit",
            ids,
            timeout=120,
            extra=lambda: {
                "accepted": len(ids),
                "published_by_reaper": reaper_did(restored_at, "undispatched_dispatched"),
                "submit_p50_s": round(latencies[len(latencies) // 2], 3),
                "submit_max_s": round(latencies[-1], 3),
                "worker_crashes": len(crashes),
                **effect_figures(ids),
            },
        )
    if crashes:
        print(f"  restarted after exiting (kombu 5.7 crash on a broker connection loss): {crashes}")
    assert_clean(figures)
    assert_effects_once(figures)
    assert figures["published_by_reaper"] == CHAOS_JOBS
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert figures["submit_max_s"] < 5, "a submission waited on the dead broker"


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """Keep a logger's expected warnings out of the test's output."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


CRON_DONE = re.compile(r"cron (\S+): tick (\S+ \S+) done in")


def test_two_beats_at_once_run_each_cron_tick_once_and_the_batch_is_unaffected(
    chaos_job_type, start_stack, start_worker, drill_queue
):
    from tests.tasks.crons.cron_support import BEAT_READY

    # Given two beats on the project's scheduler sending every cron every second or two (at DEBUG: the
    # "Sending due task" and "done in" lines counted below are bookkeeping, not shown at INFO)
    stack = start_stack(beats=2, LOG_LEVEL="DEBUG")
    assert all(BEAT_READY in beat.log() for beat in stack.beats)
    since = timezone.now()
    start_worker(drill_queue, concurrency=2, **chaos_env())
    ids = effect_batch(drill_queue, seconds=0.1)
    wait_for(
        lambda: CronRun.objects.filter(cron="reaper", started_at__gte=since, status="succeeded").count() >= 6,
        timeout=60,
        what="six reaper ticks",
    )

    def ticks() -> dict[str, int]:
        for beat in stack.beats:  # no send after this; let the last runs finish and log
            beat.stop()
        time.sleep(2)
        runs = list(CronRun.objects.filter(started_at__gte=since))
        bodies = Counter(CRON_DONE.findall(stack.worker.log()))
        sends = [sum("Sending due task" in line for line in beat.log().splitlines()) for beat in stack.beats]
        return {
            "ticks": len(runs),
            "sends": sum(sends),
            "sends_per_beat_min": min(sends),
            "refused": sum(run.duplicates for run in runs),
            "ran_twice": sum(1 for n in bodies.values() if n > 1),
            "succeeded_without_one_body": sum(
                1 for run in runs if run.status == "succeeded" and bodies[(run.cron, str(run.tick))] != 1
            ),
            **effect_figures(ids),
        }

    figures = report("two-beats", ids, extra=ticks)
    assert_clean(figures)
    assert_effects_once(figures)
    assert figures["ticks"] >= 6
    assert figures["sends_per_beat_min"] >= 6  # both beats really sent
    assert figures["refused"] >= 3  # ... the same ticks, and the second send was refused
    assert figures["ran_twice"] == 0
    assert figures["succeeded_without_one_body"] == 0
    for cron in ("reaper", "health"):
        recorded = list(CronRun.objects.filter(cron=cron, started_at__gte=since).values_list("tick", flat=True))
        assert len(recorded) == len(set(recorded)), f"{cron}: a tick recorded twice"


def test_sigterm_rolling_restart_finishes_or_requeues_every_running_job(chaos_job_type, start_worker, drill_queue):
    # Given two workers on a batch of jobs that take a little time
    workers = [start_worker(drill_queue, concurrency=2, **chaos_env()) for _ in range(2)]
    ids = effect_batch(drill_queue, seconds=0.6)
    restarts, busy_at_sigterm, shutdown_seconds = 0, 0, []
    # When they are replaced one after another: a new worker starts, then the oldest gets SIGTERM
    for _ in range(4):
        old = workers.pop(0)
        wait_for(
            lambda old=old: (
                Job.objects.filter(pk__in=ids, status=Status.RUNNING, worker=old.name).exists()
                or not Job.objects.filter(pk__in=ids).open().exists()
            ),
            timeout=60,
            what=f"{old.name} to be running a job",
        )
        workers.append(start_worker(drill_queue, concurrency=2, **chaos_env()))
        busy = Job.objects.filter(pk__in=ids, status=Status.RUNNING, worker=old.name).count()
        started = time.monotonic()
        old.proc.send_signal(signal.SIGTERM)
        try:
            code = old.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            old.kill()
            pytest.fail(f"{old.name} did not finish its warm shutdown within 60 s:\n{old.log()[-3000:]}")
        shutdown_seconds.append(time.monotonic() - started)
        assert code == 0, f"{old.name} exited {code}:\n{old.log()[-3000:]}"
        restarts += 1
        busy_at_sigterm += busy
    # Then every running job was finished by its worker or handed back unstarted: none lost, none twice
    figures = report(
        "sigterm-rolling-restart",
        ids,
        extra=lambda: {
            "restarts": restarts,
            "running_at_sigterm": busy_at_sigterm,
            "shutdown_max_s": round(max(shutdown_seconds), 1),
            **effect_figures(ids),
        },
    )
    assert_clean(figures)
    assert_effects_once(figures)
    assert figures["redelivered"] == 0
    assert figures["running_at_sigterm"] >= 3
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
