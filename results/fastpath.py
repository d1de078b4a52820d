"""PostgreSQL forms of the two hottest transitions, one statement each.

A job's claim and its success are each several ORM statements in a transaction (lock and read,
update, read back). On PostgreSQL each is one guarded UPDATE, its own transaction, returning what
the worker needs: that is what keeps tracked jobs cheap (see bench/). The ORM forms in
results.models stay the reference behaviour and serve every other database (and the claim of a
redelivered message); the suite runs both.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection


def _quoted(table: str) -> str:
    """The job table's name, quoted; the model passes its own ``db_table`` (this module imports no model)."""
    return connection.ops.quote_name(table)


def _commit_mode() -> str:
    """The claim's own commit need not wait for the WAL flush (see claim); inside a caller's
    transaction the setting would outlive the statement, so there it stays synchronous."""
    return "on" if connection.in_atomic_block else "off"


def claim(table: str, job_id: Any, worker: str, node: Any = None) -> tuple[int, int, int, str] | None:
    """(attempt, lost_deliveries, max_retries, correlation_id) if this worker claimed the queued or
    retrying job, else None: the job is running (a redelivery, which Job.mark_started handles),
    terminal, cancelled or unknown.

    The claim commits asynchronously (``synchronous_commit = off`` for its own transaction only):
    it saves a WAL flush wait per job, and the success write that follows commits synchronously,
    which flushes the claim with it (WAL is sequential). If PostgreSQL itself crashes within a
    fraction of a second of a claim, the claim is lost: the finished attempt's success write then
    finds the job not running and the job is re-dispatched by the reaper, so it still ends
    terminal (at least once, as with any redelivery).
    """
    job = _quoted(table)
    sql = f"""
        UPDATE {job} SET
            status = 'running', version = version + 1, updated_at = now(), worker = %(worker)s,
            worker_node = %(node)s,
            attempts = attempts + 1, started_at = now(), heartbeat_at = now(), next_retry_at = NULL,
            dispatched_at = COALESCE(dispatched_at, now())
        WHERE id = %(id)s AND status IN ('queued', 'retrying')
        RETURNING attempts, lost_deliveries, max_retries, correlation_id,
            set_config('synchronous_commit', %(commit)s, true)
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"id": job_id, "worker": worker, "node": node, "commit": _commit_mode()})
        row = cursor.fetchone()
    return (int(row[0]), int(row[1]), int(row[2]), row[3]) if row else None


def mark_dispatched(table: str, job_ids: list[Any]) -> int:
    """Mark published jobs, committing asynchronously: a marker lost in a PostgreSQL crash only
    means the reaper publishes the job again, and the claim guard makes that duplicate harmless."""
    job = _quoted(table)
    sql = f"""
        WITH marked AS (
            UPDATE {job} SET dispatched_at = now(), version = version + 1, updated_at = now()
            WHERE id = ANY(%(ids)s) AND dispatched_at IS NULL
            RETURNING 1
        )
        SELECT count(*), set_config('synchronous_commit', %(commit)s, true) FROM marked
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"ids": list(job_ids), "commit": _commit_mode()})
        return int(cursor.fetchone()[0])


def succeed(table: str, job_id: Any, result: Any, attempt: int | None = None) -> bool:
    """Record success; False if the job no longer runs ``attempt`` (any attempt, when None): the
    fence of results.models.jobs.fence, in the same single statement.

    No attempt row: the job row describes its one succeeded attempt (see JobAttempt).
    """
    job = _quoted(table)
    sql = f"""
        UPDATE {job} SET
            status = 'succeeded', version = version + 1, updated_at = now(), finished_at = now(),
            result = %(result)s::jsonb, next_retry_at = NULL,
            progress = CASE WHEN progress IS NULL THEN NULL ELSE 1.0 END,
            error_type = '', error_message = '', traceback = ''
        WHERE id = %(id)s AND status = 'running' AND (%(attempt)s::integer IS NULL OR attempts = %(attempt)s)
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"id": job_id, "result": json.dumps(result), "attempt": attempt})
        return cursor.rowcount == 1
