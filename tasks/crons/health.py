"""The health cron: the readiness checks (tasks.fleet.readiness), then the next round of canaries."""

from __future__ import annotations

from typing import Any

from tasks.crons.registry import cron
from tasks.fleet.canaries import send_canaries
from tasks.fleet.readiness import readiness


@cron("health", every="TERMINUS_HEALTH_INTERVAL", time_limit=60)
def health() -> dict[str, Any]:
    """Run the readiness checks, alert on each change, send a canary through every queue.

    The checks are tasks.fleet.readiness's, the canaries tasks.fleet.canaries'.
    """
    report = readiness()
    return {"failing": report["failing"], "canaries_sent": send_canaries()}
