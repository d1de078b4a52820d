"""Candidate hot-path changes, applied as patches in bench processes only, to measure what each buys.

Nothing here changes product code: a worker started with ``BENCH_EXPERIMENTS=a,b`` (or a variant
named ``terminus+a+b``) patches itself at import, and the runner patches itself around that
variant's submissions. Each patch is the smallest stand-in for the change it measures; the change
to make in the product is in bench/README.md.

- ``no-correlation-select``: the worker's extra ``SELECT correlation_id`` after each claim
  (tasks.base._correlation_id) is skipped, standing in for the claim returning the column.
- ``async-claim``: the claim statement commits with ``synchronous_commit = off`` for its own
  transaction only (``set_config(..., true)`` inside the statement); the success write stays
  synchronous and, WAL being sequential, makes the claim durable when it commits.
- ``publish-batch``: ``dispatch_many`` publishes inside kombu 5.7's ``Producer.batch()`` (one Redis
  pipeline per batch instead of one round trip and one client object per message).
- ``submit-autocommit``: ``submit_or_get`` without an idempotency key inserts in autocommit
  (one statement) instead of BEGIN / INSERT / COMMIT.
- ``cleanup-keyset``: tasks.cleanup's keyset page also bounds the ordering column from below
  (``order >= last value``), so PostgreSQL starts the index scan at the last batch instead of
  filtering every row before it (each batch re-read all the earlier ones: quadratic).
- ``cleanup-pk-only``: the batch is deleted with ``.only("pk")``, so the ORM's collector does not
  load the whole rows (payload, result, traceback) it is about to delete.
- ``cleanup-set-delete``: each batch of jobs is deleted set-based, one statement per table with the
  batch's ids as one array parameter: CASCADE children deleted, SET_NULL references cleared (both
  read from ``Job._meta.related_objects``, as the ORM's collector does, without loading rows),
  then the jobs, in one transaction. Implies ``cleanup-keyset``.
- ``async-mark-dispatched``: the "published" marker (``Job.mark_dispatched``) commits with
  ``synchronous_commit = off`` for its own transaction (a lost marker only means a re-dispatch,
  which the claim guard makes harmless).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

KNOWN = (
    "no-correlation-select", "async-claim", "publish-batch", "submit-autocommit", "async-mark-dispatched",
    "cleanup-keyset", "cleanup-pk-only", "cleanup-set-delete",
)  # fmt: skip

_applied: dict[str, Callable[[], None]] = {}  # name -> undo
_lock = threading.RLock()


def parse(value: str | None) -> list[str]:
    names = [name.strip() for name in (value or "").replace("+", ",").split(",") if name.strip()]
    unknown = sorted(set(names) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; known: {', '.join(KNOWN)}")
    return names


def _patch(owner: Any, attr: str, value: Any) -> Callable[[], None]:
    original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
    setattr(owner, attr, value)
    return lambda: setattr(owner, attr, original)


# ---------------------------------------------------------------------------------------------
# The patches
# ---------------------------------------------------------------------------------------------
def _no_correlation_select() -> Callable[[], None]:
    import tasks.base

    if not hasattr(tasks.base, "_correlation_id"):
        return lambda: None  # this tree has no such query: nothing to measure
    return _patch(tasks.base, "_correlation_id", lambda job_id: "")


def _async_claim() -> Callable[[], None]:
    import results.fastpath as fastpath

    original = fastpath.claim

    def claim(job_id: Any, worker: str) -> tuple[int, int, int] | None:
        from django.db import connection

        job, attempt = fastpath._tables()
        sql = f"""
            WITH claimed AS (
                UPDATE {job} SET
                    status = 'running', version = version + 1, updated_at = now(), worker = %(worker)s,
                    attempts = attempts + 1,
                    lost_deliveries = lost_deliveries + CASE WHEN status = 'running' THEN 1 ELSE 0 END,
                    started_at = now(), heartbeat_at = now(), next_retry_at = NULL
                WHERE id = %(id)s AND status IN ('queued', 'retrying', 'running')
                RETURNING id, attempts, lost_deliveries, max_retries
            ), closed AS (
                UPDATE {attempt} SET outcome = 'lost', finished_at = now(), error_type = 'worker_lost',
                    error_message = %(lost)s
                WHERE job_id IN (SELECT id FROM claimed WHERE lost_deliveries > 0) AND outcome = 'running'
            ), opened AS (
                INSERT INTO {attempt} (job_id, number, worker, started_at, outcome, error_type, error_message)
                SELECT id, attempts, %(worker)s, now(), 'running', '', '' FROM claimed
            )
            SELECT attempts, lost_deliveries, max_retries, set_config('synchronous_commit', 'off', true)
            FROM claimed
        """  # noqa: S608 - quoted table names only
        with connection.cursor() as cursor:
            cursor.execute(sql, {"id": job_id, "worker": worker, "lost": fastpath.LOST_MESSAGE})
            row = cursor.fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else None

    claim.__wrapped__ = original  # type: ignore[attr-defined]
    return _patch(fastpath, "claim", claim)


def _publish_batch() -> Callable[[], None]:
    import tasks.submit as submit

    original = submit.dispatch_many

    def dispatch_many(jobs: list[Any], **kwargs: Any) -> int:
        if not jobs:
            return original(jobs, **kwargs)
        app = submit.get_job_type(jobs[0].type).task.app
        acquire = app.producer_or_acquire

        @contextlib.contextmanager
        def batched(producer: Any = None) -> Iterator[Any]:
            with acquire(producer) as acquired, acquired.batch(max_size=max(1, len(jobs))):
                yield acquired

        with _lock:  # the app is shared by the web server's threads
            app.producer_or_acquire = batched
            try:
                return original(jobs, **kwargs)
            finally:
                del app.producer_or_acquire

    return _patch(submit, "dispatch_many", dispatch_many)


def _submit_autocommit() -> Callable[[], None]:
    from django.db import transaction

    import tasks.submit as submit

    original = submit.submit_or_get

    def submit_or_get(type_name: str, payload: dict[str, Any], **options: Any) -> Any:
        if options.get("idempotency_key") is not None or transaction.get_connection().in_atomic_block:
            return original(type_name, payload, **options)
        job = submit._new_job(
            type_name,
            payload,
            owner=options.get("owner"),
            tenant=options.get("tenant"),
            queue=options.get("queue"),
            countdown=options.get("countdown"),
            correlation_id=options.get("correlation_id"),
            now=submit.timezone.now(),
            retry_of=options.get("retry_of"),
        )
        job.save(force_insert=True)  # autocommit: committed when this returns
        submit.dispatch(job, countdown=options.get("countdown"))
        return job, True

    undo_module = _patch(submit, "submit_or_get", submit_or_get)
    # The API view imported the name: patch its reference too.
    import results.api.views as views

    undo_view = _patch(views, "submit_or_get", submit_or_get)
    return lambda: (undo_view(), undo_module())


def _async_mark_dispatched() -> Callable[[], None]:
    from results.models import Job

    def mark_dispatched(self: Any) -> bool:
        from django.db import connection

        table = connection.ops.quote_name(Job._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table} SET dispatched_at = now(), version = version + 1, updated_at = now()
                WHERE id = %s AND dispatched_at IS NULL AND status = 'queued'
                RETURNING set_config('synchronous_commit', 'off', true)
                """,  # noqa: S608 - quoted table name only
                [self.pk],
            )
            return cursor.fetchone() is not None

    return _patch(Job, "mark_dispatched", mark_dispatched)


