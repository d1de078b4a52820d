"""A crontab drill cron, added to a test stack's schedule with TERMINUS_CRON_MODULES.

It runs at every whole minute (``* * * * *``, the finest a crontab goes) and records each execution
of its body (tests/tasks/crons/drill_log.py), so a test can count how often it really ran per tick.
"""

from __future__ import annotations

from tasks.crons.registry import cron
from tests.tasks.crons.drill_log import record_execution

#: Its schedule: a crontab expression, given in code.
EVERY_MINUTE = "* * * * *"


@cron("drill.minutely", every=EVERY_MINUTE, time_limit=30, what="Record that it ran, at each whole minute.")
def minutely() -> dict[str, int]:
    record_execution("drill.minutely")
    return {"ran": 1}
