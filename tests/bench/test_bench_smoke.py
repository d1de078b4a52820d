"""Smoke test of the benchmark harness (bench/): it starts, measures, verifies and cleans up.

Skipped unless BENCH_SMOKE=1: it starts its own worker processes on the bench's own database
(terminus_bench) and Redis database (10), takes about a minute and measures nothing worth keeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("BENCH_SMOKE") != "1",
        reason="benchmark smoke run: set BENCH_SMOKE=1 (needs Redis and PostgreSQL; about a minute)",
    ),
]


def test_the_quick_throughput_run_verifies_every_job_and_leaves_no_process_behind(tmp_path: Path) -> None:
    report, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    started = time.time()
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "throughput", "--jobs", "200",
         "--results", str(report), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads(raw.read_text())
    assert not results["failed"]
    for variant in ("bare", "dcr", "terminus"):
        (run,) = results["throughput"][variant]
        assert run["rows_verified"] == run["jobs"] == 200
        assert run["jobs_per_s"] > 0 and run["cpu_ms_per_job"] > 0
    assert "Terminus / Celery+dcr throughput" in report.read_text()
    assert not _bench_processes_since(started), "the bench left worker processes running"


def _bench_processes_since(started: float) -> list[int]:
    """Bench workers (``-I bench.celery_tasks``) started by this test and still alive."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "bench.celery_tasks" in cmdline and (proc.info["create_time"] or 0) >= started - 1:
            found.append(proc.info["pid"])
    return found
