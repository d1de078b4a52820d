"""``manage.py fleet``: queue depths, workers and what they run, stuck jobs, failure rates, and pause,
resume and drain of a queue on real worker processes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from results.models import AttemptOutcome, Job, JobAttempt, Status
from tasks.submit.outbox import submit
from tests.helpers import ROOT, wait_for, wait_status, wait_terminal

pytestmark = pytest.mark.django_db(transaction=True)


#: Broadcast replies on a loaded 2-core box can take more than the default second.
REPLY_TIMEOUT = "3"


def fleet(*argv: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("fleet", *argv, "--json", "--reply-timeout", REPLY_TIMEOUT, stdout=out)
    return json.loads(out.getvalue())


def by_name(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in rows}


def test_pause_stops_a_queue_everywhere_and_resume_gives_it_back_only_to_its_own_workers(
    ops_worker, drill_queue, settings
):
    # Given a worker on the drill queue and another worker on a different queue
    other_queue = f"{drill_queue}-other"
    settings.TERMINUS_QUEUES = [*settings.TERMINUS_QUEUES, other_queue]
    drill_worker = ops_worker(drill_queue)
    other_worker = ops_worker(other_queue)
    # When the drill queue is paused
    assert fleet("pause", drill_queue)["paused"] == [drill_worker.name]
    jobs = [submit("diagnostics.sleep", {}, queue=drill_queue) for _ in range(3)]
    # Then its jobs wait in the broker, untouched
    queues = wait_for(
        lambda: (found := by_name(fleet("queues")["queues"], "queue"))[drill_queue]["waiting"] == 3 and found,
        what="3 messages waiting",
    )
    assert queues[drill_queue]["consumers"] == 0 and queues[other_queue]["consumers"] == 1
    time.sleep(1.5)
    assert set(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("status", "attempts")) == {("queued", 0)}
    workers = by_name(
        fleet("workers", "--worker", drill_worker.name, "--worker", other_worker.name)["workers"], "worker"
    )
    assert workers[drill_worker.name]["paused"] == [drill_queue]
    # When it is resumed (naming both workers: the answer comes as soon as both have answered)
    resumed = fleet("resume", drill_queue, "--worker", drill_worker.name, "--worker", other_worker.name)
    # Then only the worker started with it takes it again, and the jobs run
    assert (resumed["resumed"], resumed["skipped"]) == ([drill_worker.name], [other_worker.name])
    assert {wait_terminal(job.id).status for job in jobs} == {Status.SUCCEEDED}
    workers = by_name(
        fleet("workers", "--worker", drill_worker.name, "--worker", other_worker.name)["workers"], "worker"
    )
    assert workers[other_worker.name]["consuming"] == [other_queue]
    assert drill_queue in workers[drill_worker.name]["consuming"] and workers[drill_worker.name]["paused"] == []


def test_drain_lets_running_jobs_finish_and_leaves_the_rest_queued(ops_worker, drill_queue):
    # Given a worker running a long job, with three more jobs queued behind it
    worker = ops_worker(drill_queue)
    running = submit("diagnostics.sleep", {"seconds": 6}, queue=drill_queue)
    wait_status(running.id, Status.RUNNING)
    queued = [submit("diagnostics.sleep", {}, queue=drill_queue) for _ in range(3)]
    # Then the worker says what it runs
    (seen,) = fleet("workers", "--worker", worker.name)["workers"]
    assert seen["worker"] == worker.name and seen["concurrency"] == 1
    assert [(t["id"], t["type"], t["queue"]) for t in seen["active"]] == [
        (str(running.id), "diagnostics.sleep", drill_queue)
    ]
    # When the queue is drained on it
    drained = fleet("drain", drill_queue, "--worker", worker.name, "--wait", "60s")
    # Then the running job finished, the others never started and still wait in the broker
    assert drained["paused"] == [worker.name] and drained["waiting"] == 3
    assert Job.objects.get(pk=running.pk).status == Status.SUCCEEDED
    assert set(Job.objects.filter(pk__in=[j.pk for j in queued]).values_list("status", "attempts")) == {("queued", 0)}
    queue = by_name(fleet("queues")["queues"], "queue")[drill_queue]
    assert (queue["consumers"], queue["waiting"], queue["queued_jobs"], queue["running_jobs"]) == (0, 3, 3, 0)
    # And once resumed they all run, each once
    fleet("resume", drill_queue, "--worker", worker.name)
    assert {wait_terminal(job.id).status for job in queued} == {Status.SUCCEEDED}
    ran = Job.objects.filter(pk__in=[running.pk, *(j.pk for j in queued)])
    assert [len(job.attempt_history()) for job in ran] == [1, 1, 1, 1]


def test_drain_that_runs_out_of_time_fails_naming_the_jobs_still_running(ops_worker, drill_queue):
    worker = ops_worker(drill_queue)
    running = submit("diagnostics.sleep", {"seconds": 4}, queue=drill_queue)
    wait_status(running.id, Status.RUNNING)
    with pytest.raises(CommandError, match=str(running.id)):
        call_command("fleet", "drain", drill_queue, "--worker", worker.name, "--wait", "1s", stdout=io.StringIO())
    fleet("resume", drill_queue, "--worker", worker.name)
    assert wait_terminal(running.id).status == Status.SUCCEEDED


def make_job(**fields: Any) -> Job:
    now = timezone.now()
    defaults = {"type": "diagnostics.sleep", "terminal_by": now + timedelta(hours=1), "dispatched_at": now}
    return Job.objects.create(**{**defaults, **fields})


def test_stuck_lists_open_jobs_past_deadline_silent_unpublished_or_overdue_and_says_why():
    now = timezone.now()
    old = now - timedelta(minutes=10)
    late = make_job(status=Status.QUEUED, terminal_by=now - timedelta(seconds=5))
    silent = make_job(status=Status.RUNNING, heartbeat_at=old, worker="w1@host")
    unpublished = make_job(status=Status.QUEUED, dispatched_at=None)
    Job.objects.filter(pk=unpublished.pk).update(created_at=old)
    overdue = make_job(status=Status.RETRYING, next_retry_at=old)
    make_job(status=Status.RUNNING, heartbeat_at=now)  # alive
    make_job(status=Status.FAILED, terminal_by=now - timedelta(hours=1))  # terminal: not stuck
    make_job(status=Status.QUEUED, dispatched_at=None)  # just submitted
    report = fleet("stuck", "--stale", "5m")
    reasons = {job["id"]: job["reasons"] for job in report["jobs"]}
    assert report["count"] == 4
    assert reasons == {
        str(late.pk): ["past deadline"],
        str(silent.pk): ["no heartbeat for 5m"],
        str(unpublished.pk): ["never published"],
        str(overdue.pk): ["retry overdue"],
    }
    assert len(fleet("stuck", "--stale", "5m", "--limit", "2")["jobs"]) == 2


def test_failures_reports_rates_retries_and_top_errors_per_type_in_the_window():
    now = timezone.now()
    for status, error in [
        (Status.SUCCEEDED, ""),
        (Status.SUCCEEDED, ""),
        (Status.SUCCEEDED, ""),
        (Status.FAILED, "TimeoutError"),
        (Status.FAILED, "TimeoutError"),
        (Status.FAILED, "PermanentError"),
        (Status.CANCELLED, "cancelled"),
    ]:
        job = make_job(type="webhook.deliver", status=status, error_type=error, finished_at=now)
        JobAttempt.objects.create(job=job, number=1, outcome=AttemptOutcome.RETRIED, finished_at=now)
    make_job(type="diagnostics.sleep", status=Status.SUCCEEDED, finished_at=now)
    make_job(type="webhook.deliver", status=Status.FAILED, error_type="Old", finished_at=now - timedelta(hours=3))
    report = by_name(fleet("failures", "--since", "1h")["types"], "type")
    webhook = report["webhook.deliver"]
    assert (webhook["succeeded"], webhook["failed"], webhook["cancelled"]) == (3, 3, 1)
    assert webhook["failure_rate"] == 0.5
    # 7 recorded attempts, plus the 3 succeeded ones that only their jobs' rows record
    assert (webhook["attempts"], webhook["retried"]) == (10, 7)
    assert webhook["top_errors"] == [
        {"error_type": "TimeoutError", "count": 2},
        {"error_type": "PermanentError", "count": 1},
    ]
    assert report["diagnostics.sleep"]["failure_rate"] == 0.0
    assert list(by_name(fleet("failures", "--since", "1h", "--type", "diagnostics.sleep")["types"], "type")) == [
        "diagnostics.sleep"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "the following arguments are required: verb"),
        (("explode",), "invalid choice: 'explode'"),
        (("pause", "nope"), "unknown queue 'nope'; known queues: default"),
        (("resume",), "the following arguments are required: queue"),
        (("stuck", "--stale", "soon"), "--stale: 'soon' is not a duration"),
        (("stuck", "--limit", "0"), "--limit: 0 must be at least 1"),
        (("failures", "--since", "0s"), "--since: '0s' must be longer than 0 seconds"),
        (("drain", "default", "--wait", "forever"), "--wait: 'forever' is not a duration"),
        (("queues", "--reply-timeout", "-1"), "--reply-timeout: -1.0 must be more than 0"),
        (("workers", "--reply-timeout", "soon"), "invalid float value: 'soon'"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(argv: tuple[str, ...], message: str):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        call_command("fleet", *argv, stdout=io.StringIO(), stderr=io.StringIO())


def test_acting_on_workers_that_do_not_answer_fails(alone, drill_queue):
    with pytest.raises(CommandError, match=r"no worker answered within 0\.3s; nothing to pause"):
        call_command("fleet", "pause", drill_queue, "--reply-timeout", "0.3", stdout=io.StringIO())
    with pytest.raises(CommandError, match=r"no answer within 0\.3s from: ghost@nowhere"):
        call_command("fleet", "resume", "default", "--worker", "ghost@nowhere", "--reply-timeout", "0.3")


def test_the_command_line_exits_non_zero_with_the_message_on_stderr():
    result = subprocess.run(
        [sys.executable, "manage.py", "fleet", "stuck", "--stale", "soon"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "CommandError: --stale: 'soon' is not a duration" in result.stderr
    usage = subprocess.run(
        [sys.executable, "manage.py", "fleet"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert usage.returncode == 2 and "required: verb" in usage.stderr
