"""Large job tables made by PostgreSQL itself (``INSERT … SELECT generate_series``), not the ORM.

``jobs(n)``: n jobs spread over the last 30 days, newest last, with a realistic mix: 85 %
succeeded, 8 % failed, 3 % cancelled, 2 % queued, 1 % running, 1 % retrying; four job types;
ten tenants; one attempt row per job whose attempt ended without succeeding (a running or
succeeded attempt is described by its job row, see results.models.JobAttempt).
``expired_jobs(n)``: n terminal jobs that finished more than a year ago (expired under any
retention up to a year), plus recent and open jobs that a cleanup must keep.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from . import env

TYPES = ("diagnostics.sleep", "webhook.deliver", "export.jobs", "diagnostics.fail")
TENANTS = 10
CHUNK = 250_000

# The columns the seed sets, as SQL over ``s`` (one generated row: g, type, status, created).
# Every other column gets NULL or the model field's default, so a new field does not break the seed.
_EXPRESSIONS = {
    "id": "gen_random_uuid()",
    "type": "s.type",
    "queue": "'default'",
    "payload": "jsonb_build_object('seconds', 0, 'n', s.g)",
    "status": "s.status",
    "attempts": "CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END",
    "max_retries": "5",
    "result": "CASE WHEN s.status = 'succeeded' THEN '{\"slept\": 0.0}'::jsonb END",
    "error_type": "CASE s.status WHEN 'failed' THEN 'TransientError' WHEN 'cancelled' THEN 'cancelled' "
    "WHEN 'retrying' THEN 'TransientError' ELSE '' END",
    "error_message": "CASE WHEN s.status IN ('failed', 'cancelled', 'retrying') "
    "THEN 'bench: seeded failure' ELSE '' END",
    "worker": "CASE WHEN s.status = 'queued' THEN '' ELSE 'bench@localhost' END",
    "correlation_id": "md5(s.g::text)",
    "version": "4",
    "time_limit": "300",
    "created_at": "s.created",
    "dispatched_at": "s.created",
    "started_at": "CASE WHEN s.status <> 'queued' THEN s.created + interval '1 second' END",
    "heartbeat_at": "CASE WHEN s.status = 'running' THEN s.created + interval '1 second' END",
    "next_retry_at": "CASE WHEN s.status = 'retrying' THEN s.created + interval '1 minute' END",
    "finished_at": "CASE WHEN s.status IN ('succeeded', 'failed', 'cancelled') "
    "THEN s.created + interval '2 seconds' END",
    "terminal_by": "s.created + interval '2 hours'",
    "updated_at": "s.created + interval '2 seconds'",
    "owner_id": "%(owner)s",
    "tenant_id": "%(tenant_base)s + (s.g * 31) %% %(tenants)s",
}

# One statement per chunk; %(lo)s..%(hi)s is the slice of generate_series, %(n)s the total, so
# row g is created (n - g) * %(step)s seconds before %(newest)s: the highest g is the newest job.
_ROWS_SQL = """
    SELECT g,
        (ARRAY['diagnostics.sleep', 'webhook.deliver', 'export.jobs', 'diagnostics.fail'])[1 + (g * 7) %% 4] AS type,
        CASE WHEN (g * 7919) %% 100 < %(succeeded)s THEN 'succeeded'
             WHEN (g * 7919) %% 100 < %(failed)s THEN 'failed'
             WHEN (g * 7919) %% 100 < %(cancelled)s THEN 'cancelled'
             WHEN (g * 7919) %% 100 < %(queued)s THEN 'queued'
             WHEN (g * 7919) %% 100 < %(running)s THEN 'running'
             ELSE 'retrying' END AS status,
        %(newest)s::timestamptz - make_interval(secs => (%(n)s - g) * %(step)s) AS created
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
"""


def _jobs_sql() -> tuple[str, dict[str, Any]]:
    """The INSERT for the current Job model, and the parameters of its default-valued columns."""
    from django.db import connection

    from results.models import Job

    columns, values, params = [], [], {}
    for field in Job._meta.concrete_fields:
        columns.append(connection.ops.quote_name(field.column))
        if field.column in _EXPRESSIONS:
            values.append(_EXPRESSIONS[field.column])
        elif field.null:
            values.append("NULL")
        else:
            key = f"default_{field.column}"
            params[key] = field.get_db_prep_save(field.get_default(), connection)
            values.append(f"%({key})s")
    # Only quoted column names and the fixed expressions above are interpolated; values are parameters.
    sql = f"INSERT INTO results_job ({', '.join(columns)}) SELECT {', '.join(values)} FROM ({_ROWS_SQL}) AS s"  # noqa: S608
    return sql, params


_ATTEMPTS_SQL = """
INSERT INTO results_jobattempt (number, worker, started_at, finished_at, outcome, error_type, error_message, job_id)
SELECT 1, worker, started_at, finished_at,
    CASE status WHEN 'failed' THEN 'failed' WHEN 'cancelled' THEN 'cancelled' ELSE 'retried' END,
    error_type, error_message, id
