"""The reaper, run by a real beat and a real cron worker every second: no job stays non-terminal.

One stack (beat + cron worker) serves the module, as one serves a deployment; each test breaks a
job the way production does (SIGKILL, a lost message, a broker down at submit, a deadline with no
worker left) and waits for the reaper to end it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from results.models import (
    AttemptOutcome,
    CronRun,
    DeadLetter,
    DeadLetterReason,
    HookState,
    Job,
    Status,
)
from tasks.submit.actions import cancel
from tasks.submit.outbox import _new_job, submit
from tests.helpers import ARTIFACTS, WorkerProcess, broker_kind, wait_for, wait_status, wait_terminal
from tests.tasks.crons.cron_support import start_cron_stack, webhooks_with_key

pytestmark = pytest.mark.django_db(transaction=True)

#: A job queue the stack's health cron sends canaries through (the message-loss test needs one).
CANARIED_QUEUE = f"reap-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def reaper_stack(django_db_setup, django_db_blocker, session_worker, alert_sink, mail_dir):
    with django_db_blocker.unblock():
        stack = start_cron_stack(
            "reaper",
            sink=alert_sink,
            mail_dir=mail_dir,
            TERMINUS_QUEUES=f"default,slow,{CANARIED_QUEUE}",
            TERMINUS_REAPER_GRACE="1",
            TERMINUS_REAPER_UNDISPATCHED_AFTER="1",
            TERMINUS_REAPER_QUEUED_AFTER="1",
            TERMINUS_REAPER_RETRY_AFTER="3",
            TERMINUS_CANARY_TIMEOUT="3",
            TERMINUS_HOOK_LEASE="2",
            TERMINUS_HOOK_MAX_ATTEMPTS="3",
        )
    yield stack
    stack.stop()


@pytest.fixture
def reaper(reaper_stack, transactional_db, settings):
    reaper_stack.ensure_worker()
    settings.TERMINUS_QUEUES = [*settings.TERMINUS_QUEUES, CANARIED_QUEUE]
    return reaper_stack


@pytest.fixture
def start_worker(transactional_db, session_worker, request) -> Iterator[Callable[..., WorkerProcess]]:
    """Dedicated workers for one test, SIGKILLed when it ends (they are idle by then, and a warm
    shutdown costs seconds per worker)."""
    started: list[WorkerProcess] = []

    def start(queues: str, **env: str) -> WorkerProcess:
        log = ARTIFACTS / f"{request.node.name}-{len(started)}.log"
        log.unlink(missing_ok=True)
        worker = WorkerProcess(queues=queues, log_path=log, **env)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        if worker.alive():
            worker.kill()


def outcomes(job: Job) -> list[str]:
    return [attempt.outcome for attempt in job.attempt_history()]


def hook_record(job_id) -> dict | None:
    """What diagnostics.hooked's on_terminal hook wrote for the job (None until it ran)."""
    path = Path(settings.MEDIA_ROOT) / "diagnostics" / "terminal" / f"{job_id}.json"
    return json.loads(path.read_text()) if path.exists() else None


def reaper_did(what: str, since) -> int:
    """How many times the reaper's runs since ``since`` reported doing ``what``."""
    runs = CronRun.objects.filter(cron="reaper", started_at__gte=since, status="succeeded")
    return sum((run.result or {}).get(what, 0) for run in runs)


def test_a_job_whose_worker_is_killed_and_never_restarted_fails_as_lost_is_dead_lettered_and_alerted(
    reaper, start_worker, drill_queue, alert_sink
):
    # Given a job with no attempts to spare, running on a worker
    worker = start_worker(drill_queue)
    job = submit("diagnostics.hooked", {"seconds": 60}, queue=drill_queue)
    wait_status(job.id, Status.RUNNING)
    # When the whole worker is SIGKILLed (a vanished host) and nothing ever runs the queue again
    worker.kill()
    # Then the reaper notices the silence past the hard limit and ends the job as lost
    done = wait_terminal(job.id, timeout=60)
    assert (done.status, done.error_type) == (Status.FAILED, "lost")
    assert done.lost_deliveries == 1
    assert outcomes(done) == [AttemptOutcome.LOST]
    # And a human hears of it: a dead letter, alerted once
    letter = wait_for(lambda: DeadLetter.objects.filter(job_id=job.id).first(), what="the dead letter")
    assert letter.reason == DeadLetterReason.LOST
    hooks = wait_for(lambda: alert_sink.webhooks_for(job.id), what="the alert")
    assert len(hooks) == 1
    # And the job type's on_terminal hook ran after the reaper's transition, with no worker alive
    record = wait_for(lambda: hook_record(job.id), what="the on_terminal hook")
    assert (record["status"], record["error_type"]) == ("failed", "lost")
    assert wait_for(lambda: Job.objects.get(pk=job.id).terminal_hook == HookState.DONE, what="hook done")


