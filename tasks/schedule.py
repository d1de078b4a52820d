"""The beat schedule: every cron Terminus runs, declared here, with its interval from settings.

| cron    | task                  | every (setting, default)           | what                                 |
|---------|-----------------------|------------------------------------|--------------------------------------|
| reaper  | terminus.cron.reaper  | TERMINUS_REAPER_INTERVAL, 60 s     | drive stuck and lost jobs to an end  |
| health  | terminus.cron.health  | TERMINUS_HEALTH_INTERVAL, 120 s    | readiness checks, canaries, alerts   |
| alerts  | terminus.cron.alerts  | TERMINUS_ALERT_FLUSH_INTERVAL, 60 s| throttled alert summaries, resends   |
| rollup  | terminus.cron.rollup  | TERMINUS_ROLLUP_INTERVAL, 3600 s   | hourly metrics per job type, status  |
| cleanup | terminus.cron.cleanup | TERMINUS_CLEANUP_INTERVAL, 86400 s | retention: delete expired rows       |

Modules listed in ``TERMINUS_CRON_MODULES`` may add crons of their own with ``tasks.crons.cron``.

Intervals are aligned to multiples of themselves since the epoch (the reaper at every whole
minute, cleanup at 00:00 UTC), so every beat process sends in the same slots; ``Scheduler`` stamps
each message with its slot, and the cron runner (tasks/crons.py) turns that into a lock: one run
per (cron, slot), however many beats sent it. ``expires`` drops a send that waited a whole
interval in a backlog instead of stacking it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import import_module
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from celery.schedules import schedstate, schedule
from django.conf import settings

#: The message header carrying the slot (epoch seconds) a beat sent a cron for.
TICK_HEADER = "terminus_tick"
#: Modules whose import registers the built-in crons.
BUILTIN_CRON_MODULES = ("tasks.crons", "tasks.reaper", "tasks.health", "tasks.rollup", "tasks.cleanup")


@dataclass(frozen=True)
class Entry:
    """One cron: its name (the lock key), its Celery task, how often, and how long it may run."""

    name: str
    task: str
    every: str | float  # a setting holding seconds, or seconds
    time_limit: int  # hard limit, seconds; a run older than this plus a grace is presumed dead
    what: str

    @property
    def seconds(self) -> float:
        value = getattr(settings, self.every) if isinstance(self.every, str) else self.every
        return float(value)


SCHEDULE: tuple[Entry, ...] = (
    Entry(
        "reaper",
        "terminus.cron.reaper",
        "TERMINUS_REAPER_INTERVAL",
        120,
        "Drive stuck and lost jobs to a terminal state; republish dead letters; run pending on_terminal hooks.",
    ),
    Entry(
        "health",
        "terminus.cron.health",
        "TERMINUS_HEALTH_INTERVAL",
        60,
        "Run the readiness checks, alert on each change, send a canary through every queue.",
    ),
    Entry(
        "alerts",
        "terminus.cron.alerts",
        "TERMINUS_ALERT_FLUSH_INTERVAL",
        60,
        "Send throttled alert summaries and retry alerts a channel refused.",
    ),
    Entry(
        "rollup",
        "terminus.cron.rollup",
        "TERMINUS_ROLLUP_INTERVAL",
        900,
        "Roll up the last complete hours: counts, p50/p95 durations and failure rate per job type.",
    ),
    Entry(
        "cleanup",
        "terminus.cron.cleanup",
        "TERMINUS_CLEANUP_INTERVAL",
        3600,
        "Delete terminal jobs, task results, closed dead letters and cron runs past their retention.",
    ),
)


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


def slot_of(epoch: float, step: float) -> float:
    """The start (epoch seconds) of the ``step``-long slot containing ``epoch``."""
    return math.floor(epoch / step) * step


def load() -> dict[str, Entry]:
    """Every cron, built-in and from TERMINUS_CRON_MODULES, by name (importing registers them)."""
    for module in (*BUILTIN_CRON_MODULES, *settings.TERMINUS_CRON_MODULES):
        import_module(module)
    from tasks.crons import registered

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
    back to the worker's clock in tasks.crons. Another scheduler class (django-celery-beat's)
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
