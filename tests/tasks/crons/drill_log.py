"""Where a drill cron records each execution of its body: one line per run, the run's tick.

A test counts how often a cron's body really ran per tick from this file, independently of the run
records. Shared by the drill modules (cron_drills.py, crontab_drills.py); it declares no cron itself.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from results.models import CronRun, CronRunStatus


def executions_log(name: str) -> Path:
    """Where the drill cron ``name`` of this stack (its cron queue) records each execution."""
    return Path(settings.MEDIA_ROOT) / "cron-drills" / settings.TERMINUS_CRON_QUEUE / f"{name}.log"


def record_execution(name: str) -> None:
    """Append the tick of ``name``'s running run (called from the cron's body, on the worker)."""
    run = CronRun.objects.filter(cron=name, status=CronRunStatus.RUNNING).order_by("pk").first()
    if run is None:  # a test's teardown flushed the tables under it
        return
    path = executions_log(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(f"{run.tick.isoformat()}\n")