def _set_delete(model: Any, ids: list[Any]) -> int | None:
    """Delete ``ids`` of ``model`` set-based; None when a relation needs the ORM's collector."""
    from django.db import connection, models, transaction

    quote = connection.ops.quote_name
    statements = []
    for rel in model._meta.related_objects:
        table, column = quote(rel.related_model._meta.db_table), quote(rel.field.column)
        if rel.on_delete is models.SET_NULL:
            statements.append(f"UPDATE {table} SET {column} = NULL WHERE {column} = ANY(%s)")  # noqa: S608
        elif rel.on_delete is models.CASCADE and not rel.related_model._meta.related_objects:
            statements.append(f"DELETE FROM {table} WHERE {column} = ANY(%s)")  # noqa: S608
        elif rel.on_delete is not models.DO_NOTHING:
            return None
    pk = quote(model._meta.pk.column)
    statements.append(f"DELETE FROM {quote(model._meta.db_table)} WHERE {pk} = ANY(%s)")  # noqa: S608
    with transaction.atomic(), connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql, [ids])
        return cursor.rowcount


def _cleanup_rows(*, keyset: bool, pk_only: bool, set_delete: bool = False) -> Callable[[], None]:
    from django.db.models import Q

    import tasks.cleanup as cleanup

    def rows(self: Any, kind: str, queryset: Any, order: str, *, also: Any = None) -> None:
        """tasks.cleanup.Sweep.rows as of this bench, with the candidate changes switched on."""
        self.deleted.setdefault(kind, 0)
        after = None
        while True:
            self.check_time()
            page = queryset.order_by(order, "pk")
            if after is not None:
                page = page.filter(Q(**{f"{order}__gt": after[0]}) | Q(**{order: after[0], "pk__gt": after[1]}))
                if keyset:
                    page = page.filter(**{f"{order}__gte": after[0]})
            keys = list(page.values_list(order, "pk")[: self.batch])
            if not keys:
                return
            ids = [pk for _, pk in keys]
            model = queryset.model
            deleted = _set_delete(model, ids) if set_delete else None
            if deleted is None:
                batch = model.objects.filter(pk__in=ids)
                if pk_only:
                    batch = batch.only("pk")
                deleted = batch.delete()[1].get(model._meta.label, 0)
            if also is not None:
                also(ids)
            self.deleted[kind] += deleted
            self.batches += 1
            after = keys[-1]
            if len(keys) < self.batch:
                return

    return _patch(cleanup.Sweep, "rows", rows)


