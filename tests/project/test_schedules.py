"""A cron's schedule: the one parser (seconds or a 5-field crontab) and the ticks every beat agrees on."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from project.celery import app
from project.schedules import CronSchedule, parse_schedule
from tests.helpers import ROOT

PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3600, CronSchedule(seconds=3600)),
        ("86400", CronSchedule(seconds=86400)),
        (" 60 ", CronSchedule(seconds=60)),
        (2.5, CronSchedule(seconds=2.5)),
        (timedelta(hours=1), CronSchedule(seconds=3600)),
        ("0 3 * * *", CronSchedule(expression="0 3 * * *")),
        ("  */15   9-17 * *  1-5 ", CronSchedule(expression="*/15 9-17 * * 1-5")),
        ("0 6 * * mon", CronSchedule(expression="0 6 * * mon")),
        (crontab(hour=3, minute=0), CronSchedule(expression="0 3 * * *")),
        (crontab(minute={0, 30}, day_of_week="mon-fri"), CronSchedule(expression="0,30 * * * mon-fri")),
    ],
)
def test_it_reads_seconds_and_crontab_expressions(value, expected):
    assert parse_schedule(value, name="X") == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0 3 * *", "is not a schedule (4 fields, a crontab has 5)"),
        ("0 3 * * * *", "is not a schedule (6 fields, a crontab has 5)"),
        ("every hour", "is not a schedule (2 fields, a crontab has 5)"),
        ("61 * * * *", "minute '61'"),
        ("0 24 * * *", "hour '24'"),
        ("0 3 0 * *", "day-of-month '0'"),
        ("0 3 * 13 *", "month '13'"),
        ("0 3 * * 8", "day-of-week '8'"),
        ("*/0 * * * *", "minute '*/0'"),
        ("0 0 30 2 *", "never occurs"),
        ("", "is not a schedule"),
        ("-5", "is not a schedule"),
        ("1.5", "is not a schedule"),
        (0, "is not a schedule"),
        (-60, "is not a schedule"),
        (True, "is not a schedule"),
        (None, "is not a schedule"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_variable_and_what_is_wrong(value, says):
    with pytest.raises(ImproperlyConfigured) as refused:
        parse_schedule(value, name="TERMINUS_CLEANUP_INTERVAL")
    message = str(refused.value)
    assert message.startswith(f"TERMINUS_CLEANUP_INTERVAL={value!r} "), message
    assert says in message, message


def test_an_interval_ticks_on_multiples_of_itself_since_the_epoch():
    hourly = CronSchedule(seconds=3600)
    now = datetime(2026, 3, 1, 12, 34, 56, tzinfo=UTC)
    assert hourly.tick_at(now, UTC) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert hourly.next_after(now, UTC) == datetime(2026, 3, 1, 13, 0, tzinfo=UTC)
    assert hourly.longest_gap(UTC) == 3600


def test_a_crontab_tick_is_the_matching_minute_a_send_belongs_to_whenever_in_it_beat_sent():
    daily = parse_schedule("0 3 * * *", name="X")
    # Two beats sending a moment apart (one late) stamp the same tick: 03:00 of that day
    for sent in (datetime(2026, 3, 2, 3, 0, 0, 1, tzinfo=UTC), datetime(2026, 3, 2, 3, 0, 59, tzinfo=UTC)):
        assert daily.tick_at(sent, UTC) == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    # A catch-up send hours later still belongs to that day's 03:00; the next one is tomorrow's
    assert daily.tick_at(datetime(2026, 3, 2, 17, 0, tzinfo=UTC), UTC) == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    assert daily.next_after(datetime(2026, 3, 2, 3, 0, tzinfo=UTC), UTC) == datetime(2026, 3, 3, 3, 0, tzinfo=UTC)
    assert daily.next_after(datetime(2026, 3, 2, 2, 59, 59, tzinfo=UTC), UTC) == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def test_a_crontab_needs_both_day_fields_to_match_as_celery_reads_it():
    # The 13th of a month that is also a Friday (Celery's crontab: both day fields must match)
    friday_13th = parse_schedule("0 12 13 * 5", name="X")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert friday_13th.next_after(now, UTC) == datetime(2026, 2, 13, 12, 0, tzinfo=UTC)
    assert friday_13th.tick_at(now, UTC) == datetime(2025, 6, 13, 12, 0, tzinfo=UTC)


def test_a_crontab_agrees_with_celerys_own_next_run():
    # Beat sends on Celery's crontab; the admin's "next due" comes from next_after: they must agree
    now = datetime(2026, 3, 4, 10, 7, 30, tzinfo=UTC)
    for expression in ("* * * * *", "*/15 9-17 * * 1-5", "0 3 * * *", "30 6 1 */3 *", "0 0 * * 0"):
        beats = crontab.from_string(expression)
        beats.app, beats.nowfun = app, lambda: now  # the app's timezone: TIME_ZONE, UTC
        celery_next = now + beats.remaining_estimate(now)
        assert parse_schedule(expression, name="X").next_after(now, UTC) == celery_next, expression


def test_a_crontab_is_read_in_the_time_zone_it_is_given():
    daily = parse_schedule("0 3 * * *", name="X")
    # 03:00 in Paris is 02:00 UTC in winter and 01:00 UTC in summer
    assert daily.next_after(datetime(2026, 1, 10, tzinfo=UTC), PARIS) == datetime(2026, 1, 10, 2, 0, tzinfo=UTC)
    assert daily.next_after(datetime(2026, 7, 10, tzinfo=UTC), PARIS) == datetime(2026, 7, 10, 1, 0, tzinfo=UTC)


def test_the_longest_gap_of_a_crontab_counts_its_quiet_days():
    now = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    assert parse_schedule("* * * * *", name="X").longest_gap(UTC, now=now) == 60
    assert parse_schedule("0 3 * * *", name="X").longest_gap(UTC, now=now) == 86400
    # Weekdays 9-17 every 15 minutes: Friday 17:45 to Monday 09:00
    weekdays = parse_schedule("*/15 9-17 * * 1-5", name="X").longest_gap(UTC, now=now)
    assert weekdays == (timedelta(days=2, hours=15, minutes=15)).total_seconds()


def read_settings(*names: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Load project/settings.py in a process of its own, with ``env`` added, and print ``names``."""
    code = "from django.conf import settings; print(" + ", ".join(f"repr(settings.{n})" for n in names) + ")"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_process_with_a_bad_schedule_variable_refuses_to_start_naming_it():
    result = read_settings("TERMINUS_CLEANUP_INTERVAL", TERMINUS_CLEANUP_INTERVAL="0 3 * *")
    assert result.returncode != 0
    assert "ImproperlyConfigured: TERMINUS_CLEANUP_INTERVAL='0 3 * *' is not a schedule" in result.stderr


def test_a_schedule_variable_takes_seconds_or_a_crontab_and_the_readiness_limits_follow_the_reaper():
    names = ("TERMINUS_CLEANUP_INTERVAL", "TERMINUS_REAPER_INTERVAL", "TERMINUS_READY_DEADLINE_GRACE")
    env = {"TERMINUS_CLEANUP_INTERVAL": "86400", "TERMINUS_REAPER_INTERVAL": "*/2 * * * *"}
    env_without_overrides = {name: "" for name in ("TERMINUS_READY_DEADLINE_GRACE", "TERMINUS_READY_BEAT_MAX_AGE")}
    result = read_settings(*names, **env, **env_without_overrides)
    assert result.returncode == 0, result.stderr
    # The seconds stay a number; the crontab is held as its expression; a crontab reaper's
    # longest gap (2 minutes) sets the deadline grace (2 gaps)
    assert result.stdout.split() == ["86400", "'*/2", "*", "*", "*", "*'", "240"]
