"""Crons for the cron runner's drills, added to a test stack's schedule with TERMINUS_CRON_MODULES.

Each execution appends the tick of its run to a file of its own (tests/tasks/crons/drill_log.py), so
a test can count how often a cron's body really ran per tick, independently of the run records.
"""

from __future__ import annotations

import time

from billiard.exceptions import SoftTimeLimitExceeded

from tasks.crons.registry import cron
from tests.tasks.crons.drill_log import record_execution


@cron("drill.count", every=2, time_limit=30, what="Record that it ran.")
def count() -> dict[str, int]:
    record_execution("drill.count")
    return {"ran": 1}


@cron("drill.explode", every=2, time_limit=30, what="Fail, every time.")
def explode() -> None:
    record_execution("drill.explode")
    raise RuntimeError("drill: this cron always fails")


@cron("drill.slow", every=1, time_limit=30, what="Run longer than its interval.")
def slow() -> dict[str, int]:
    record_execution("drill.slow")
    time.sleep(2.5)
    return {"slept": 2}


# Sent by its test, not by beat: a hard-limit kill disturbs the pool for a while (markedly with the
# embedded broker's synchronous loop), which would disturb the other drills.
@cron("drill.stuck", every=86400, time_limit=2, what="Ignore its soft time limit until the hard one kills it.")
def stuck() -> None:
    record_execution("drill.stuck")
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            continue
