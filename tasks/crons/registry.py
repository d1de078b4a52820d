"""The cron runner: every cron gets a lock per tick, an overlap policy, a run record and alerts.

``@cron("name")`` turns a plain function into the Celery task beat sends (``terminus.cron.name``).
Each send runs through ``run_cron``:

1. **Exactly once per tick.** The run is a ``CronRun`` row, unique per (cron, tick); the tick is the
   slot (an interval's) or the matching minute (a crontab's) beat stamped on the message
   (tasks/crons/beat.py, project/schedules.py). A second send of the same tick
   (a second beat, a redelivery) fails to insert, bumps ``duplicates`` and does nothing else.
2. **No stacking.** If an earlier tick of the same cron is still running, this tick is recorded as
   ``skipped`` (and so counted) instead of running alongside it.
3. **Always ends.** The run ends ``succeeded`` (with the counts the function returned) or ``failed``
   (with the error and traceback). A hard time limit is recorded by the worker's main process; a
   run whose worker died is closed as failed (``lost``) by the next tick's sweep.
4. **Alerts once.** A cron that starts failing alerts (log, Sentry, webhook, mail) once; its next
   success sends a recovery. A failing cron never stops the others: each is its own task.
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from celery import shared_task
from celery.contrib.django.task import DjangoTask
from celery.schedules import crontab
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from project.schedules import CronSchedule, parse_schedule
from results.models import CronRun, CronRunStatus, HealthState
from tasks.failure.ops_alerts import ops_alert
from tasks.runtime.durable import durable
from tasks.runtime.errors import describe_error

logger = logging.getLogger(__name__)

#: The message header carrying the tick (epoch seconds) a beat sent a cron for.
TICK_HEADER = "terminus_tick"

#: What ``every`` may be: seconds, a crontab (expression or Celery's ``crontab(...)``), or the name
#: of a setting holding seconds or an expression.
Every = str | float | timedelta | crontab

_SETTING_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class Entry:
    """One cron: its name (the lock key), its Celery task, when it runs, and how long it may run."""

    name: str
    task: str
    every: Every
    time_limit: int  # hard limit, seconds; a run older than this plus a grace is presumed dead
    what: str
    module: str = ""  # where the cron is declared (the built-in ones: tasks.crons.*)

    @property
    def setting(self) -> str:
        """The setting ``every`` names (re-timed by its environment variable), or "" when given in code."""
        return self.every if isinstance(self.every, str) and _SETTING_NAME.match(self.every) else ""

    @property
    def schedule(self) -> CronSchedule:
        """The schedule, read now (a setting is read at each call, so tests may override it)."""
        if self.setting:
            if not hasattr(settings, self.setting):
                raise ImproperlyConfigured(f"@cron({self.name!r}): every={self.every!r} names no setting")
            return parse_schedule(getattr(settings, self.setting), name=self.setting)
        return parse_schedule(self.every, name=f"@cron({self.name!r}) every")


def schedule_tz() -> tzinfo:
    """The zone crontab fields are read in: TIME_ZONE, which is also Celery's ``timezone`` (beat's)."""
    return timezone.get_default_timezone()


_CRONS: dict[str, Entry] = {}


def registered() -> dict[str, Entry]:
    """The crons registered so far (tasks.crons.beat.load() imports every cron module first)."""
    return dict(_CRONS)


class CronTask(DjangoTask):
    """Base of cron tasks: the CronRun row is the record, so Celery's result backend is skipped."""

    abstract = True
    ignore_result = True
    cron_entry: Entry | None = None

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """Celery cancelled the run (the worker lost its broker connection and terminated it, see
        worker_cancel_long_running_tasks_on_connection_loss): record it as failed, so the next
        tick is not skipped behind a run that no longer exists. Not alerted as the cron's own
        failure: the broker check reports the outage."""
        entry = self.cron_entry
        if entry is None:
            return
        message = f"cancelled by the worker: {exc}"
        for run in CronRun.objects.filter(cron=entry.name, task_id=task_id, status=CronRunStatus.RUNNING):
            if run.finish(CronRunStatus.FAILED, error_type="cancelled", error_message=message):
                logger.warning("cron %s: the run of tick %s was %s", entry.name, run.tick, message)

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """The run died outside its own error handling (a hard time limit): record it as failed."""
        entry = self.cron_entry
        if entry is None:
            return
        error_type, message = describe_error(exc)
        for run in CronRun.objects.filter(cron=entry.name, task_id=task_id, status=CronRunStatus.RUNNING):
            if run.finish(CronRunStatus.FAILED, error_type=error_type, error_message=message):
                record_outcome(entry, ok=False, run=run, error_type=error_type, error_message=message)


