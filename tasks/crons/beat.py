"""Beat's schedule, derived from the cron registry: one aligned entry per ``@cron``.

A built-in cron is one ``@cron(...)`` function in any module of this package (each is imported by
``load()``); modules listed in ``TERMINUS_CRON_MODULES`` add crons of their own the same way. The
table of crons lives in docs/operations.md, rendered from the registry (``markdown_table``).

Intervals are aligned to multiples of themselves since the epoch (the reaper at every whole
minute, cleanup at 00:00 UTC), so every beat process sends in the same slots; a crontab cron is
Celery's own ``crontab`` (read in the app's timezone, TIME_ZONE), so every beat sends at the same
matching minutes. ``Scheduler`` stamps each message with its tick (project/schedules.py:
``tick_at``), and the cron runner (tasks/crons/registry.py) turns that into a lock: one run per
(cron, tick), however many beats sent it. ``expires`` drops a send still waiting in a backlog when
the next tick comes (an interval after it; a crontab's next matching minute) instead of stacking it.
"""

from __future__ import annotations

import math
import pkgutil
from datetime import UTC, datetime, timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from celery.schedules import BaseSchedule, schedstate, schedule
from django.conf import settings

from tasks.crons.registry import TICK_HEADER, Entry, registered, schedule_tz


class aligned(schedule):  # lower case, like Celery's own schedule and crontab
    """Every ``run_every``, on multiples of it since the epoch, whenever the beat process started.

    Celery's plain interval counts from each beat's own start, so two beats send at different
    moments; aligned slots make every sender agree on which tick a send belongs to.
    """

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        step = self.seconds
        next_slot = (math.floor(self.maybe_make_aware(last_run_at).timestamp() / step) + 1) * step
        return timedelta(seconds=next_slot - self.maybe_make_aware(self.now()).timestamp())

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining > 0:
            return schedstate(is_due=False, next=remaining)
        now = self.maybe_make_aware(self.now()).timestamp()
        return schedstate(is_due=True, next=self.seconds - (now % self.seconds))

    def __repr__(self) -> str:
        return f"<aligned: every {self.human_seconds}>"


def builtin_cron_modules() -> list[str]:
    """Every module of this package but the machinery: a built-in cron is one ``@cron`` function in one of them."""
    machinery = {"beat", "registry"}
    modules = pkgutil.iter_modules([str(Path(__file__).parent)])
    return [f"{__package__}.{module.name}" for module in modules if module.name not in machinery]


def builtin_crons() -> dict[str, Entry]:
    """The crons Terminus ships (declared in this package), by name: the docs' table lists these."""
    modules = set(builtin_cron_modules())
    return {name: entry for name, entry in sorted(load().items()) if entry.module in modules}


def load() -> dict[str, Entry]:
    """Every cron, built-in and from TERMINUS_CRON_MODULES, by name (importing registers them)."""
    for module in (*builtin_cron_modules(), *settings.TERMINUS_CRON_MODULES):
        import_module(module)
    return registered()


def celery_schedule(entry: Entry) -> BaseSchedule:
    """Beat's schedule for one cron: Celery's ``crontab``, or an interval ``aligned`` to the epoch."""
    timing = entry.schedule
    if timing.is_crontab:
        return timing.celery_crontab()
    assert timing.seconds is not None
    return aligned(timedelta(seconds=timing.seconds))


def beat_schedule() -> dict[str, dict[str, Any]]:
    """``beat_schedule`` for Celery: one entry per cron, sent to the cron queue.

    An interval's sends expire after the interval; a crontab's expire at its next tick, set per send
    (``send_options``), since its gaps differ ("9-17 on weekdays")."""
    entries = {}
    for entry in load().values():
        timing = entry.schedule
        options: dict[str, Any] = {"queue": settings.TERMINUS_CRON_QUEUE}
        if not timing.is_crontab:
            options["expires"] = timing.seconds
        entries[entry.name] = {"task": entry.task, "schedule": celery_schedule(entry), "options": options}
    return entries


def send_options(entry: Entry, now: datetime) -> dict[str, Any]:
    """What one send of ``entry`` at ``now`` (beat's clock) carries: its tick, and for a crontab its expiry."""
    timing, tz = entry.schedule, schedule_tz()
    tick = timing.tick_at(now, tz)
    options: dict[str, Any] = {"headers": {TICK_HEADER: tick.timestamp()}}
    if timing.is_crontab:
        options["expires"] = timing.next_after(tick, tz)
    return options


def next_run(entry: Entry, *, now: datetime | None = None) -> datetime:
    """When beat sends ``entry`` next (for the admin's schedule view)."""
    return entry.schedule.next_after(now or datetime.now(UTC), schedule_tz())


class Scheduler(PersistentScheduler):
    """Celery's default scheduler with the entries above, stamping each message with its tick.

    The tick is read on beat's clock at send time, so two beats (even on hosts whose clocks differ
    a little) agree on it; a message without the stamp (another scheduler, a manual send) falls
    back to the worker's clock in tasks.crons.registry. Another scheduler class (django-celery-beat's)
    needs the same two overrides to use this schedule.
    """

    def setup_schedule(self) -> None:
        # Read here, once Django and the cron modules are loaded (beat builds its scheduler after
        # importing them and before sending anything).
        self.app.conf.beat_schedule = beat_schedule()
        super().setup_schedule()

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        cron = registered().get(entry.name)
        if cron is not None and cron.task == entry.task:
            extra = send_options(cron, self.app.now())
            headers = {**(entry.options.get("headers") or {}), **extra.pop("headers")}
            entry.options = {**entry.options, **extra, "headers": headers}
        return super().apply_async(entry, producer, advance, **kwargs)