FROM results_job WHERE status IN ('failed', 'cancelled', 'retrying')
"""

REALISTIC = {"succeeded": 85, "failed": 93, "cancelled": 96, "queued": 98, "running": 99}
ALL_TERMINAL = {"succeeded": 85, "failed": 95, "cancelled": 100, "queued": 100, "running": 100}


def _tenants_and_owner() -> tuple[int, int]:
    """(first tenant id, owner user id): ten bench tenants and the bench superuser."""
    from . import web

    admin, _ = web.ensure_users()
    from results.models import Tenant

    first = Tenant.objects.filter(name="bench-tenant-0").values_list("id", flat=True).get()
    return first, admin.pk


def _insert(n: int, *, newest: datetime, step: float, mix: dict[str, int], progress: str) -> None:
    from django.db import connection

    tenant_base, owner = _tenants_and_owner()
    sql, defaults = _jobs_sql()
    with connection.cursor() as cursor:
        for lo in range(1, n + 1, CHUNK):
            hi = min(n, lo + CHUNK - 1)
            cursor.execute(
                sql,
                {"lo": lo, "hi": hi, "n": n, "newest": newest, "step": step, "owner": owner,
                 "tenant_base": tenant_base, "tenants": TENANTS, **mix, **defaults},
            )  # fmt: skip
            print(f"  {progress}: {hi:,} / {n:,} jobs", flush=True)


def _finish(started: float) -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_ATTEMPTS_SQL)
        cursor.execute("VACUUM ANALYZE results_job")  # autovacuum may be off: statistics and visibility map now
        cursor.execute("VACUUM ANALYZE results_jobattempt")
        cursor.execute("SELECT count(*) FROM results_job")
        jobs = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM results_jobattempt")
        attempts = cursor.fetchone()[0]
        cursor.execute("SELECT pg_total_relation_size('results_job'), pg_total_relation_size('results_jobattempt')")
        job_bytes, attempt_bytes = cursor.fetchone()
    return {
        "jobs": jobs,
        "attempts": attempts,
        "seed_seconds": round(time.perf_counter() - started, 1),
        "job_table_mib": round(job_bytes / 2**20),
        "attempt_table_mib": round(attempt_bytes / 2**20),
    }


def jobs(n: int) -> dict[str, Any]:
    """n jobs over the last 30 days (see module doc); returns what was made."""
    env.truncate()
    started = time.perf_counter()
    from django.utils import timezone

    _insert(n, newest=timezone.now(), step=30 * 86400 / n, mix=REALISTIC, progress="seeding")
    return _finish(started)


def expired_jobs(n: int, *, keep_recent: int, keep_open_old: int) -> dict[str, Any]:
    """n terminal jobs finished 400-430 days ago, ``keep_recent`` jobs of the last hour (mixed
    statuses) and ``keep_open_old`` open jobs as old as the expired ones: the last two must stay."""
    from django.db import connection
    from django.utils import timezone

    env.truncate()
    started = time.perf_counter()
    old = n + keep_open_old
    _insert(
        old, newest=timezone.now() - timedelta(days=400), step=30 * 86400 / old, mix=ALL_TERMINAL, progress="expired"
    )
    recent_started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE bench_old AS SELECT id FROM results_job")
    _insert(keep_recent, newest=timezone.now(), step=3600 / max(1, keep_recent), mix=REALISTIC, progress="recent")
    with connection.cursor() as cursor:
        # Old but open: queued/running/retrying for a year (stuck): retention must never delete them.
        cursor.execute(
            """
            UPDATE results_job SET status = 'running', finished_at = NULL, result = NULL
            WHERE id IN (SELECT id FROM bench_old ORDER BY id LIMIT %s)
            """,
            [keep_open_old],
        )
        cursor.execute("DROP TABLE bench_old")
    info = _finish(started)
    info["recent_seed_seconds"] = round(time.perf_counter() - recent_started, 1)
    return info
