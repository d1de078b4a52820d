"""Retention: delete what is past its keep-by date, in bounded batches, never in one giant statement.

Each batch is one short transaction of at most TERMINUS_CLEANUP_BATCH rows picked through an index
in (finished_at, id) order, so no lock is held for long, an interrupted run loses nothing (the
next one continues where it stopped) and running it twice deletes nothing twice. A run stops
after TERMINUS_CLEANUP_MAX_SECONDS and says so (``complete: false``); the next run continues.

| rows                                   | kept for (days)                         |
|----------------------------------------|-----------------------------------------|
| succeeded / failed / cancelled jobs    | TERMINUS_RETENTION_{SUCCEEDED,FAILED,CANCELLED}_DAYS (7 / 30 / 7) |
| their attempts, their task results     | with the job                            |
| other django-celery-results rows       | TERMINUS_RETENTION_TASK_RESULTS_DAYS (7) |
| replayed / resolved dead letters       | TERMINUS_DEAD_LETTER_MAX_AGE_DAYS (tasks.failure.dead_letters.enforce_caps) |
| cron runs, sent alerts                 | TERMINUS_RETENTION_CRON_RUNS_DAYS (14), TERMINUS_RETENTION_ALERTS_DAYS (30) |
| metrics rollups                        | TERMINUS_RETENTION_ROLLUPS_DAYS (400)   |
| retired idempotency keys               | TERMINUS_IDEMPOTENCY_KEY_DAYS (30) after their job was deleted |
| stopped worker nodes                   | TERMINUS_RETENTION_WORKER_NODES_DAYS (14) after they stopped |

A job's idempotency key is retired (results.models.RetiredKey) before its job is deleted, so it stays
reserved after the job is gone: a resubmission with it is refused, never run a second time.

A failed job whose dead letter is still open, or whose on_terminal hook has not run yet, is kept
until that is settled: deleting it would take away what a human or the hook still needs.

**How a batch is deleted.** On PostgreSQL a batch is one statement, committed on its own
(autocommit): data-modifying CTEs pick the batch through the index (``… ORDER BY finished_at, id
LIMIT n FOR UPDATE SKIP LOCKED``: a row another transaction holds is skipped, never waited for, and
the next run takes it), delete the rows that cascade with it, null the ``SET_NULL`` references to
it, delete its task results and then the batch itself (by ctid: its rows are locked until the
commit). What cascades and what is nulled comes from the model's ``_meta.related_objects``,
exactly what the ORM's collector would follow; a relation this does not cover (PROTECT, nested
cascades, delete signals with receivers) sends the sweep through the ORM instead. The commit is
asynchronous (``synchronous_commit = off`` for that transaction only): a deletion lost in a
database crash comes back as an expired row that the next run deletes again, so waiting for the
disk buys nothing here. Elsewhere (SQLite, the embedded default) each batch is a key query plus the
ORM's ``delete()`` (``.only("pk")``) in one transaction.

The keyset is bounded from below (``finished_at >= last`` as well as ``(finished_at, id) > last``),
so each page starts its index scan where the previous one stopped instead of walking every row
(and every dead index entry) before it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections, models, transaction
from django.db.models import Model, Q, QuerySet, signals
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django_celery_results.models import GroupResult, TaskResult

from results.models import (
    Alert,
    AlertStatus,
    CronRun,
    CronRunStatus,
    DeadLetterStatus,
    HookState,
    Job,
    MetricsRollup,
    RetiredKey,
    WorkerNode,
)
from results.models import Status as JobStatus
from tasks.crons.registry import cron
from tasks.failure.dead_letters import enforce_caps

logger = logging.getLogger(__name__)


class OutOfTime(Exception):
    """The run used its time budget; what is left is deleted by the next run."""


@dataclass(frozen=True)
class Linked:
    """Rows of another table that go with each deleted row: ``model.field == str(pk)`` (no FK)."""

    model: type[Model]
    field: str


#: Commit each PostgreSQL batch without waiting for its WAL flush (see the module docstring).
ASYNC_COMMIT = True

#: A tracked job stores a django-celery-results row only in odd cases; it goes with the job.
JOB_TASK_RESULTS = Linked(TaskResult, "task_id")


@cron("cleanup", every="TERMINUS_CLEANUP_INTERVAL", time_limit=3600)
def cleanup() -> dict[str, Any]:
    """Delete terminal jobs, task results, closed dead letters and cron runs past their retention.

    In batches, each kind of row by its own retention; returns the count per kind of row.
    """
    return run_cleanup()


def run_cleanup(*, now: datetime | None = None, batch: int | None = None, max_seconds: float | None = None) -> dict:
    """The cleanup itself: ``{"deleted": {kind: count}, "batches": n, "complete": bool}``."""
    now = now or timezone.now()
    sweep = Sweep(
        batch=batch or settings.TERMINUS_CLEANUP_BATCH,
        deadline=time.monotonic() + (settings.TERMINUS_CLEANUP_MAX_SECONDS if max_seconds is None else max_seconds),
    )
    days = timedelta(days=1)
    try:
        for status, setting in (
            (JobStatus.SUCCEEDED, "TERMINUS_RETENTION_SUCCEEDED_DAYS"),
            (JobStatus.FAILED, "TERMINUS_RETENTION_FAILED_DAYS"),
            (JobStatus.CANCELLED, "TERMINUS_RETENTION_CANCELLED_DAYS"),
        ):
            cutoff = now - getattr(settings, setting) * days
            sweep.jobs(f"jobs_{status}", status, cutoff)
        cutoff = now - settings.TERMINUS_RETENTION_TASK_RESULTS_DAYS * days
        sweep.rows("task_results", TaskResult.objects.filter(date_done__lt=cutoff), "date_done")
        sweep.rows("group_results", GroupResult.objects.filter(date_done__lt=cutoff), "date_done")
        sweep.check_time()
        sweep.deleted["dead_letters"] = enforce_caps(batch=sweep.batch)
        cutoff = now - settings.TERMINUS_RETENTION_CRON_RUNS_DAYS * days
        old_runs = CronRun.objects.filter(started_at__lt=cutoff).exclude(status=CronRunStatus.RUNNING)
        sweep.rows("cron_runs", old_runs, "started_at")
        cutoff = now - settings.TERMINUS_RETENTION_ALERTS_DAYS * days
        sweep.rows(
            "alerts", Alert.objects.filter(created_at__lt=cutoff).exclude(status=AlertStatus.PENDING), "created_at"
        )
        cutoff = now - settings.TERMINUS_RETENTION_ROLLUPS_DAYS * days
        sweep.rows("rollups", MetricsRollup.objects.filter(hour__lt=cutoff), "hour")
        cutoff = now - settings.TERMINUS_IDEMPOTENCY_KEY_DAYS * days
        sweep.rows("retired_keys", RetiredKey.objects.filter(retired_at__lt=cutoff), "retired_at")
        cutoff = now - settings.TERMINUS_RETENTION_WORKER_NODES_DAYS * days
        sweep.rows("worker_nodes", WorkerNode.objects.filter(stopped_at__lt=cutoff), "stopped_at")
    except OutOfTime:
        logger.warning("cleanup stopped after its time budget; the next run continues: %s", sweep.deleted)
        return sweep.report(complete=False)
    return sweep.report(complete=True)


class Sweep:
    """Deletes in (order, pk)-ordered batches (keyset pagination on an indexed column), counting as it goes."""

    def __init__(self, *, batch: int, deadline: float):
        self.batch = batch
        self.deadline = deadline
        self.deleted: dict[str, int] = {}
        self.batches = 0

    def report(self, *, complete: bool) -> dict[str, Any]:
        return {"deleted": self.deleted, "batches": self.batches, "complete": complete}

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime

    def jobs(self, kind: str, status: str, cutoff: datetime) -> None:
        """Terminal jobs of one status finished before ``cutoff`` (index job_status_finished)."""
        expired = (
            Job.objects.filter(status=status, finished_at__lt=cutoff)
            .exclude(dead_letter__status=DeadLetterStatus.OPEN)
            .exclude(terminal_hook=HookState.PENDING)
        )
        self.retire_keys(expired)
        self.rows(kind, expired, "finished_at", also=JOB_TASK_RESULTS)

    def retire_keys(self, expired: QuerySet) -> None:
        """Keep the idempotency keys of ``expired`` reserved after their jobs are deleted (RetiredKey)."""
        keyed = expired.filter(idempotency_key__isnull=False).order_by("finished_at", "pk")
        self.deleted.setdefault("keys_retired", 0)
        after: tuple[Any, Any] | None = None
        while True:
            self.check_time()
            page = keyed
            if after is not None:
                page = page.filter(Q(finished_at__gt=after[0]) | Q(finished_at=after[0], pk__gt=after[1]))
            rows = list(
                page.values_list("finished_at", "pk", "idempotency_key", "tenant_id", "owner_id", "status")[
                    : self.batch
                ]
            )
            if not rows:
                return
            # A key an earlier run retired (it stopped before deleting the job) is not retired twice.
            done = set(RetiredKey.objects.filter(job_id__in=[row[1] for row in rows]).values_list("job_id", flat=True))
            retired = [
                RetiredKey(key=key, tenant_id=tenant, owner_id=owner, job_id=pk, job_status=status)
                for _, pk, key, tenant, owner, status in rows
                if pk not in done
            ]
            RetiredKey.objects.bulk_create(retired, ignore_conflicts=True)
            self.deleted["keys_retired"] += len(retired)
            after = (rows[-1][0], rows[-1][1])
            if len(rows) < self.batch:
                return

    def rows(self, kind: str, queryset: QuerySet, order: str, *, also: Linked | None = None) -> None:
        """Delete ``queryset`` batch by batch in (``order``, pk) order."""
        self.deleted.setdefault(kind, 0)
        delete = SetDelete.plan(queryset, also) or OrmDelete(queryset, also)
        after: tuple[Any, Any] | None = None
        while True:
            self.check_time()
            page = queryset.order_by(order, "pk")
            if after is not None:
                # The lower bound is what the index scan starts from; the OR makes the order strict.
                page = page.filter(
                    Q(**{f"{order}__gt": after[0]}) | Q(**{order: after[0], "pk__gt": after[1]}),
                    **{f"{order}__gte": after[0]},
                )
            found, deleted, last = delete.batch(page, order, self.batch)
            if not found:
                return
            self.deleted[kind] += deleted
            self.batches += 1
            after = last
            if found < self.batch:
                return


class OrmDelete:
    """One batch: the keys, then the ORM's ``delete()`` of those rows, in one transaction."""

    def __init__(self, queryset: QuerySet, also: Linked | None):
        self.model: type[Model] = queryset.model
        self.db = queryset.db
        self.also = also

    def batch(self, page: QuerySet, order: str, size: int) -> tuple[int, int, tuple[Any, Any] | None]:
        """(rows picked, rows of the model deleted, the last (order, pk) picked) of the first ``size`` of ``page``."""
        with transaction.atomic(using=self.db):
            keys = list(page.values_list(order, "pk")[:size])
            if not keys:
                return 0, 0, None
            ids = [pk for _, pk in keys]
            model = self.model
            # only("pk"): the collector needs the keys, not the payload, result and traceback of each row.
            deleted = model.objects.filter(pk__in=ids).only("pk").delete()[1].get(model._meta.label, 0)
            if self.also is not None:
                linked = self.also.model._base_manager.using(self.db)
                linked.filter(**{f"{self.also.field}__in": [str(pk) for pk in ids]}).delete()
        return len(keys), deleted, keys[-1]


