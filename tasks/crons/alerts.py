"""The alert flush, as a cron: throttled summaries and resends of alerts a channel refused."""

from __future__ import annotations

from tasks.crons.registry import cron
from tasks.failure.alerting import flush_alerts as flush


@cron("alerts", every="TERMINUS_ALERT_FLUSH_INTERVAL", time_limit=60)
def flush_alerts() -> dict[str, int]:
    """Send throttled alert summaries and retry alerts a channel refused.

    The work is tasks.failure.alerting.flush_alerts (also sent on its own as terminus.alerts.flush).
    """
    return flush()
