"""The cron runner with two real beats (started by mistake) and a real cron worker, on a schedule of seconds.

The stack also runs the drill crons of tests/tasks/crons/cron_drills.py: one that counts its executions,
one that always raises, one that outlives its interval and one its hard time limit kills.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime

import pytest
from django.utils import timezone

from results.models import CronRun, CronRunStatus, HealthState
from tasks.crons.registry import TICK_HEADER
from tests.helpers import wait_for
from tests.tasks.crons.cron_support import start_cron_stack, webhooks_with_key
from tests.tasks.crons.drill_log import executions_log

DRILLS = "tests.tasks.crons.cron_drills"


@pytest.fixture(scope="module")
def two_beats(django_db_setup, django_db_blocker, session_worker, alert_sink, mail_dir):
    with django_db_blocker.unblock():
        stack = start_cron_stack(
            "crons", sink=alert_sink, mail_dir=mail_dir, beats=2, concurrency=4, TERMINUS_CRON_MODULES=DRILLS
        )
    yield stack
    stack.stop()


@pytest.fixture
def crons(two_beats, transactional_db, settings):
    two_beats.ensure_worker()
    assert all(beat.alive() for beat in two_beats.beats)
    settings.TERMINUS_CRON_QUEUE = two_beats.cron_queue  # where the drills record their executions
    return two_beats


def runs(cron: str, since: datetime, **filters) -> list[CronRun]:
    return list(CronRun.objects.filter(cron=cron, started_at__gte=since, **filters).order_by("tick"))


@pytest.mark.django_db(transaction=True)
def test_two_beats_run_each_cron_once_per_tick(crons):
    since = timezone.now()
    # Given two beats sending every cron (each tick is sent twice)
    wait_for(lambda: len(runs("drill.count", since, status="succeeded")) >= 4, timeout=60, what="four ticks")
    # Then each tick's body ran exactly once: the second send was refused by the lock and counted
    ticks = executions_log("drill.count").read_text().splitlines()  # every execution since the stack started
    repeated = {tick: n for tick, n in Counter(ticks).items() if n > 1}
    assert repeated == {}, f"ticks run more than once: {repeated}"
    counted = runs("drill.count", since, status="succeeded")
    assert {run.tick.isoformat() for run in counted} <= set(ticks)
    for cron in ("reaper", "health", "drill.count"):
        wait_for(
            lambda cron=cron: sum(run.duplicates for run in runs(cron, since)) >= 1,
            what=f"the second beat's send of {cron} to be refused",
        )
        recorded = runs(cron, since)
        assert len({run.tick for run in recorded}) == len(recorded)  # one run per tick, every cron


@pytest.mark.django_db(transaction=True)
def test_a_cron_that_raises_is_recorded_and_alerted_once_while_the_others_keep_running(crons, alert_sink):
    since = timezone.now()
    # Given a cron that raises on every tick
    failed = wait_for(lambda: runs("drill.explode", since, status="failed")[1:], timeout=60, what="two failed runs")
    # Then every failing run is recorded with its error, and ends
    for run in failed:
        assert (run.error_type, run.error_message) == ("RuntimeError", "drill: this cron always fails")
        assert "cron_drills.py" in run.traceback and run.finished_at is not None
    state = HealthState.objects.get(name="cron:drill.explode")
    assert state.ok is False and state.detail["error_type"] == "RuntimeError"
    # And people heard of it once, not once per tick: more failures bring no more alerts
    alerts = wait_for(lambda: webhooks_with_key(alert_sink, "cron|drill.explode"), what="the alert")
    assert any("drill: this cron always fails" in alert["text"] for alert in alerts)
    wait_for(lambda: len(runs("drill.explode", since, status="failed")) >= len(failed) + 3, what="more failures")
    assert webhooks_with_key(alert_sink, "cron|drill.explode") == alerts
    # While the other crons kept running, after the failures too
    after = failed[-1].started_at
    for cron in ("reaper", "health", "drill.count"):
        wait_for(lambda cron=cron: runs(cron, after, status="succeeded"), what=f"{cron} to run after the failure")


@pytest.mark.django_db(transaction=True)
def test_a_cron_still_running_at_its_next_tick_is_skipped_and_counted_not_stacked(crons):
    since = timezone.now()
    # Given a cron that runs for 2.5 s on a 1 s schedule
    wait_for(lambda: len(runs("drill.slow", since, status="skipped")) >= 2, timeout=60, what="skipped ticks")
    wait_for(lambda: len(runs("drill.slow", since, status="succeeded")) >= 2, timeout=60, what="two full runs")
    recorded = runs("drill.slow", since)
    skipped = [run for run in recorded if run.status == CronRunStatus.SKIPPED]
    assert all("is still running" in run.error_message and run.finished_at for run in skipped)
    # Then its runs never overlapped: each started after the one before had finished
    done = sorted((run for run in recorded if run.status == CronRunStatus.SUCCEEDED), key=lambda r: r.started_at)
    for earlier, later in itertools.pairwise(done):
        assert later.started_at >= earlier.finished_at, (earlier, later)


@pytest.mark.django_db(transaction=True)
def test_a_cron_message_runs_for_the_tick_beat_stamped_on_it_not_the_workers_clock(crons):
    from tests.tasks.crons.cron_drills import count

    stamped = datetime(2020, 1, 1, tzinfo=UTC)
    # A send stamped with a tick long past (as a second beat's late send would be) ...
    for _ in range(2):
        count.cron_task.apply_async(queue=crons.cron_queue, headers={TICK_HEADER: stamped.timestamp()})
    # ... runs once, for that tick, and the second send of it is refused (the two sends may run
    # side by side: the refusal can land while the first is still running)
    run = wait_for(
        lambda: CronRun.objects.filter(
            cron="drill.count", tick=stamped, duplicates=1, status=CronRunStatus.SUCCEEDED
        ).first(),
        what="the run, finished, with the second send refused",
    )
    assert CronRun.objects.filter(cron="drill.count", tick=stamped).count() == 1
    assert run.finished_at is not None


# Last of the stack's tests: the kill disturbs the worker's pool for a while.
@pytest.mark.django_db(transaction=True)
def test_a_cron_killed_by_its_hard_time_limit_is_recorded_as_failed(crons):
    from tests.tasks.crons.cron_drills import stuck

    since = timezone.now()
    # Given a cron that ignores its soft time limit (sent once, as beat would)
    stuck.cron_task.apply_async(queue=crons.cron_queue)
    # Then the worker kills it at its hard limit and its main process records the run as failed
    run = wait_for(lambda: runs("drill.stuck", since, status="failed")[:1], timeout=60, what="the killed run")[0]
    assert run.error_type == "TimeLimitExceeded"
    assert run.finished_at is not None
