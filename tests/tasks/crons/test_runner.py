"""The cron runner's pieces without beat: the tick lock, the stale-run sweep, the schedule, the admin.

(No stack runs while these do, so no other reaper closes their rows first.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from project.celery import app
from project.schedules import CronSchedule
from results.models import CronRun, CronRunStatus, HealthState
from tasks.crons.beat import aligned, beat_schedule, load
from tasks.crons.registry import Entry, begin_run, close_stale_runs, cron, registered, tick_for

#: The built-in crons: adding one is one decorated function, and it shows up in every list below.
BUILTIN = {"reaper", "health", "alerts", "rollup", "cleanup"}


@pytest.mark.django_db(transaction=True)
def test_a_cron_run_whose_worker_died_is_closed_as_failed_and_marks_the_cron_failing(settings):
    load()
    entry = registered()["rollup"]
    # Given a run that started long ago and never ended (its worker was SIGKILLed)
    run = begin_run(entry, datetime(2026, 1, 1, tzinfo=UTC))
    CronRun.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(seconds=entry.time_limit + 120))
    # Then the next sweep closes it as failed ("lost"), and the cron is failing until it succeeds again
    assert close_stale_runs("rollup") == 1
    closed = CronRun.objects.get(pk=run.pk)
    assert (closed.status, closed.error_type) == (CronRunStatus.FAILED, "lost")
    assert HealthState.objects.get(name="cron:rollup").ok is False
    assert close_stale_runs("rollup") == 0


@pytest.mark.django_db(transaction=True)
def test_a_second_send_of_the_same_tick_is_refused_and_counted():
    entry = load()["cleanup"]
    tick = datetime(2026, 1, 1, tzinfo=UTC)
    first = begin_run(entry, tick)
    assert first is not None
    assert begin_run(entry, tick) is None
    assert begin_run(entry, tick) is None
    assert CronRun.objects.get(pk=first.pk).duplicates == 2


def test_every_beat_entry_names_a_registered_task_on_the_cron_queue(settings):
    schedule = beat_schedule()
    assert set(schedule) >= BUILTIN
    for name, entry in schedule.items():
        assert entry["task"] in app.tasks, f"{name}: {entry['task']} is not a registered task"
        assert entry["options"]["queue"] == settings.TERMINUS_CRON_QUEUE
        assert entry["options"]["expires"] == entry["schedule"].seconds  # a backlog drops, not stacks
    assert schedule["reaper"]["schedule"].seconds == settings.TERMINUS_REAPER_INTERVAL


def test_aligned_schedules_agree_on_slots_whenever_each_beat_started():
    now = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    minute = aligned(timedelta(minutes=1), nowfun=lambda: now)
    # Two beats that last sent at different moments of the same minute both send next at 12:01:00
    for last in (datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC), datetime(2026, 3, 1, 12, 0, 29, tzinfo=UTC)):
        due, wait = minute.is_due(last)
        assert (due, wait) == (False, 30)
    # And one that last sent in an earlier slot (a restart) sends at once, then waits for the next boundary
    assert minute.is_due(datetime(2026, 3, 1, 11, 59, 59, tzinfo=UTC)) == (True, 30)
    assert Entry("x", "t", 60, 1, "").schedule.seconds == 60


@pytest.mark.django_db(transaction=True)
def test_the_admin_shows_the_schedule_read_only_with_each_crons_last_run(admin_client):
    entry = load()["reaper"]
    begin_run(entry, datetime(2026, 1, 1, tzinfo=UTC)).finish(CronRunStatus.SUCCEEDED, result={"lost_failed": 0})
    page = admin_client.get("/admin/results/cronrun/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="cron-schedule"' in html
    for name in BUILTIN:
        assert f"<code>terminus.cron.{name}</code>" in html
    assert "succeeded at 20" in html
    assert admin_client.get("/admin/results/cronrun/add/").status_code == 403


def test_a_cron_declared_with_a_bad_crontab_is_refused_at_import_naming_it():
    with pytest.raises(ImproperlyConfigured, match=r"@cron\('drill.bad'\) every='0 25 \* \* \*'.*hour '25'"):
        cron("drill.bad", every="0 25 * * *")(lambda: None)
    with pytest.raises(ImproperlyConfigured, match=r"@cron\('drill.nosetting'\): every='TERMINUS_NO_SUCH'"):
        cron("drill.nosetting", every="TERMINUS_NO_SUCH")(lambda: None)
    assert "drill.bad" not in registered() and "drill.nosetting" not in registered()


def test_a_cron_takes_seconds_a_crontab_or_a_setting_holding_either(settings):
    assert Entry("x", "t", 3600, 1, "").schedule == CronSchedule(seconds=3600)
    assert Entry("x", "t", "30 6 * * 1", 1, "").schedule == CronSchedule(expression="30 6 * * 1")
    assert Entry("x", "t", crontab(minute=30, hour=6, day_of_week=1), 1, "").schedule.expression == "30 6 * * 1"
    settings.TERMINUS_ROLLUP_INTERVAL = "5 * * * *"
    rollup = load()["rollup"]
    assert (rollup.setting, rollup.schedule) == ("TERMINUS_ROLLUP_INTERVAL", CronSchedule(expression="5 * * * *"))


def test_a_message_without_a_stamp_runs_for_the_tick_of_now(settings):
    settings.TERMINUS_ROLLUP_INTERVAL = "* * * * *"
    before = timezone.now().replace(second=0, microsecond=0)
    tick = tick_for(SimpleNamespace(headers={}), load()["rollup"])
    assert tick.second == 0 and before <= tick <= timezone.now()