_PATCHES: dict[str, Callable[[], Callable[[], None]]] = {
    "cleanup-keyset": lambda: _cleanup_rows(keyset=True, pk_only=False),
    "cleanup-set-delete": lambda: _cleanup_rows(keyset=True, pk_only=True, set_delete=True),
    "cleanup-pk-only": lambda: _cleanup_rows(keyset=False, pk_only=True),
    "async-mark-dispatched": _async_mark_dispatched,
    "no-correlation-select": _no_correlation_select,
    "async-claim": _async_claim,
    "publish-batch": _publish_batch,
    "submit-autocommit": _submit_autocommit,
}


# ---------------------------------------------------------------------------------------------
# Applying them
# ---------------------------------------------------------------------------------------------
def apply(names: list[str]) -> None:
    with _lock:
        if "cleanup-set-delete" in names:
            names = [n for n in names if n not in ("cleanup-keyset", "cleanup-pk-only")]
        elif "cleanup-keyset" in names and "cleanup-pk-only" in names:
            _applied["cleanup-keyset"] = _cleanup_rows(keyset=True, pk_only=True)
            _applied["cleanup-pk-only"] = lambda: None
        for name in names:
            if name not in _applied:
                _applied[name] = _PATCHES[name]()


def undo_all() -> None:
    with _lock:
        for name in list(_applied):
            _applied.pop(name)()


@contextlib.contextmanager
def active(names: list[str]) -> Iterator[None]:
    """Exactly ``names`` applied inside the block (in the runner, around one variant's turn)."""
    undo_all()
    apply(names)
    try:
        yield
    finally:
        undo_all()


def apply_from_env() -> None:
    """Worker and web processes: apply what BENCH_EXPERIMENTS lists (nothing when unset)."""
    apply(parse(os.environ.get("BENCH_EXPERIMENTS")))
