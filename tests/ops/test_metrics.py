"""GET /metrics: state read from the database and the broker at scrape time, and worker events
(durations, retries, failures) that add up across worker processes (prometheus multiprocess mode)."""

from __future__ import annotations

import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from results.models import REPAIR_PASS, DeadLetter, DeadLetterReason, Job, RepairLease, Status
from results.ops.metrics import terminal_job_counts
from tasks.submit.outbox import submit
from tests.deploy.monitoring import referenced_metric_names
from tests.helpers import ARTIFACTS, broker_kind, wait_for, wait_terminal
from tests.ops.helpers import free_port, sample, samples, served_names
from tests.results.web.helpers import WebServer

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(**headers: str) -> dict:
    response = Client().get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.content.decode())


def test_worker_events_add_up_across_workers_and_their_pool_processes(ops_worker, drill_queue, tmp_path, settings):
    # Given two prefork workers (two pool processes each) counting into one metrics directory
    metrics_dir = tmp_path / "metrics"
    ports = [free_port(), free_port()]
    for port in ports:
        ops_worker(
            drill_queue, concurrency=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), TERMINUS_WORKER_METRICS_PORT=port
        )
    # When they run 8 jobs, 2 that fail once then succeed, and 1 that fails for good
    jobs = [submit("diagnostics.sleep", {"seconds": 0.4}, queue=drill_queue) for _ in range(8)]
    jobs += [submit("diagnostics.fail", {"mode": "times", "times": 1}, queue=drill_queue) for _ in range(2)]
    jobs += [submit("diagnostics.fail", {"mode": "permanent"}, queue=drill_queue)]
    for job in jobs:
        wait_terminal(job.id)
    # Then /metrics, reading that directory, counts each attempt exactly once
    settings.PROMETHEUS_MULTIPROC_DIR = str(metrics_dir)
    settings.TERMINUS_METRICS_CACHE_SECONDS = 0
    settings.TERMINUS_METRICS_INSPECT_TIMEOUT = 0.5
    values = wait_for(
        lambda: (
            (found := scrape())
            and sample(
                found, "terminus_job_attempt_duration_seconds_count", type="diagnostics.sleep", outcome="succeeded"
            )
            == 8
            and found
        ),
        what="8 sleep attempts counted",
    )
    duration = "terminus_job_attempt_duration_seconds"
    assert sample(values, f"{duration}_count", type="diagnostics.fail", outcome="retried") == 2
    assert sample(values, f"{duration}_count", type="diagnostics.fail", outcome="succeeded") == 2
    assert sample(values, f"{duration}_count", type="diagnostics.fail", outcome="failed") == 1
    assert sample(values, f"{duration}_bucket", type="diagnostics.sleep", outcome="succeeded", le="0.25") == 0
    assert sample(values, f"{duration}_bucket", type="diagnostics.sleep", outcome="succeeded", le="+Inf") == 8
    assert sample(values, f"{duration}_sum", type="diagnostics.sleep", outcome="succeeded") >= 8 * 0.4
    assert sample(values, "terminus_job_retries_total", type="diagnostics.fail") == 2
    assert sample(values, "terminus_job_failures_total", type="diagnostics.fail", error_type="PermanentError") == 1
    assert sample(values, "terminus_jobs", type="diagnostics.sleep", status="succeeded") == 8
    assert sample(values, "terminus_jobs", type="diagnostics.fail", status="failed") == 1
    # And more than one process wrote them: each worker has its own directory, each pool slot its file
    writers = {(path.parent.name, path.name) for path in metrics_dir.glob("*/histogram_*.db")}
    assert len(list(metrics_dir.iterdir())) == 2 and len(writers) >= 2, sorted(metrics_dir.rglob("*.db"))
    assert {name for _, name in writers} <= {"histogram_pool0.db", "histogram_pool1.db"}
    # And each worker serves its own share, which together make the same totals
    per_worker = [samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()) for port in ports]
    shares = [
        sample(values, f"{duration}_count", type="diagnostics.sleep", outcome="succeeded") or 0 for values in per_worker
    ]
    assert sum(shares) == 8


