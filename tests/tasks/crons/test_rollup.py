"""The hourly rollup: counts, p50/p95 durations and failure rate per (hour, job type, status)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from results.models import Job, MetricsRollup, Status
from tasks.crons.rollup import percentile, rollup_hour, rollup_recent_hours
from tasks.submit.outbox import _new_job

pytestmark = pytest.mark.django_db(transaction=True)

HOUR = datetime(2026, 3, 1, 10, tzinfo=UTC)


def finished(type_name: str, status: str, *, at_minute: int, ran: float | None, waited: float = 1) -> Job:
    """A terminal job that finished ``at_minute`` into HOUR after running ``ran`` seconds (None: never started)."""
    end = HOUR + timedelta(minutes=at_minute)
    start = None if ran is None else end - timedelta(seconds=ran)
    created = (start or end) - timedelta(seconds=waited)
    job = _new_job(type_name, {}, owner=None, tenant=None, queue=None, countdown=None, correlation_id=None, now=created)
    job.status, job.started_at, job.finished_at = status, start, end
    job.save(force_insert=True)
    return job


@pytest.fixture
def hour_of_jobs():
    for minute, ran in enumerate((1, 2, 3, 4)):
        finished("diagnostics.sleep", Status.SUCCEEDED, at_minute=minute, ran=ran)
    finished("diagnostics.sleep", Status.FAILED, at_minute=30, ran=10)
    finished("diagnostics.fail", Status.CANCELLED, at_minute=59, ran=None, waited=5)
    finished("diagnostics.sleep", Status.SUCCEEDED, at_minute=60, ran=1)  # the next hour: not counted
    Job.objects.create(type="diagnostics.sleep", terminal_by=HOUR)  # open: not counted


def test_the_rollup_counts_durations_and_failure_rate_per_hour_type_and_status(hour_of_jobs):
    assert rollup_hour(HOUR) == 3
    rows = {(r.job_type, r.status): r for r in MetricsRollup.objects.filter(hour=HOUR)}
    assert set(rows) == {
        ("diagnostics.sleep", Status.SUCCEEDED),
        ("diagnostics.sleep", Status.FAILED),
        ("diagnostics.fail", Status.CANCELLED),
    }
    ok = rows["diagnostics.sleep", Status.SUCCEEDED]
    assert ok.count == 4
    assert (ok.duration_p50, ok.duration_p95) == pytest.approx((2.5, 3.85))  # interpolated, like percentile_cont
    assert (ok.latency_p50, ok.latency_p95) == pytest.approx((3.5, 4.85))  # plus a second in the queue
    assert ok.failure_rate == pytest.approx(0.2)  # 1 failed of 5 ended sleeps (cancels do not count)
    failed = rows["diagnostics.sleep", Status.FAILED]
    assert (failed.count, failed.duration_p50, failed.failure_rate) == (1, pytest.approx(10.0), pytest.approx(0.2))
    cancelled = rows["diagnostics.fail", Status.CANCELLED]
    assert (cancelled.count, cancelled.duration_p50, cancelled.latency_p50) == (1, None, pytest.approx(5.0))
    assert cancelled.failure_rate == 0


def test_rolling_an_hour_up_again_replaces_its_rows(hour_of_jobs):
    rollup_hour(HOUR)
    finished("diagnostics.sleep", Status.FAILED, at_minute=45, ran=1)
    assert rollup_hour(HOUR) == 3
    assert MetricsRollup.objects.filter(hour=HOUR).count() == 3
    assert MetricsRollup.objects.get(hour=HOUR, status=Status.FAILED).count == 2


def test_the_cron_rolls_up_the_last_complete_hours(settings):
    settings.TERMINUS_ROLLUP_HOURS = 2
    assert rollup_recent_hours() == {"hours": 2, "rows": 0}


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def test_the_admin_lists_rollups_read_only(admin_user, hour_of_jobs):
    rollup_hour(HOUR)
    client = Client()
    client.force_login(admin_user)
    page = client.get("/admin/results/metricsrollup/")
    assert page.status_code == 200
    assert "20.0%" in page.content.decode()
    assert client.get("/admin/results/metricsrollup/add/").status_code == 403
