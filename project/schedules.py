"""What a cron's schedule may be, and the one parser for it: seconds, or a five-field crontab.

A schedule comes from two places: ``@cron(..., every=...)`` in code, and the environment variables
that re-time the built-in crons (``TERMINUS_REAPER_INTERVAL=60``, ``TERMINUS_CLEANUP_INTERVAL="0 3 * * *"``).
Both go through ``parse_schedule``, so a value valid in one place is valid in the other, and a bad
one fails at start with the variable (or the cron) named, never at the first tick.

- **Seconds** (``3600``): beat sends on multiples of the interval since the epoch (the reaper at
  every whole minute, cleanup at 00:00 UTC), whenever each beat process started.
- **A crontab** (``minute hour day-of-month month day-of-week``, read by Celery's
  ``celery.schedules.crontab``, in ``TIME_ZONE``, which is also Celery's ``timezone``): beat sends at
  each matching minute. As in Celery, a day must match *both* day fields.

Either way a send belongs to a *tick*: the start of its slot, or the matching minute it was due at
(``CronSchedule.tick_at``). Every beat computes the same tick for the same moment, which is what
makes the cron runner's lock exactly-once per tick (tasks/crons/registry.py). This module reads
neither Django's settings nor the Celery app (settings import it); the time zone is always passed in.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from celery.schedules import ParseException, crontab
from django.core.exceptions import ImproperlyConfigured

#: The fields of a crontab expression, in order (Celery's ``crontab.from_string``).
CRONTAB_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
#: How far ``tick_at``/``next_after`` walk before calling an expression impossible (Celery's
#: constructor already refuses the 30th of February; a 29th of February that must also be a Monday
#: recurs within 28 years, a few thousand steps).
MAX_STEPS = 100_000
#: ``longest_gap`` of a crontab looks at this many ticks back at most, and this far back at most.
GAP_SAMPLE_TICKS = 1000
GAP_SAMPLE_SPAN = timedelta(days=400)

_SECONDS = re.compile(r"^\d+$")
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class CronSchedule:
    """A cron's timing: every ``seconds`` (aligned to the epoch), or a crontab ``expression``."""

    seconds: float | None = None
    expression: str | None = None  # normalised: the five fields separated by one space

    @property
    def is_crontab(self) -> bool:
        return self.expression is not None

    @property
    def setting_value(self) -> int | float | str:
        """What a setting holds for this schedule: the seconds, or the expression (plain data)."""
        if self.expression is not None:
            return self.expression
        assert self.seconds is not None
        return int(self.seconds) if float(self.seconds).is_integer() else self.seconds

    def celery_crontab(self) -> crontab:
        """Celery's crontab for the expression (beat evaluates it in the Celery app's timezone)."""
        assert self.expression is not None, "an interval has no crontab"
        return crontab.from_string(self.expression)

    def __str__(self) -> str:
        return self.expression if self.expression is not None else f"{self.setting_value} s"

    def tick_at(self, now: datetime, tz: tzinfo) -> datetime:
        """The tick ``now`` belongs to: its slot's start, or the last matching minute at or before it."""
        if self.expression is None:
            assert self.seconds is not None
            return datetime.fromtimestamp(math.floor(now.timestamp() / self.seconds) * self.seconds, UTC)
        fields = _fields(self.expression)
        moment = _wall_minute(now, tz)
        for _ in range(MAX_STEPS):
            if moment.month not in fields.months:
                moment = moment.replace(day=1, hour=0, minute=0) - _MINUTE  # the previous month's last minute
            elif not fields.day_matches(moment):
                moment = moment.replace(hour=0, minute=0) - _MINUTE
            elif moment.hour not in fields.hours:
                moment = moment.replace(minute=0) - _MINUTE
            elif moment.minute not in fields.minutes:
                moment -= _MINUTE
            else:
                return moment.replace(tzinfo=tz)
        raise ValueError(f"crontab {self.expression!r} has no tick in the {MAX_STEPS} steps before {now}")

    def next_after(self, now: datetime, tz: tzinfo) -> datetime:
        """The first tick strictly after ``now``: when beat sends next (the admin shows it)."""
        if self.expression is None:
            assert self.seconds is not None
            return self.tick_at(now, tz) + timedelta(seconds=self.seconds)
        fields = _fields(self.expression)
        moment = _wall_minute(now, tz) + _MINUTE
        for _ in range(MAX_STEPS):
            if moment.month not in fields.months:
                month_start = moment.replace(day=1, hour=0, minute=0)
                moment = (month_start + timedelta(days=32)).replace(day=1)
            elif not fields.day_matches(moment):
                moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
            elif moment.hour not in fields.hours:
                moment = moment.replace(minute=0) + timedelta(hours=1)
            elif moment.minute not in fields.minutes:
                moment += _MINUTE
            else:
                return moment.replace(tzinfo=tz)
        raise ValueError(f"crontab {self.expression!r} has no tick in the {MAX_STEPS} steps after {now}")

    def longest_gap(self, tz: tzinfo, *, now: datetime | None = None) -> float:
        """The longest wait between two ticks, seconds (settings derive the readiness limits from it).

        An interval's is itself; a crontab's is measured over its recent ticks (at most
        GAP_SAMPLE_TICKS, at most GAP_SAMPLE_SPAN back), so a weekdays-only cron counts its weekend.
        """
        if self.expression is None:
            assert self.seconds is not None
            return float(self.seconds)
        now = now or datetime.now(UTC)
        later = self.tick_at(now, tz)
        longest = 0.0
        for _ in range(GAP_SAMPLE_TICKS):
            if now - later > GAP_SAMPLE_SPAN:
                break
            earlier = self.tick_at(later - _MINUTE, tz)
            longest = max(longest, (later - earlier).total_seconds())
            later = earlier
        return longest or GAP_SAMPLE_SPAN.total_seconds()  # rarer than the sample: at least its span