def test_recycled_pool_processes_keep_counting_in_one_file_per_slot(ops_worker, drill_queue, tmp_path):
    # Given a worker whose pool process is replaced after every second job
    metrics_dir = tmp_path / "metrics"
    worker = ops_worker(drill_queue, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), CELERY_WORKER_MAX_TASKS_PER_CHILD="2")
    # When it runs four jobs, two at a time (three pool processes in turn)
    pids = {child.pid for child in worker.children()}
    for _ in range(2):
        jobs = [submit("diagnostics.sleep", {}, queue=drill_queue) for _ in range(2)]
        for job in jobs:
            wait_terminal(job.id)
        seen = frozenset(pids)
        pids |= wait_for(
            lambda seen=seen: {child.pid for child in worker.children()} - seen, what="a replaced pool process"
        )
    # Then the counts of all of them add up, in a single file for the single pool slot
    (node_dir,) = metrics_dir.iterdir()
    assert sorted(path.name for path in node_dir.glob("histogram_*.db")) == ["histogram_pool0.db"]
    collected = samples(
        "".join(
            generate_latest_from(node_dir)  # the worker's own exporter reads the same directory
        )
    )
    assert (
        sample(collected, "terminus_job_attempt_duration_seconds_count", type="diagnostics.sleep", outcome="succeeded")
        == 4
    )
    assert len(pids) == 3, pids  # the first pool process and its two replacements


def generate_latest_from(directory: Path) -> list[str]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return [generate_latest(registry).decode()]


def test_state_comes_from_the_database_and_the_broker(alone, ops_worker, drill_queue, settings):
    # Given a worker on one queue, and a second queue nobody consumes
    idle_queue = f"{drill_queue}-idle"
    settings.TERMINUS_QUEUES = [*settings.TERMINUS_QUEUES, idle_queue]
    settings.TERMINUS_METRICS_CACHE_SECONDS = 0
    settings.TERMINUS_METRICS_INSPECT_TIMEOUT = 3  # a loaded box answers broadcasts slowly
    ops_worker(drill_queue)
    # When three jobs wait on the idle queue, one open job is past its deadline, a dead letter is open
    waiting = [submit("diagnostics.sleep", {}, queue=idle_queue) for _ in range(3)]
    Job.objects.filter(pk=waiting[0].pk).update(created_at=timezone.now() - timedelta(seconds=90))
    Job.objects.filter(pk=waiting[1].pk).update(terminal_by=timezone.now() - timedelta(seconds=1))
    DeadLetter.objects.create(
        message_key="ops-metrics", reason=DeadLetterReason.LOST, created_at=timezone.now() - timedelta(seconds=120)
    )
    values = wait_for(
        lambda: (
            (found := scrape())
            and sample(found, "terminus_queue_depth", queue=idle_queue) == 3
            and sample(found, "terminus_workers_alive") == 1
            and found
        ),
        what="the broker to hold the 3 messages and the worker to answer",
    )
    # Then each figure is read from its source
    assert sample(values, "terminus_jobs", type="diagnostics.sleep", status=Status.QUEUED) == 3
    assert sample(values, "terminus_queue_oldest_job_age_seconds", queue=idle_queue) >= 90
    assert sample(values, "terminus_jobs_past_deadline") == 1
    assert sample(values, "terminus_jobs_undispatched") == 0
    assert sample(values, "terminus_dead_letters_open") == 1
    assert sample(values, "terminus_dead_letter_oldest_age_seconds") >= 120
    assert sample(values, "terminus_workers_alive") == 1
    assert sample(values, "terminus_queue_consumers", queue=drill_queue) == 1
    assert sample(values, "terminus_queue_consumers", queue=idle_queue) == 0
    assert sample(values, "terminus_queue_depth", queue="dead_letter") is not None
    for source in ("database", "broker", "workers"):
        assert sample(values, "terminus_metrics_source_up", source=source) == 1


def test_a_token_when_set_is_required_as_a_bearer_token(settings):
    settings.TERMINUS_METRICS_INSPECT_TIMEOUT = 0.1
    assert Client().get("/metrics").status_code == 200  # cluster-internal by default
    settings.TERMINUS_METRICS_TOKEN = "scrape-s3cret"
    refused = Client().get("/metrics")
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Token scrape-s3cret").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-s3cret").status_code == 200


def test_terminal_counts_are_shared_for_the_cache_window_and_open_ones_are_live(settings):
    from django.core.cache import cache

    cache.clear()
    settings.TERMINUS_METRICS_CACHE_SECONDS = 60
    job = submit("diagnostics.sleep", {}, queue="default")
    assert terminal_job_counts() == []
    Job.objects.filter(pk=job.pk).update(status=Status.SUCCEEDED, finished_at=timezone.now())
    assert terminal_job_counts() == [], "inside the window the cached count is served"
    settings.TERMINUS_METRICS_CACHE_SECONDS = 0
    assert terminal_job_counts() == [("diagnostics.sleep", Status.SUCCEEDED, 1)]
    cache.clear()


def test_metrics_answer_get_only(db):
    assert Client().post("/metrics").status_code == 405