class SetDelete:
    """One batch in one PostgreSQL statement: pick (skipping locked rows), cascade, null, delete."""

    def __init__(self, queryset: QuerySet, related: list[str]):
        self.db = queryset.db
        self.related = related

    @classmethod
    def plan(cls, queryset: QuerySet, also: Linked | None) -> SetDelete | None:
        """What deleting a batch takes, as the ORM's collector would do it; None when only the ORM can."""
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return None
        quote = connection.ops.quote_name
        meta = queryset.model._meta
        if (
            meta.parents
            or meta.many_to_many
            or any(hasattr(field, "bulk_related_objects") for field in meta.private_fields)  # generic relations
            or _has_delete_receivers(queryset.model)
        ):
            return None
        cascade: dict[str, list[str]] = {}
        set_null: dict[str, list[str]] = {}
        for rel in meta.related_objects:
            related, field = rel.related_model._meta, rel.field
            if rel.on_delete is models.DO_NOTHING:
                continue
            if not (rel.one_to_many or rel.one_to_one) or not field.concrete or field.target_field != meta.pk:
                return None
            if rel.on_delete is models.SET_NULL:
                set_null.setdefault(related.db_table, []).append(quote(field.column))
            elif rel.on_delete is models.CASCADE and related.db_table != meta.db_table and _leaf(rel.related_model):
                cascade.setdefault(related.db_table, []).append(quote(field.column))
            else:
                return None  # PROTECT, RESTRICT, SET_DEFAULT, SET(), cascades that cascade further
        if set(cascade) & set(set_null):
            return None  # one row could be both nulled and deleted by the one statement
        ids = "ARRAY(SELECT pk FROM doomed)"
        related = []
        for table, columns in cascade.items():
            where = " OR ".join(f"{column} = ANY({ids})" for column in columns)
            related.append(f"DELETE FROM {quote(table)} WHERE {where}")  # noqa: S608 - quoted names only
        for table, columns in set_null.items():
            # One UPDATE per table: one statement must not modify a row twice (a dead letter whose
            # job and replay job both go). Rows of the batch itself are deleted, not nulled.
            nulls = ", ".join(f"{c} = CASE WHEN {c} = ANY({ids}) THEN NULL ELSE {c} END" for c in columns)
            where = " OR ".join(f"{column} = ANY({ids})" for column in columns)
            if table == meta.db_table:
                where = f"({where}) AND NOT {quote(meta.pk.column)} = ANY({ids})"
            related.append(f"UPDATE {quote(table)} SET {nulls} WHERE {where}")  # noqa: S608 - quoted names only
        if also is not None:
            if not _leaf(also.model):
                return None
            linked = also.model._meta
            column = quote(linked.get_field(also.field).column)
            related.append(
                f"DELETE FROM {quote(linked.db_table)} "  # noqa: S608 - quoted names only
                f"WHERE {column} = ANY(ARRAY(SELECT CAST(pk AS text) FROM doomed))"
            )
        return cls(queryset, related)

    def batch(self, page: QuerySet, order: str, size: int) -> tuple[int, int, tuple[Any, Any] | None]:
        """(rows picked, rows of the model deleted, the last (order, pk) picked) of the first ``size`` of ``page``."""
        connection = connections[self.db]
        table = connection.ops.quote_name(page.model._meta.db_table)
        # The rows are locked until the commit, so their ctid stays theirs: the batch is deleted by
        # TID, without one more index probe per row.
        tid = RawSQL(f"{table}.ctid", ())  # noqa: S611 - a quoted table name, no values
        page = page.annotate(cleanup_tid=tid).values_list(order, "pk", "cleanup_tid")
        select, params = page[:size].query.get_compiler(using=self.db).as_sql()
        ctes = [
            f"doomed (k, pk, tid) AS ({select} FOR UPDATE OF {table} SKIP LOCKED)",
            *(f"related_{n} AS ({sql})" for n, sql in enumerate(self.related)),
            f"gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT tid FROM doomed)) RETURNING 1)",  # noqa: S608
        ]
        # Only when the statement is its own transaction: the setting lasts until that commit.
        lazy = ASYNC_COMMIT and connection.get_autocommit()
        durability = ", set_config('synchronous_commit', 'off', true)" if lazy else ""
        sql = (
            f"WITH {', '.join(ctes)} "  # noqa: S608 - quoted names from the models; every value is a parameter
            f"SELECT (SELECT count(*) FROM doomed), (SELECT count(*) FROM gone), last.k, last.pk{durability} "
            "FROM (SELECT 1) AS one "
            "LEFT JOIN (SELECT k, pk FROM doomed ORDER BY k DESC, pk DESC LIMIT 1) AS last ON true"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            found, deleted, last_key, last_pk = cursor.fetchone()[:4]
        return found, deleted, (last_key, last_pk) if found else None


def _leaf(model: type[Model]) -> bool:
    """Rows of ``model`` can go by a plain DELETE: nothing refers to them, nobody listens for it."""
    meta = model._meta
    return not (meta.related_objects or meta.parents or meta.many_to_many or _has_delete_receivers(model))


def _has_delete_receivers(model: type[Model]) -> bool:
    """Delete signals the ORM would send for ``model`` (a set-based delete sends none)."""
    return signals.pre_delete.has_listeners(model) or signals.post_delete.has_listeners(model)