@dataclass(frozen=True)
class _Fields:
    minutes: set[int]
    hours: set[int]
    days_of_month: set[int]
    months: set[int]
    days_of_week: set[int]  # 0 is Sunday, as in cron and Celery

    def day_matches(self, moment: datetime) -> bool:
        """Both day fields must match, as Celery's crontab has it (cron's own rule is either)."""
        return moment.day in self.days_of_month and moment.isoweekday() % 7 in self.days_of_week


@functools.lru_cache(maxsize=64)
def _fields(expression: str) -> _Fields:
    """The expanded fields, as Celery's parser reads them (cached: ``longest_gap`` walks many ticks)."""
    schedule = crontab.from_string(expression)
    return _Fields(schedule.minute, schedule.hour, schedule.day_of_month, schedule.month_of_year, schedule.day_of_week)


def _wall_minute(now: datetime, tz: tzinfo) -> datetime:
    """``now`` as a naive wall-clock minute in ``tz``: crontab fields name wall-clock times."""
    return now.astimezone(tz).replace(second=0, microsecond=0, tzinfo=None)


def parse_schedule(value: object, *, name: str) -> CronSchedule:
    """Read a schedule: seconds (``3600``, ``"3600"``, a ``timedelta``), a five-field crontab
    expression (``"0 3 * * *"``) or a Celery ``crontab(...)``; anything else raises
    ImproperlyConfigured naming ``name`` (the variable, or the ``@cron``)."""
    if isinstance(value, CronSchedule):
        return value
    if isinstance(value, crontab):
        value = " ".join(
            _spec(part)
            for part in (
                value._orig_minute,
                value._orig_hour,
                value._orig_day_of_month,
                value._orig_month_of_year,
                value._orig_day_of_week,
            )
        )
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, str):
        text = value.strip()
        if _SECONDS.match(text):
            value = int(text)
        else:
            return _parse_crontab(text, original=value, name=name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ImproperlyConfigured(f"{name}={value!r} is not a schedule: {_EXPECTED}")
    return CronSchedule(seconds=value)


_EXPECTED = (
    "give a number of seconds above 0 (3600) or a 5-field crontab expression "
    f"({' '.join(CRONTAB_FIELDS)}, e.g. '0 3 * * *'; in TIME_ZONE)"
)


def _parse_crontab(text: str, *, original: str, name: str) -> CronSchedule:
    fields = text.split()
    if len(fields) != len(CRONTAB_FIELDS):
        count = "" if len(fields) < 2 else f" ({len(fields)} fields, a crontab has 5)"
        raise ImproperlyConfigured(f"{name}={original!r} is not a schedule{count}: {_EXPECTED}")
    for position, (field, spec) in enumerate(zip(CRONTAB_FIELDS, fields, strict=True)):
        alone = ["*"] * len(CRONTAB_FIELDS)
        alone[position] = spec
        try:
            crontab.from_string(" ".join(alone))
        except (ValueError, ParseException, TypeError) as exc:
            raise ImproperlyConfigured(
                f"{name}={original!r} is not a valid crontab expression: {field} {spec!r}: {exc}"
            ) from None
    expression = " ".join(fields)
    try:
        crontab.from_string(expression)  # the fields together (the 30th of February)
    except (ValueError, ParseException, TypeError) as exc:
        raise ImproperlyConfigured(f"{name}={original!r} is not a valid crontab expression: {exc}") from None
    return CronSchedule(expression=expression)


def _spec(part: object) -> str:
    """One field of a ``crontab(...)`` given in code (``3``, ``"mon-fri"``, ``{0, 30}``) as text."""
    if isinstance(part, set | frozenset | list | tuple | range):
        return ",".join(str(item) for item in sorted(part))
    return str(part)
