"""Candidate hot-path changes, applied as patches in bench processes only, to measure what each buys.

Nothing here changes product code: a worker started with ``BENCH_EXPERIMENTS=a,b`` (or a variant
named ``terminus+a+b``) patches itself at import, and the runner patches itself around that
variant's submissions. Each patch is the smallest stand-in for the change it measures; the change
to make in the product is in bench/README.md.

- ``no-record-writes``: the worker's claim and success write are skipped (a fake claim): what a
  tracked job costs apart from its two statements. A breakdown, not a candidate change.
- ``cleanup-keyset``: tasks.crons.cleanup's keyset page also bounds the ordering column from below
  (``order >= last value``), so PostgreSQL starts the index scan at the last batch instead of
  filtering every row before it (each batch re-read all the earlier ones: quadratic).
- ``cleanup-pk-only``: the batch is deleted with ``.only("pk")``, so the ORM's collector does not
  load the whole rows (payload, result, traceback) it is about to delete.
- ``cleanup-set-delete``: each batch of jobs is deleted set-based, one statement per table with the
  batch's ids as one array parameter: CASCADE children deleted, SET_NULL references cleared (both
  read from ``Job._meta.related_objects``, as the ORM's collector does, without loading rows),
  then the jobs, in one transaction. Implies ``cleanup-keyset``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

KNOWN = ("no-record-writes", "cleanup-keyset", "cleanup-pk-only", "cleanup-set-delete")

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
def _no_record_writes() -> Callable[[], None]:
    """The claim and the success write skipped (a fake claim): what tracking costs apart from its
    two database statements (Celery's task base, hooks, log binding), for the latency and
    throughput breakdown. Not a candidate change: the records are the product."""
    from results.models import Claim, Job

    undo_claim = _patch(Job, "mark_started", lambda self, *, worker: Claim(attempt=1, lost_deliveries=0, max_retries=0))
    undo_success = _patch(Job, "mark_succeeded", lambda self, *, result: True)
    return lambda: (undo_success(), undo_claim())


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

    import tasks.crons.cleanup as cleanup

    def rows(self: Any, kind: str, queryset: Any, order: str, *, also: Any = None) -> None:
        """tasks.crons.cleanup.Sweep.rows as of this bench, with the candidate changes switched on."""
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
    "no-record-writes": _no_record_writes,
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
