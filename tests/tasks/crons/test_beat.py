"""Beat's schedule for crontab crons: Celery's crontab in the schedule, each send stamped with its minute."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from celery.schedules import crontab

from tasks.crons.beat import aligned, beat_schedule, load, next_run, send_options
from tasks.crons.registry import TICK_HEADER


@pytest.fixture
def cleanup_at_three(settings):
    """The cleanup cron re-timed to 03:00 every day, as TERMINUS_CLEANUP_INTERVAL="0 3 * * *" does."""
    settings.TERMINUS_CLEANUP_INTERVAL = "0 3 * * *"
    return load()["cleanup"]


def test_a_crontab_cron_is_celerys_crontab_in_beats_schedule(cleanup_at_three, settings):
    schedule = beat_schedule()
    assert schedule["cleanup"]["schedule"] == crontab(minute=0, hour=3)
    assert schedule["cleanup"]["options"] == {"queue": settings.TERMINUS_CRON_QUEUE}  # expires: per send
    assert isinstance(schedule["reaper"]["schedule"], aligned)  # the intervals stay aligned


def test_two_beats_sending_in_the_same_minute_stamp_the_same_tick_and_expire_at_the_next(cleanup_at_three):
    # Given two beats that send the 03:00 run a few seconds apart (clocks and loops differ)
    stamps = [send_options(cleanup_at_three, datetime(2026, 3, 2, 3, 0, second, tzinfo=UTC)) for second in (0, 1, 7)]
    # Then every send carries the same tick: the lock lets one of them run
    assert {stamp["headers"][TICK_HEADER] for stamp in stamps} == {datetime(2026, 3, 2, 3, 0, tzinfo=UTC).timestamp()}
    # And a send still waiting in a backlog when the next 03:00 comes is dropped, not stacked
    assert {stamp["expires"] for stamp in stamps} == {datetime(2026, 3, 3, 3, 0, tzinfo=UTC)}


def test_an_interval_send_is_stamped_with_its_slot(settings):
    reaper = load()["reaper"]
    options = send_options(reaper, datetime(2026, 3, 2, 3, 0, 42, tzinfo=UTC))
    assert options == {"headers": {TICK_HEADER: datetime(2026, 3, 2, 3, 0, tzinfo=UTC).timestamp()}}


def test_the_next_run_of_a_crontab_cron_is_its_next_matching_minute(cleanup_at_three):
    assert next_run(cleanup_at_three, now=datetime(2026, 3, 2, 3, 0, 5, tzinfo=UTC)) == datetime(
        2026, 3, 3, 3, 0, tzinfo=UTC
    )
    assert next_run(cleanup_at_three, now=datetime(2026, 3, 2, 2, 0, tzinfo=UTC)) == datetime(
        2026, 3, 2, 3, 0, tzinfo=UTC
    )