def cron(
    name: str, *, every: Every, time_limit: int = 300, what: str = ""
) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Register ``fn()`` as cron ``name``: a task ``terminus.cron.<name>`` that beat sends on ``every``.

    ``every`` is seconds (``3600``, a ``timedelta``), a crontab (``"0 3 * * *"``, or Celery's
    ``crontab(hour=3, minute=0)``; read in TIME_ZONE), or the name of a setting holding either (so
    that it can be re-timed by environment). A bad one raises ImproperlyConfigured here, at import;
    ``time_limit`` is the run's hard limit; ``what`` (default: the first line of the
    function's docstring) is the line the docs and the admin show. This declaration is the whole
    cron: beat's schedule (tasks.crons.beat), the admin's schedule table and the docs' table are
    all derived from the registry it writes. ``fn`` returns
    a JSON-able summary (counts), stored on the run. The function is returned unchanged, so it can
    still be called directly (without lock or record); its task is ``fn.cron_task``.
    """

    def decorator(fn: Callable[[], Any]) -> Callable[[], Any]:
        summary = what or next(iter((fn.__doc__ or "").strip().splitlines()), "")
        entry = Entry(name, f"terminus.cron.{name}", every, time_limit, summary, fn.__module__)
        if name in _CRONS:
            raise ValueError(f"cron {name!r} is registered twice")
        entry.schedule  # noqa: B018 (read once: a bad schedule fails at import, not at the first tick)

        def run(self: CronTask) -> Any:
            return run_cron(self, entry, fn)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        task = shared_task(
            bind=True,
            base=CronTask,
            name=entry.task,
            queue=settings.TERMINUS_CRON_QUEUE,
            time_limit=entry.time_limit,
            soft_time_limit=max(1, entry.time_limit - max(1, entry.time_limit // 10)),
            cron_entry=entry,
        )(run)
        _CRONS[name] = entry
        fn.cron_task = task  # type: ignore[attr-defined]
        return fn

    return decorator


# -- one run ----------------------------------------------------------------------------------------
def run_cron(task: CronTask, entry: Entry, fn: Callable[[], Any]) -> dict[str, Any]:
    """Lock the tick, apply the overlap policy, run ``fn`` and record how it ended."""
    tick = tick_for(task.request, entry)
    close_stale_runs(entry.name)
    run = begin_run(entry, tick, task_id=str(task.request.id or ""), worker=task.request.hostname or "")
    if run is None:
        logger.debug("cron %s: tick %s already taken (a second beat or a redelivery); not run", entry.name, tick)
        return {"cron": entry.name, "tick": tick.isoformat(), "outcome": "duplicate"}
    # Started before this one (lower id) and still running: this tick does not stack on top of it.
    earlier = CronRun.objects.filter(cron=entry.name, status=CronRunStatus.RUNNING, pk__lt=run.pk).first()
    if earlier is not None:
        note = f"the run of tick {earlier.tick.isoformat()} (started {earlier.started_at.isoformat()}) is still running"
        durable(lambda: run.finish(CronRunStatus.SKIPPED, error_message=note), what=f"the skip of {run}")
        logger.warning("cron %s: tick %s skipped: %s", entry.name, tick, note)
        return {"cron": entry.name, "tick": tick.isoformat(), "outcome": "skipped"}
    started = time.monotonic()
    try:
        result = _jsonable(fn())
    except Exception as exc:
        error_type, message = describe_error(exc)
        logger.exception("cron %s failed at tick %s", entry.name, tick)
        trace = traceback.format_exc()[-20_000:]
        durable(
            lambda: run.finish(CronRunStatus.FAILED, error_type=error_type, error_message=message, traceback=trace),
            what=f"the failure of {run}",
        )
        record_outcome(entry, ok=False, run=run, error_type=error_type, error_message=message)
        return {"cron": entry.name, "tick": tick.isoformat(), "outcome": "failed", "error_type": error_type}
    durable(lambda: run.finish(CronRunStatus.SUCCEEDED, result=result), what=f"the end of {run}")
    record_outcome(entry, ok=True, run=run)
    logger.debug("cron %s: tick %s done in %.2fs: %s", entry.name, tick, time.monotonic() - started, result)
    return {"cron": entry.name, "tick": tick.isoformat(), "outcome": "succeeded", "result": result}


def tick_for(request: Any, entry: Entry) -> datetime:
    """The tick this send belongs to: beat's stamp, else the tick of now on this worker's clock."""
    stamped = getattr(request, TICK_HEADER, None)
    if stamped is None:
        stamped = (getattr(request, "headers", None) or {}).get(TICK_HEADER)
    if stamped is None:
        return entry.schedule.tick_at(timezone.now(), schedule_tz()).astimezone(UTC)
    return datetime.fromtimestamp(float(stamped), UTC)


def begin_run(entry: Entry, tick: datetime, *, task_id: str = "", worker: str = "") -> CronRun | None:
    """Take the (cron, tick) lock by inserting the run; None if another send of the tick holds it."""
    try:
        with transaction.atomic():
            return CronRun.objects.create(cron=entry.name, tick=tick, task_id=task_id[:255], worker=worker[:255])
    except IntegrityError:
        CronRun.objects.filter(cron=entry.name, tick=tick).update(duplicates=F("duplicates") + 1)
        return None


def close_stale_runs(name: str | None = None) -> int:
    """Close runs whose worker died (running past the cron's time limit plus TERMINUS_CRON_GRACE) as failed."""
    crons = registered()
    closed = 0
    runs = CronRun.objects.filter(status=CronRunStatus.RUNNING)
    if name is not None:
        runs = runs.filter(cron=name)
    now = timezone.now()
    oldest_allowed = now - timedelta(seconds=min((e.time_limit for e in crons.values()), default=300))
    for run in runs.filter(started_at__lt=oldest_allowed - timedelta(seconds=settings.TERMINUS_CRON_GRACE))[:100]:
        entry = crons.get(run.cron) or Entry(run.cron, "", 0, 24 * 3600, "")
        if run.started_at >= now - timedelta(seconds=entry.time_limit + settings.TERMINUS_CRON_GRACE):
            continue
        message = (
            f"no end was recorded within its time limit ({entry.time_limit}s) plus "
            f"{settings.TERMINUS_CRON_GRACE}s: the worker running it died"
        )
        if run.finish(CronRunStatus.FAILED, error_type="lost", error_message=message):
            closed += 1
            logger.error("cron %s: the run of tick %s was lost (%s)", run.cron, run.tick, message)
            record_outcome(entry, ok=False, run=run, error_type="lost", error_message=message)
    return closed


def record_outcome(
    entry: Entry, *, ok: bool, run: CronRun, error_type: str = "", error_message: str = ""
) -> str | None:
    """Keep the cron's health; alert when it starts failing and when it recovers, not on every tick."""
    detail = {"run": run.pk, "tick": run.tick.isoformat()}
    if not ok:
        detail.update(error_type=error_type, error_message=error_message[:500])
    change = HealthState.record(f"cron:{entry.name}", ok=ok, detail=detail)
    link = f"{settings.TERMINUS_BASE_URL}/admin/results/cronrun/?cron={entry.name}"
    if change == "failing":
        ops_alert(
            f"cron|{entry.name}",
            f"cron {entry.name} failed: {error_type}",
            f"The {entry.name} cron failed at tick {run.tick:%Y-%m-%d %H:%M:%S} UTC: {error_type}: "
            f"{error_message[:500]}\nThe other crons keep running; this alert is sent once until it "
            f"recovers.\nRuns: {link}",
        )
    elif change == "recovered":
        ops_alert(
            f"cron|{entry.name}",
            f"cron {entry.name} recovered",
            f"The {entry.name} cron succeeded again at tick {run.tick:%Y-%m-%d %H:%M:%S} UTC.\nRuns: {link}",
            recovered=True,
        )
    return change


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def markdown_table(entries: dict[str, Entry]) -> str:
    """The crons as the docs' table (docs/operations.md holds it; tests/docs keep the two equal)."""
    lines = [
        "| cron | task | every (setting, seconds or crontab) | time limit | what |",
        "|---|---|---|---|---|",
    ]
    for entry in entries.values():
        every = entry.setting or str(entry.schedule)
        every = f"`{every}`" if entry.setting or entry.schedule.is_crontab else every
        lines.append(f"| {entry.name} | `{entry.task}` | {every} | {entry.time_limit} s | {entry.what} |")
    return "\n".join(lines) + "\n"
