"""The hourly metrics rollup: per (hour, job type, status) counts, p50/p95 durations, failure rate.

Rows come from the job records themselves (the source of truth), so they survive restarts and
need no event stream. Each run recomputes the last TERMINUS_ROLLUP_HOURS complete hours, so a
missed tick (beat down for a while) is filled in by the next one, and re-running is harmless: an
hour's rows are replaced in one transaction.

The failure rate is failed / (succeeded + failed) per type and hour, as ``manage.py fleet failures``
computes it (a cancel is someone's decision, not an outcome).

Durations, in seconds: ``duration`` is the final attempt's run time (started -> finished; jobs
cancelled before they started have none), ``latency`` the time from submit to terminal.
Percentiles interpolate linearly between ranks, as PostgreSQL's ``percentile_cont`` does, which
computes them in the database there; other databases stream the hour's rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from results.models import TERMINAL_STATUSES, Job, MetricsRollup, Status
from tasks.crons.registry import cron

TERMINAL = sorted(TERMINAL_STATUSES)


@cron("rollup", every="TERMINUS_ROLLUP_INTERVAL", time_limit=900)
def rollup_recent_hours() -> dict[str, Any]:
    """Roll up the last complete hours: counts, p50/p95 durations and failure rate per job type.

    Recomputes the last TERMINUS_ROLLUP_HOURS complete hours.
    """
    end = hour_start(timezone.now())
    hours = [end - timedelta(hours=n) for n in range(settings.TERMINUS_ROLLUP_HOURS, 0, -1)]
    return {"hours": len(hours), "rows": sum(rollup_hour(hour) for hour in hours)}


def hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def rollup_hour(hour: datetime) -> int:
    """Replace the rollup rows of the hour starting at ``hour``; returns how many rows it has."""
    end = hour + timedelta(hours=1)
    groups = _groups_sql(hour, end) if connection.vendor == "postgresql" else _groups_python(hour, end)
    ended: dict[str, int] = defaultdict(int)  # succeeded + failed: a cancel is a decision, not an outcome
    failed: dict[str, int] = defaultdict(int)
    for (job_type, status), values in groups.items():
        if status in (Status.SUCCEEDED, Status.FAILED):
            ended[job_type] += values["count"]
        if status == Status.FAILED:
            failed[job_type] += values["count"]
    rows = [
        MetricsRollup(
            hour=hour,
            job_type=job_type,
            status=status,
            failure_rate=failed[job_type] / ended[job_type] if ended[job_type] else 0.0,
            **values,
        )
        for (job_type, status), values in sorted(groups.items())
    ]
    with transaction.atomic():
        MetricsRollup.objects.filter(hour=hour).delete()
        MetricsRollup.objects.bulk_create(rows)
    return len(rows)


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of sorted values, interpolated like SQL's percentile_cont."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _groups_python(start: datetime, end: datetime) -> dict[tuple[str, str], dict[str, Any]]:
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    rows = (
        Job.objects.filter(status__in=TERMINAL, finished_at__gte=start, finished_at__lt=end)
        .order_by()
        .values_list("type", "status", "created_at", "started_at", "finished_at")
    )
    for job_type, status, created, started, finished in rows.iterator(chunk_size=5000):
        key = (job_type, status)
        latencies[key].append((finished - created).total_seconds())
        if started is not None:
            durations[key].append((finished - started).total_seconds())
    groups = {}
    for key, latency in latencies.items():
        duration, latency = sorted(durations[key]), sorted(latency)
        groups[key] = {
            "count": len(latency),
            "duration_p50": percentile(duration, 0.5),
            "duration_p95": percentile(duration, 0.95),
            "latency_p50": percentile(latency, 0.5),
            "latency_p95": percentile(latency, 0.95),
        }
    return groups


def _groups_sql(start: datetime, end: datetime) -> dict[tuple[str, str], dict[str, Any]]:
    table = connection.ops.quote_name(Job._meta.db_table)
    run = "EXTRACT(EPOCH FROM finished_at - started_at)"
    wait = "EXTRACT(EPOCH FROM finished_at - created_at)"
    sql = f"""
        SELECT type, status, count(*),
            percentile_cont(0.5) WITHIN GROUP (ORDER BY {run}) FILTER (WHERE started_at IS NOT NULL),
            percentile_cont(0.95) WITHIN GROUP (ORDER BY {run}) FILTER (WHERE started_at IS NOT NULL),
            percentile_cont(0.5) WITHIN GROUP (ORDER BY {wait}),
            percentile_cont(0.95) WITHIN GROUP (ORDER BY {wait})
        FROM {table}
        WHERE status = ANY(%s) AND finished_at >= %s AND finished_at < %s
        GROUP BY type, status
    """  # noqa: S608 (only the quoted table name is interpolated)
    with connection.cursor() as cursor:
        cursor.execute(sql, [TERMINAL, start, end])
        rows = cursor.fetchall()
    fields = ("duration_p50", "duration_p95", "latency_p50", "latency_p95")
    return {
        (job_type, status): {
            "count": count,
            **{name: float(value) if value is not None else None for name, value in zip(fields, values, strict=True)},
        }
        for job_type, status, count, *values in rows
    }