def test_a_job_whose_worker_is_killed_with_attempts_left_is_run_again_and_succeeds(reaper, start_worker, drill_queue):
    # Given a job running on a worker (diagnostics.fail has retries to spare)
    first = start_worker(drill_queue)
    job = submit("diagnostics.fail", {"mode": "sleep", "seconds": 1}, queue=drill_queue)
    wait_status(job.id, Status.RUNNING)
    # When its worker vanishes, and another worker serves the queue
    first.kill()
    start_worker(drill_queue)
    # Then the reaper counts the lost attempt and publishes the job again; the new worker finishes
    # it, and its own (live) attempt is not reaped while the reaper keeps ticking
    done = wait_terminal(job.id, timeout=60)
    assert done.status == Status.SUCCEEDED
    assert (done.attempts, done.lost_deliveries) == (2, 1)
    assert outcomes(done) == [AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED]
    assert done.attempt_set.get(number=1).error_type == "lost"


def delete_message(queue: str, job_id) -> int:
    """Delete the job's message from the broker, as a Redis restart without persistence does."""
    if broker_kind() in {"redis", "rediss"}:
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        deleted = 0
        for key in client.scan_iter(match=f"{queue}*"):
            if client.type(key) != b"list":
                continue
            for message in client.lrange(key, 0, -1):
                if str(job_id).encode() in message:
                    deleted += client.lrem(key, 1, message)
        return deleted
    if broker_kind() == "filesystem":
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        deleted = 0
        for path in folder.glob(f"*.{queue}.msg"):
            if str(job_id) in path.read_text(errors="replace"):
                path.unlink()
                deleted += 1
        return deleted
    pytest.skip(f"no way to delete one message on {broker_kind()}")
    return 0


def test_a_job_whose_message_was_deleted_from_the_broker_is_published_again_and_succeeds(reaper, start_worker):
    # Given a job published to a queue no worker consumes yet
    job = submit("diagnostics.sleep", {"seconds": 0}, queue=CANARIED_QUEUE)
    first_dispatch = wait_for(lambda: Job.objects.get(pk=job.id).dispatched_at, what="the publish")
    # When its message vanishes from the broker, and then a worker comes for the queue
    assert delete_message(CANARIED_QUEUE, job.id) == 1
    start_worker(CANARIED_QUEUE)
    # Then once the queue's canary shows the worker consumed past the job, the reaper publishes it
    # again (same id) and it runs once
    done = wait_terminal(job.id, timeout=60)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 1)
    assert done.dispatched_at > first_dispatch


def test_a_job_never_published_because_the_broker_was_down_is_published_by_the_reaper(reaper, worker):
    # Given a job recorded while the broker was down: the row exists, its message was never sent
    # (exactly what submit() leaves behind when the publish after commit fails)
    job = _new_job(
        "diagnostics.sleep", {"seconds": 0}, owner=None, tenant=None, queue=None, countdown=None,
        correlation_id=None, now=timezone.now(),
    )  # fmt: skip
    job.dispatched_at = None  # the mark submit takes back when the broker refuses the message
    job.save(force_insert=True)
    assert Job.objects.undispatched().filter(pk=job.pk).exists()
    # Then the reaper publishes it and a worker runs it
    done = wait_terminal(job.id, timeout=60)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 1)
    assert done.dispatched_at is not None


def test_a_retrying_job_whose_retry_message_died_with_its_worker_is_published_again(reaper, start_worker, drill_queue):
    since = timezone.now()
    # Given a job whose first attempt failed; its worker holds the delayed retry message
    first = start_worker(drill_queue, TERMINUS_RETRY_BACKOFF_BASE="4", TERMINUS_RETRY_BACKOFF_MAX="4")
    job = submit("diagnostics.fail", {"mode": "times", "times": 1}, queue=drill_queue)
    wait_status(job.id, Status.RETRYING)
    wait_for(lambda: first.log().count(f"{job.id}] received") >= 2, what="the worker to hold the retry")
    # When that worker dies with it, and another serves the queue
    first.kill()
    start_worker(drill_queue)
    # Then the reaper publishes the overdue retry (as retry 1) and the job succeeds on attempt 2
    done = wait_terminal(job.id, timeout=60)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 2)
    assert outcomes(done) == [AttemptOutcome.RETRIED, AttemptOutcome.SUCCEEDED]
    assert reaper_did("retries_redispatched", since) >= 1


