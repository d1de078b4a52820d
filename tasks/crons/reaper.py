"""The reaper cron: the repair pass (tasks/recovery/repairs.py) on beat's schedule, plus cron runs whose worker died."""

from __future__ import annotations

from tasks.crons.registry import close_stale_runs, cron
from tasks.recovery.repairs import Pass, RepairErrors, repair_pass


@cron("reaper", every="TERMINUS_REAPER_INTERVAL", time_limit=120)
def reap() -> dict[str, int]:
    """Drive stuck and lost jobs to a terminal state; republish dead letters; run pending on_terminal hooks.

    One pass over every way a job can get stuck; returns the count of each repair.
    """
    this = Pass()
    counts = {**repair_pass(this), "cron_runs_lost": close_stale_runs()}
    if this.errors:
        raise RepairErrors(f"{len(this.errors)} rows failed ({counts}): " + "; ".join(this.errors[:10]))
    return counts
