"""Beat's schedule, derived from the cron registry: one aligned entry per ``@cron``.

A built-in cron is one ``@cron(...)`` function in any module of this package (each is imported by
``load()``); modules listed in ``TERMINUS_CRON_MODULES`` add crons of their own the same way. The
table of crons lives in docs/operations.md, rendered from the registry (``markdown_table``).

Intervals are aligned to multiples of themselves since the epoch (the reaper at every whole
minute, cleanup at 00:00 UTC), so every beat process sends in the same slots; ``Scheduler`` stamps
each message with its slot, and the cron runner (tasks/crons/registry.py) turns that into a lock:
one run per (cron, slot), however many beats sent it. ``expires`` drops a send that waited a whole
interval in a backlog instead of stacking it.
"""

from __future__ import annotations

import math
import pkgutil
from datetime import UTC, datetime, timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from celery.schedules import schedstate, schedule
from django.conf import settings

from tasks.crons.registry import TICK_HEADER, Entry, registered, slot_of


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


def beat_schedule() -> dict[str, dict[str, Any]]:
    """``beat_schedule`` for Celery: one aligned entry per cron, sent to the cron queue."""
    return {
        entry.name: {
            "task": entry.task,
            "schedule": aligned(timedelta(seconds=entry.seconds)),
            "options": {"queue": settings.TERMINUS_CRON_QUEUE, "expires": entry.seconds},
        }
        for entry in load().values()
    }


def next_run(entry: Entry, *, now: datetime | None = None) -> datetime:
    """When beat sends ``entry`` next (for the admin's schedule view)."""
    now = now or datetime.now(UTC)
    return datetime.fromtimestamp(slot_of(now.timestamp(), entry.seconds) + entry.seconds, UTC)


class Scheduler(PersistentScheduler):
    """Celery's default scheduler with the entries above, stamping each message with its slot.

    The slot is read on beat's clock at send time, so two beats (even on hosts whose clocks differ
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
        step = entry.schedule.seconds if isinstance(entry.schedule, schedule) else 0
        if step > 0:
            headers = {**(entry.options.get("headers") or {}), TICK_HEADER: slot_of(self.app.now().timestamp(), step)}
            entry.options = {**entry.options, "headers": headers}
        return super().apply_async(entry, producer, advance, **kwargs)
