"""Readiness checks: can the system do its job right now? Behind ``/readyz`` and the health cron.

The checks (each answers within a few seconds, even with the broker down):

| check          | ok when                                                                        |
|----------------|--------------------------------------------------------------------------------|
| database       | ``SELECT 1`` answers                                                           |
| broker         | a connection opens within 2 s (Redis also answers PING)                         |
| workers        | at least one worker (not beat) answers ``inspect ping`` within 1 s             |
| beat           | the newest cron run started less than TERMINUS_READY_BEAT_MAX_AGE ago          |
| dead_letters   | open dead letters <= TERMINUS_READY_DLQ_MAX_OPEN, the oldest younger than       |
|                | TERMINUS_READY_DLQ_MAX_AGE                                                     |
| canaries       | no queue's canary has waited longer than TERMINUS_CANARY_TIMEOUT               |
| deadlines      | no open job is past ``terminal_by`` by more than TERMINUS_READY_DEADLINE_GRACE |
| repairs        | a repair pass completed within 3 times TERMINUS_REPAIR_INTERVAL (any worker runs |
|                | it); always ok with TERMINUS_REPAIR_INTERVAL=0 (beat's reaper cron runs it)     |

``/readyz`` runs them on request; the health cron runs them every TERMINUS_HEALTH_INTERVAL and
then sends a canary through every queue. Both record each verdict in ``HealthState`` with one
guarded UPDATE, so a check that starts failing alerts once (and once more when it recovers),
however many probes and ticks see it.

The canaries check reads what tasks.fleet.canaries records.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery.beat import beat_nodename
from django.conf import settings
from django.db import connection
from django.utils import timezone

from project.celery import app
from results.models import REPAIR_PASS, CronRun, HealthState, Job, QueueCanary, RepairLease
from tasks.failure.dead_letters import queue_stats
from tasks.failure.ops_alerts import ops_alert
from tasks.fleet.probes import known_queues

logger = logging.getLogger(__name__)

CHECKS = ("database", "broker", "workers", "beat", "dead_letters", "canaries", "deadlines", "repairs")
#: Checks that read the database (reported as not run when the database is down).
DATABASE_CHECKS = frozenset({"beat", "dead_letters", "canaries", "deadlines", "repairs"})


@dataclass
class Check:
    name: str
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.detail}


# -- the checks -----------------------------------------------------------------------------------
def check_database() -> Check:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return Check("database", True, {"vendor": connection.vendor})


def check_broker() -> Check:
    url = app.conf.broker_url
    if url.startswith("filesystem"):
        folder = Path(app.conf.broker_transport_options["data_folder_in"])
        ok = folder.is_dir() and _writable(folder)
        return Check("broker", ok, {"transport": "filesystem"} | ({} if ok else {"error": f"{folder} not writable"}))
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=0, timeout=settings.TERMINUS_READY_BROKER_TIMEOUT)
        client = getattr(conn.default_channel, "client", None)
        if client is not None and hasattr(client, "ping"):
            client.ping()  # Redis: a connection object alone does not prove the server answers
        transport = conn.transport_cls
    return Check("broker", True, {"transport": str(transport)})


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def check_workers() -> Check:
    replies = app.control.ping(timeout=settings.TERMINUS_READY_PING_TIMEOUT) or []
    beat_prefix = beat_nodename("").split("@")[0] + "@"
    workers = sorted(node for reply in replies for node in reply if not node.startswith(beat_prefix))
    detail: dict[str, Any] = {"answered": workers}
    if not workers:
        detail["error"] = f"no worker answered a ping within {settings.TERMINUS_READY_PING_TIMEOUT:g}s"
    return Check("workers", bool(workers), detail)


def check_beat() -> Check:
    newest = CronRun.objects.order_by("-started_at").values_list("cron", "started_at").first()
    limit = settings.TERMINUS_READY_BEAT_MAX_AGE
    if newest is None:
        return Check("beat", False, {"error": "no cron has run yet (is beat running, and a worker on the cron queue?)"})
    age = (timezone.now() - newest[1]).total_seconds()
    detail: dict[str, Any] = {"last_cron": newest[0], "last_tick_age_seconds": round(age, 1), "max_age_seconds": limit}
    if age > limit:
        detail["error"] = (
            f"no cron started for {age:.0f}s: beat, or every worker on queue {settings.TERMINUS_CRON_QUEUE}, is down"
        )
    return Check("beat", age <= limit, detail)


def check_dead_letters() -> Check:
    stats = queue_stats()
    max_open, max_age = settings.TERMINUS_READY_DLQ_MAX_OPEN, settings.TERMINUS_READY_DLQ_MAX_AGE
    problems = []
    if stats["open"] > max_open:
        problems.append(f"{stats['open']} open dead letters (threshold {max_open})")
    if stats["oldest_age_seconds"] > max_age:
        problems.append(f"the oldest open dead letter is {stats['oldest_age_seconds']:.0f}s old (threshold {max_age}s)")
    detail: dict[str, Any] = {"open": stats["open"], "oldest_age_seconds": round(stats["oldest_age_seconds"], 1)}
    if problems:
        detail["error"] = "; ".join(problems)
    return Check("dead_letters", not problems, detail)


def check_canaries() -> Check:
    now = timezone.now()
    bound = timedelta(seconds=settings.TERMINUS_CANARY_TIMEOUT)
    rows = {row.queue: row for row in QueueCanary.objects.filter(queue__in=known_queues())}
    queues: dict[str, Any] = {}
    stuck = []
    for queue in known_queues():
        row = rows.get(queue)
        if row is None or row.last_sent_at is None:
            queues[queue] = "no canary sent yet"
        elif row.waiting_since is not None and now - row.waiting_since > bound:
            stuck.append(queue)
            queues[queue] = f"canary waiting {(now - row.waiting_since).total_seconds():.0f}s"
        else:
            queues[queue] = "consuming"
    detail: dict[str, Any] = {"queues": queues}
    if stuck:
        detail["error"] = (
            f"not consumed within {settings.TERMINUS_CANARY_TIMEOUT}s: {', '.join(stuck)} "
            "(no worker consumes it, or its workers stopped consuming)"
        )
    return Check("canaries", not stuck, detail)


def check_deadlines() -> Check:
    grace = timedelta(seconds=settings.TERMINUS_READY_DEADLINE_GRACE)
    overdue = Job.objects.open().filter(terminal_by__lt=timezone.now() - grace)
    count = overdue.order_by().values("pk")[:1000].count()  # bounded: job_open_deadline
    detail: dict[str, Any] = {"past_deadline": count}
    if count:
        detail["error"] = f"{count}{'+' if count == 1000 else ''} open jobs past their terminal_by deadline"
    return Check("deadlines", count == 0, detail)


def check_repairs() -> Check:
    """No completed repair pass for 3 intervals: the jobs of a dead worker are not being recovered."""
    interval = settings.TERMINUS_REPAIR_INTERVAL
    if not interval:
        return Check("repairs", True, {"run_by": "the reaper cron (TERMINUS_REPAIR_INTERVAL=0)"})
    age, limit = RepairLease.seconds_since_completed(REPAIR_PASS), 3 * interval
    if age is None:
        return Check("repairs", False, {"error": "no repair pass has completed yet (is any worker running?)"})
    detail: dict[str, Any] = {"last_pass_age_seconds": round(age, 1), "max_age_seconds": limit}
    if age > limit:
        detail["error"] = f"no repair pass completed for {age:.0f}s: no worker is running it, or it keeps failing"
    return Check("repairs", age <= limit, detail)


_CHECKS = {
    "database": check_database,
    "broker": check_broker,
    "workers": check_workers,
    "beat": check_beat,
    "dead_letters": check_dead_letters,
    "canaries": check_canaries,
    "deadlines": check_deadlines,
    "repairs": check_repairs,
}


def run_checks(names: list[str] | tuple[str, ...] = CHECKS) -> dict[str, Check]:
    """Run the named checks; a check that raises is failing, with the error in its detail."""
    results: dict[str, Check] = {}
    for name in ("database", *(n for n in names if n != "database")):
        if name == "workers" and not results.get("broker", Check("broker", True)).ok:
            results[name] = Check(name, False, {"error": "not checked: the broker is unreachable"})
            continue
        if name in DATABASE_CHECKS and not results["database"].ok:
            results[name] = Check(name, False, {"error": "not checked: the database is unreachable"})
            continue
        started = time.monotonic()
        try:
            result = _CHECKS[name]()
        except Exception as exc:
            logger.warning("readiness check %s failed", name, exc_info=True)
            if name == "database":
                connection.close()  # a broken connection is replaced on the next request
            result = Check(name, False, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        result.detail["seconds"] = round(time.monotonic() - started, 3)
        results[name] = result
    return {name: results[name] for name in names}


def readiness(names: list[str] | tuple[str, ...] = CHECKS, *, background_alerts: bool = False) -> dict[str, Any]:
    """Run the checks, record each verdict, alert on the ones that changed; the /readyz body."""
    results = run_checks(names)
    if results.get("database", Check("database", True)).ok:
        try:
            for check in results.values():
                record(check, background=background_alerts)
        except Exception:
            logger.warning("readiness verdicts not recorded", exc_info=True)
    failing = [name for name, check in results.items() if not check.ok]
    return {
        "status": "failing" if failing else "ok",
        "failing": failing,
        "checks": {name: check.as_dict() for name, check in results.items()},
        "checked_at": timezone.now().isoformat(),
    }


def record(check: Check, *, background: bool = False) -> str | None:
    """Store a verdict; alert when it flipped (once, whoever saw it first)."""
    change = HealthState.record(check.name, ok=check.ok, detail=check.as_dict())
    if change == "failing":
        ops_alert(
            f"health|{check.name}",
            f"readiness check {check.name} failing",
            f"{check.detail.get('error', 'failing')}\nAll checks: {settings.TERMINUS_BASE_URL}/readyz",
            background=background,
        )
    elif change == "recovered":
        ops_alert(
            f"health|{check.name}",
            f"readiness check {check.name} recovered",
            f"The {check.name} check passes again.\nAll checks: {settings.TERMINUS_BASE_URL}/readyz",
            recovered=True,
            background=background,
        )
    return change
