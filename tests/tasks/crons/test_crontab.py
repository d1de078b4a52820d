"""Crontab crons with two real beats and a real cron worker: one run per matching minute, at that minute.

The stack runs the drill cron of tests/tasks/crons/crontab_drills.py (``* * * * *`` in code) and the
built-in alert flush re-timed by its environment variable to the same crontab; the other built-in
crons are moved out of the way (hourly). The test looks at the first whole minute after the stack
started: up to 65 s away, plus the run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from results.models import CronRun, CronRunStatus
from tests.helpers import wait_for
from tests.tasks.crons.cron_support import start_cron_stack
from tests.tasks.crons.drill_log import executions_log

DRILLS = "tests.tasks.crons.crontab_drills"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_beats(django_db_setup, django_db_blocker, alert_sink, mail_dir):
    with django_db_blocker.unblock():
        stack = start_cron_stack(
            "crontab",
            sink=alert_sink,
            mail_dir=mail_dir,
            beats=2,
            TERMINUS_CRON_MODULES=DRILLS,
            TERMINUS_ALERT_FLUSH_INTERVAL="* * * * *",  # a built-in cron, re-timed to a crontab by env
            TERMINUS_REAPER_INTERVAL="3600",
            TERMINUS_HEALTH_INTERVAL="3600",
        )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def first_minute(two_beats) -> datetime:
    """The first whole minute both beats were up for (5 s of margin for their schedules to load)."""
    return (timezone.now() + timedelta(seconds=5)).replace(second=0, microsecond=0) + timedelta(minutes=1)


@pytest.fixture
def crons(two_beats, transactional_db, settings):
    two_beats.ensure_worker()
    assert all(beat.alive() for beat in two_beats.beats)
    settings.TERMINUS_CRON_QUEUE = two_beats.cron_queue  # where the drill records its executions
    return two_beats


def the_run_of(cron: str, tick: datetime) -> CronRun:
    """The run of ``cron`` for ``tick``, once it succeeded and the second beat's send was refused."""
    return wait_for(
        lambda: CronRun.objects.filter(cron=cron, tick=tick, status=CronRunStatus.SUCCEEDED, duplicates__gte=1).first(),
        timeout=(tick - timezone.now()).total_seconds() + 45,  # the minute (at most 65 s away), then the run
        what=f"{cron}'s run of {tick:%H:%M} to succeed and the second send to be refused",
    )


@pytest.mark.django_db(transaction=True)
def test_crontab_crons_run_once_at_their_minute_with_two_beats(crons, first_minute):
    # Given two beats sending a cron declared with "* * * * *" in code, and the built-in alert flush
    # re-timed by TERMINUS_ALERT_FLUSH_INTERVAL="* * * * *"
    for cron in ("drill.minutely", "alerts"):
        # When the first whole minute comes, each runs for it: not before it, and soon after it
        run = the_run_of(cron, first_minute)
        assert first_minute <= run.started_at < first_minute + timedelta(seconds=30), (cron, run.started_at)
        # Once: the other beat's send of the same minute was refused and counted
        assert CronRun.objects.filter(cron=cron, tick=first_minute).count() == 1
        # And every run since was for a whole minute, never for a moment between two (earlier rows
        # may be an earlier stack's, on its seconds-long schedule)
        ticks = list(CronRun.objects.filter(cron=cron, tick__gte=first_minute).values_list("tick", flat=True))
        assert all(tick.second == 0 and tick.microsecond == 0 for tick in ticks), (cron, ticks)
    # The drill's body really ran once for that minute (its own log, apart from the run records)
    executed = executions_log("drill.minutely").read_text().splitlines()
    assert executed.count(first_minute.isoformat()) == 1, executed
    assert len(executed) == len(set(executed)), f"a minute ran more than once: {executed}"
