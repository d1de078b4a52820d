"""A dead worker's jobs run again within seconds: on its restart, or, while another worker lives, at the
next repair pass. Real worker processes, SIGKILLed as when a node dies or the kernel OOM-kills it.

The workers run with the production defaults of everything recovery depends on (job time limit,
reaper grace, node heartbeat, dead-after, repair interval); each test prints its figure.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from results.models import LOST_MESSAGE, AttemptOutcome, Job, Status, WorkerNode
from tasks.recovery.repairs import NODE_DEAD, NODE_RESTARTED
from tasks.submit.outbox import submit
from tests.helpers import PRODUCTION_RECOVERY as PRODUCTION
from tests.helpers import broker_kind, wait_for, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq, pytest.mark.slow]

JOBS, SECONDS = 20, 3  # the batch: 20 jobs of 3 s


def sleepers(queue: str) -> list[Job]:
    return [submit("diagnostics.sleep", {"seconds": SECONDS}, queue=queue) for _ in range(JOBS)]


def running(jobs: list[Job]) -> list[Job]:
    return list(Job.objects.filter(pk__in=[job.pk for job in jobs], status=Status.RUNNING))


def seconds_until_recovered(jobs: list[Job], interrupted: list[Job], since: float) -> float:
    """Seconds from ``since`` until every interrupted job was running again (a later attempt) or terminal."""

    def recovered() -> bool:
        rows = Job.objects.filter(pk__in=[job.pk for job in interrupted])
        return all(row.terminal or row.attempts > 1 for row in rows)

    wait_for(recovered, timeout=120, interval=0.2, what="the interrupted jobs to run again")
    return time.monotonic() - since


def interrupt_two(start_worker: Any, queue: str) -> tuple[Any, list[Job], list[Job]]:
    """A worker (production defaults) running two of a batch of sleepers: (worker, batch, the two)."""
    worker = start_worker(queue, concurrency=2, **PRODUCTION)
    jobs = sleepers(queue)
    interrupted = wait_for(lambda: running(jobs) if len(running(jobs)) == 2 else None, what="two running jobs")
    return worker, jobs, interrupted


def assert_recovered(
    figure_name: str, jobs: list[Job], interrupted: list[Job], since: float, *, within: float, rule: str
) -> None:
    """Print the figure line (seconds from ``since`` until every interrupted job ran again), then check
    it, that every job succeeded, and that each interrupted attempt was closed as lost by ``rule``."""
    figure = seconds_until_recovered(jobs, interrupted, since)
    done = [wait_terminal(job.id, timeout=120) for job in jobs]
    print(f"{figure_name}: {figure:.1f} s until every interrupted job ran again")
    assert figure <= within
    assert [job.status for job in done] == [Status.SUCCEEDED] * JOBS
    for job in interrupted:
        assert lost_reasons(Job.objects.get(pk=job.pk)) in expected_reasons(rule)


def expected_reasons(rule: str) -> list[list[str]]:
    """How an interrupted attempt may be closed: by ``rule``; on RabbitMQ also by the claim of its
    redelivery (RabbitMQ requeues a dead consumer's messages at once, so that may come first)."""
    return [[rule], [LOST_MESSAGE]] if broker_kind().startswith("amqp") else [[rule]]


def lost_reasons(job: Job) -> list[str]:
    return [a.error_message for a in job.attempt_history() if a.outcome == AttemptOutcome.LOST]


def test_a_worker_killed_and_started_again_runs_its_interrupted_jobs_again_at_once(start_worker, drill_queue):
    # Given a worker running jobs of 3 s
    worker, jobs, interrupted = interrupt_two(start_worker, drill_queue)
    # When it is SIGKILLed (main process and children) and started again a second later, same node name
    worker.kill()
    time.sleep(1)
    restarted_at = time.monotonic()
    start_worker(drill_queue, concurrency=2, name=worker.name, **PRODUCTION)
    # Then the jobs it was running run again at once (from the restart), not after a time limit, and every job ends
    assert_recovered("kill9-worker-restart", jobs, interrupted, restarted_at, within=30, rule=NODE_RESTARTED)
    old = WorkerNode.objects.filter(hostname=worker.name).order_by("started_at").first()
    assert old is not None and old.stopped_at is not None


def test_a_worker_killed_for_good_has_its_jobs_run_by_another_live_worker_within_a_minute(start_worker, drill_queue):
    # Given two workers on one queue, one of them running jobs
    doomed, jobs, interrupted = interrupt_two(start_worker, drill_queue)
    start_worker(drill_queue, concurrency=2, **PRODUCTION)
    # When the first is SIGKILLed and never comes back (and no beat, no crons worker runs)
    killed_at = time.monotonic()
    doomed.kill()
    # Then the survivor's repair pass sees the node dead and its jobs run again (from the kill), well
    # before any time limit
    assert_recovered("kill9-worker-no-restart", jobs, interrupted, killed_at, within=60, rule=NODE_DEAD)


def test_a_warm_shutdown_records_the_node_as_stopped_once_its_jobs_finished(start_worker, drill_queue):
    worker = start_worker(drill_queue, **PRODUCTION)
    node = wait_for(lambda: WorkerNode.objects.filter(hostname=worker.name).first(), what="the node row")
    job = submit("diagnostics.sleep", {"seconds": 2}, queue=drill_queue)
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=Status.RUNNING).exists(), what="the job running")
    worker.stop(timeout=60)
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED
    stopped: Any = WorkerNode.objects.get(pk=node.pk)
    assert stopped.stopped_at is not None and stopped.last_seen_at <= stopped.stopped_at