# -- HTTP requests (results/ops/http_metrics.py) ------------------------------------------------------
RESPONSES = "django_http_responses_total_by_status_view_method_total"
LATENCY = "django_http_requests_latency_seconds_by_view_method"


def test_http_requests_are_counted_by_status_view_and_method_with_their_latency(settings):
    # Given the counts so far (this process's registry lives as long as the test session)
    settings.TERMINUS_METRICS_INSPECT_TIMEOUT = 0.1
    before = scrape()
    # When the API refuses an anonymous list, a page is not found, /healthz answers and refuses a POST
    assert Client().get("/api/jobs/").status_code in {401, 403}
    assert Client().get("/no-such-page").status_code == 404
    assert Client().get("/healthz").status_code == 200
    assert Client().post("/healthz").status_code == 405
    after = scrape()

    # Then /metrics counts each by status, view and method, and times each one
    def grew(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    # (the registry outlives this test: earlier tests' requests to the list are counted too)
    refused = sum(grew(RESPONSES, status=status, view="api-job-list", method="GET") for status in ("401", "403"))
    assert refused == 1
    assert grew(RESPONSES, status="404", view="<unnamed view>", method="GET") == 1
    assert grew(RESPONSES, status="200", view="healthz", method="GET") == 1
    assert grew(RESPONSES, status="405", view="healthz", method="POST") == 1
    assert grew(f"{LATENCY}_count", view="healthz", method="GET") == 1
    assert grew(f"{LATENCY}_bucket", view="healthz", method="GET", le="+Inf") == 1


def test_http_counts_add_up_across_gunicorn_workers_and_their_replacements(transactional_db, tmp_path):
    # Given gunicorn with two workers, each replaced after 4 requests, counting in one directory
    metrics_dir = tmp_path / "metrics"
    web = WebServer(
        log_path=ARTIFACTS / f"ops-gunicorn-{broker_kind()}.log",
        workers=2,
        max_requests=4,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        TERMINUS_METRICS_INSPECT_TIMEOUT="0.2",
        TERMINUS_METRICS_CACHE_SECONDS="0",
    ).start()
    try:
        # When 20 requests reach /healthz (served by at least five processes in turn)
        for _ in range(20):
            assert httpx.get(f"{web.url}/healthz", timeout=10).status_code == 200
        # Then every scrape, whichever process answers it, counts all 20 of them
        for _ in range(6):
            values = samples(httpx.get(f"{web.url}/metrics", timeout=30).text)
            assert sample(values, RESPONSES, status="200", view="healthz", method="GET") == 20
            assert sample(values, f"{LATENCY}_count", view="healthz", method="GET") == 20
        booted = web.log().count("Booting worker with pid")
    finally:
        web.stop()
    assert booted >= 5, f"gunicorn replaced its workers: {booted} booted"
    # And the replacements took over their slot's files: never more files than workers
    slots = {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("*_web*.db")}
    assert slots and slots <= {"web0", "web1"}, sorted(metrics_dir.iterdir())


def test_the_repair_pass_age_is_served(settings):
    settings.TERMINUS_METRICS_INSPECT_TIMEOUT = 0.1
    assert sample(scrape(), "terminus_repair_pass_age_seconds") == float("inf"), "none completed yet"
    holder = uuid.uuid4()
    assert RepairLease.take(REPAIR_PASS, holder=holder, hold_for=60)
    assert RepairLease.complete(REPAIR_PASS, holder=holder, due_in=15, counts={})
    values = scrape()
    assert 0 <= sample(values, "terminus_repair_pass_age_seconds") < 30
    assert sample(values, "terminus_repair_interval_seconds") == settings.TERMINUS_REPAIR_INTERVAL


def test_every_metric_the_dashboard_and_the_alert_rules_query_is_served(ops_worker, drill_queue, tmp_path, settings):
    # Given a worker that ran a job, retried one and failed one for good, and a request to the web
    metrics_dir = tmp_path / "metrics"
    ops_worker(drill_queue, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    jobs = [
        submit("diagnostics.sleep", {}, queue=drill_queue),
        submit("diagnostics.fail", {"mode": "times", "times": 1}, queue=drill_queue),
        submit("diagnostics.fail", {"mode": "permanent"}, queue=drill_queue),
    ]
    for job in jobs:
        wait_terminal(job.id)
    assert Client().get("/healthz").status_code == 200
    # When /metrics is scraped
    settings.PROMETHEUS_MULTIPROC_DIR = str(metrics_dir)
    settings.TERMINUS_METRICS_INSPECT_TIMEOUT = 3
    response = Client().get("/metrics")
    # Then every metric deploy/grafana and deploy/prometheus query is one it serves
    served = served_names(response.content.decode())
    assert sorted(referenced_metric_names() - served) == []