def test_a_job_past_its_deadline_fails_as_deadline_exceeded_with_no_worker_to_run_it(
    reaper, drill_queue, settings, alert_sink
):
    # Given a job with a deadline seconds away, on a queue nobody consumes
    settings.TERMINUS_QUEUE_TIMEOUT = 1
    job = submit("diagnostics.hooked", {}, queue=drill_queue)
    # Then at its deadline the reaper fails it, dead-letters it, alerts and runs its hook
    done = wait_terminal(job.id, timeout=60)
    assert (done.status, done.error_type) == (Status.FAILED, "deadline_exceeded")
    assert done.finished_at >= done.terminal_by
    letter = wait_for(lambda: DeadLetter.objects.filter(job_id=job.id).first(), what="the dead letter")
    assert letter.reason == DeadLetterReason.DEADLINE_EXCEEDED
    wait_for(lambda: alert_sink.webhooks_for(job.id), what="the alert")
    record = wait_for(lambda: hook_record(job.id), what="the on_terminal hook")
    assert (record["status"], record["error_type"]) == ("failed", "deadline_exceeded")


def test_the_hook_of_a_job_cancelled_through_the_api_is_run_by_the_reaper(reaper, drill_queue):
    # Given a queued job of a type with an on_terminal hook, cancelled (no worker involved)
    job = submit("diagnostics.hooked", {}, queue=drill_queue)
    assert cancel(job)
    # Then the reaper runs the hook for it
    record = wait_for(lambda: hook_record(job.id), what="the on_terminal hook")
    assert record["status"] == "cancelled"
    # (the hook writes its record before the runner marks it done)
    wait_for(lambda: Job.objects.filter(pk=job.id, terminal_hook=HookState.DONE).exists(), what="the hook marked done")


def test_a_hook_that_raises_is_run_again_by_the_reaper_and_never_changes_the_job(reaper, worker):
    # Given a job whose hook fails on its first two runs (the third of TERMINUS_HOOK_MAX_ATTEMPTS=3 works)
    job = submit("diagnostics.hooked", {"hook_failures": 2})
    done = wait_terminal(job.id)
    # Then the worker's run failed, the reaper ran it again until it worked, and the job kept its state
    record = wait_for(lambda: hook_record(job.id), timeout=60, what="the hook's third run")
    assert record["run"] == 3
    again = Job.objects.get(pk=job.id)
    assert (again.status, again.terminal_hook, again.terminal_hook_attempts) == (done.status, HookState.DONE, 3)
    assert again.version == done.version  # the hook's bookkeeping is not a state change


def test_a_hook_that_keeps_failing_gives_up_and_alerts_once(reaper, worker, alert_sink):
    job = submit("diagnostics.hooked", {"hook_failures": 100})
    wait_terminal(job.id)
    gave_up = wait_for(
        lambda: Job.objects.filter(pk=job.id, terminal_hook=HookState.GAVE_UP).first(), what="the hook to give up"
    )
    assert gave_up.terminal_hook_attempts == 3
    assert "failing run 3 as told" in gave_up.terminal_hook_error
    alerts = wait_for(lambda: webhooks_with_key(alert_sink, "hook|diagnostics.hooked"), what="the alert")
    assert str(job.id) in alerts[-1]["text"]
    assert sum(str(job.id) in hook["text"] for hook in webhooks_with_key(alert_sink, "hook|diagnostics.hooked")) == 1
    assert hook_record(job.id) is None


def test_a_failed_job_whose_dead_letter_was_never_published_is_dead_lettered_by_the_reaper(reaper, worker):
    # Given a job that failed while the broker was down: failed, but no dead letter reached the queue
    job = _new_job(
        "diagnostics.sleep", {"seconds": 0}, owner=None, tenant=None, queue=None, countdown=None,
        correlation_id=None, now=timezone.now(),
    )  # fmt: skip
    job.save(force_insert=True)
    assert job.mark_failed(error_type="unknown_job_type", error_message="recorded, never published")
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(minutes=2))
    # Then the reaper publishes its dead letter, and it is recorded once
    letter = wait_for(lambda: DeadLetter.objects.filter(job_id=job.id).first(), what="the dead letter")
    assert letter.error_type == "unknown_job_type"
    assert Job.objects.get(pk=job.pk).dead_lettered_at is not None


def test_every_reaper_tick_ends_in_a_recorded_run(reaper):
    since = timezone.now()
    wait_for(
        lambda: CronRun.objects.filter(cron="reaper", started_at__gte=since, status="succeeded").count() >= 2,
        what="two reaper runs",
    )
    runs = CronRun.objects.filter(cron="reaper", started_at__gte=since).exclude(status="running")
    assert set(runs.values_list("status", flat=True)) <= {"succeeded", "skipped"}
    assert all(run.finished_at and run.result is not None for run in runs if run.status == "succeeded")
    assert runs.aggregate(Sum("duplicates"))["duplicates__sum"] == 0  # one beat: nothing to refuse
