"""PostgreSQL forms of the two hottest transitions, one round trip each.

A job's claim and its success are each three or four ORM statements (update, read back, close or
open the attempt row) in a transaction. On PostgreSQL, data-modifying CTEs do the same work in a
single guarded statement, which is what keeps tracked jobs cheap (see bench/). The ORM forms in
results.models stay the reference behaviour and serve every other database; the suite runs both.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection

LOST_MESSAGE = "the worker running this attempt died; the message was delivered again"


def _tables() -> tuple[str, str]:
    from .models import Job, JobAttempt

    quote = connection.ops.quote_name
    return quote(Job._meta.db_table), quote(JobAttempt._meta.db_table)


def _commit_mode() -> str:
    """The claim's own commit need not wait for the WAL flush (see claim); inside a caller's
    transaction the setting would outlive the statement, so there it stays synchronous."""
    return "on" if connection.in_atomic_block else "off"


def claim(job_id: Any, worker: str) -> tuple[int, int, int, str] | None:
    """(attempt, lost_deliveries, max_retries, correlation_id) if this worker claimed the job, else None.

    The claim commits asynchronously (``synchronous_commit = off`` for its own transaction only):
    it saves a WAL flush wait per job, and the success write that follows commits synchronously,
    which flushes the claim with it (WAL is sequential). If PostgreSQL itself crashes within a
    fraction of a second of a claim, the claim is lost: the finished attempt's success write then
    finds the job not running and the job is re-dispatched by the reaper, so it still ends
    terminal (at least once, as with any redelivery).
    """
    job, attempt = _tables()
    sql = f"""
        WITH claimed AS (
            UPDATE {job} SET
                status = 'running', version = version + 1, updated_at = now(), worker = %(worker)s,
                attempts = attempts + 1,
                lost_deliveries = lost_deliveries + CASE WHEN status = 'running' THEN 1 ELSE 0 END,
                started_at = now(), heartbeat_at = now(), next_retry_at = NULL,
                dispatched_at = COALESCE(dispatched_at, now())
            WHERE id = %(id)s AND status IN ('queued', 'retrying', 'running')
            RETURNING id, attempts, lost_deliveries, max_retries, correlation_id
        ), closed AS (
            UPDATE {attempt} SET outcome = 'lost', finished_at = now(), error_type = 'worker_lost',
                error_message = %(lost)s
            WHERE job_id IN (SELECT id FROM claimed WHERE lost_deliveries > 0) AND outcome = 'running'
        ), opened AS (
            INSERT INTO {attempt} (job_id, number, worker, started_at, outcome, error_type, error_message)
            SELECT id, attempts, %(worker)s, now(), 'running', '', '' FROM claimed
        )
        SELECT attempts, lost_deliveries, max_retries, correlation_id,
            set_config('synchronous_commit', %(commit)s, true)
        FROM claimed
    """
    params = {"id": job_id, "worker": worker, "lost": LOST_MESSAGE, "commit": _commit_mode()}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return (int(row[0]), int(row[1]), int(row[2]), row[3]) if row else None


def mark_dispatched(job_ids: list[Any]) -> int:
    """Mark published jobs, committing asynchronously: a marker lost in a PostgreSQL crash only
    means the reaper publishes the job again, and the claim guard makes that duplicate harmless."""
    job, _ = _tables()
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


def succeed(job_id: Any, attempt_number: int, result: Any) -> bool:
    """Record success and close the attempt; False if the job was no longer running."""
    job, attempt = _tables()
    sql = f"""
        WITH done AS (
            UPDATE {job} SET
                status = 'succeeded', version = version + 1, updated_at = now(), finished_at = now(),
                result = %(result)s::jsonb, next_retry_at = NULL,
                progress = CASE WHEN progress IS NULL THEN NULL ELSE 1.0 END,
                error_type = '', error_message = '', traceback = ''
            WHERE id = %(id)s AND status = 'running'
            RETURNING id
        ), closed AS (
            UPDATE {attempt} SET outcome = 'succeeded', finished_at = now(), error_type = '', error_message = ''
            WHERE job_id IN (SELECT id FROM done) AND number = %(number)s AND outcome = 'running'
        )
        SELECT count(*) FROM done
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"id": job_id, "number": attempt_number, "result": json.dumps(result)})
        return cursor.fetchone()[0] == 1
