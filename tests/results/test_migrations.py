"""Data migrations, run forwards on rows the earlier schema left behind."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("results", "0004_fewer_indexes")]
AFTER = [("results", "0005_attempt_rows_on_close")]


def migrate(targets: list[tuple[str, str]]):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_open_attempt_rows_of_the_earlier_scheme_are_settled():
    apps = migrate(BEFORE)
    try:
        Job, JobAttempt = apps.get_model("results", "Job"), apps.get_model("results", "JobAttempt")
        now = timezone.now()
        deadline = now + timedelta(hours=1)
        running = Job.objects.create(type="t", status="running", attempts=2, worker="w2", terminal_by=deadline)
        JobAttempt.objects.create(job=running, number=1, outcome="lost", finished_at=now)
        JobAttempt.objects.create(job=running, number=2, outcome="running")
        finished = Job.objects.create(type="t", status="succeeded", attempts=1, finished_at=now, terminal_by=deadline)
        JobAttempt.objects.create(job=finished, number=1, outcome="running")

        apps = migrate(AFTER)
        JobAttempt = apps.get_model("results", "JobAttempt")
        # The running job's current attempt lives on its row again; its history is kept
        assert list(JobAttempt.objects.filter(job_id=running.pk).values_list("number", "outcome")) == [(1, "lost")]
        # An open row whose job has ended can no longer be running: it is recorded as lost, when the job ended
        settled = JobAttempt.objects.get(job_id=finished.pk)
        assert (settled.outcome, settled.finished_at) == ("lost", now)
        assert not JobAttempt.objects.filter(outcome="running").exists()
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
