"""Diagnostics job types with controlled duration and failures: smoke tests, drills and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Literal

from billiard.exceptions import SoftTimeLimitExceeded
from celery.exceptions import Reject
from django.conf import settings
from pydantic import BaseModel, Field

from tasks.runtime.base import TrackedTask
from tasks.runtime.errors import PermanentError, TransientError
from tasks.runtime.registry import job
from tasks.runtime.retry import RetryPolicy
from tasks.runtime.types import Audience


def audience() -> Audience:
    """Diagnostics can crash, fill and hold a worker: TERMINUS_DIAGNOSTICS_AUDIENCE (staff; nobody in production)."""
    return Audience(settings.TERMINUS_DIAGNOSTICS_AUDIENCE)


class SleepInput(BaseModel):
    seconds: float = Field(0, ge=0, le=3600, description="How long to run.")
    heartbeat_every: float = Field(1.0, gt=0, le=60, description="Seconds between heartbeats.")
    leak_mb: int = Field(
        0, ge=0, le=2048, description="Leak this much memory in the process that runs it (memory-limit drills)."
    )


_LEAKS: list[bytearray] = []


# As long as any job may run, so drills can hold a worker busy for as long as needed.
@job(
    "diagnostics.sleep",
    input=SleepInput,
    time_limit=settings.TERMINUS_MAX_TIME_LIMIT,
    soft_time_limit=max(1, settings.TERMINUS_MAX_TIME_LIMIT - 1),
    audience=audience,
)
def sleep(task: TrackedTask, data: SleepInput) -> dict[str, float]:
    """Sleep for ``seconds`` reporting progress; idempotent (no side effects)."""
    if data.leak_mb:
        leaked = bytearray(data.leak_mb * 1024 * 1024)
        for offset in range(0, len(leaked), 4096):  # touched pages count as resident memory
            leaked[offset] = 1
        _LEAKS.append(leaked)  # kept past the job's end, as a real leak is
    started = time.monotonic()
    deadline = started + data.seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, data.heartbeat_every))
        if data.seconds:
            task.heartbeat(progress=min(1.0, (time.monotonic() - started) / data.seconds))
    return {"slept": round(time.monotonic() - started, 3)}


class FailInput(BaseModel):
    mode: Literal["always", "times", "permanent", "sleep", "crash", "reject"] = Field(
        "always",
        description=(
            "always: raise a transient error every attempt; times: fail the first `times` attempts "
            "(after running `seconds`) then succeed; permanent: a non-retryable error; "
            "sleep: run `seconds` (to hit a time limit); "
            "crash: SIGKILL the process running it after `seconds`, like an OOM kill (a poison message); "
            "reject: reject its own message (Reject(requeue=False))."
        ),
    )
    times: int = Field(1, ge=0, le=100)
    seconds: float = Field(0, ge=0, le=3600)
    message: str = Field("diagnostics failure", max_length=500)
    ignore_soft_limit: bool = Field(
        False, description="sleep mode: keep going past the soft limit (hits the hard one)."
    )


@job(
    "diagnostics.fail",
    input=FailInput,
    time_limit=settings.TERMINUS_DIAGNOSTICS_TIME_LIMIT,
    soft_time_limit=max(1, settings.TERMINUS_DIAGNOSTICS_TIME_LIMIT - 1),
    audience=audience,
)
def fail(task: TrackedTask, data: FailInput) -> dict[str, int]:
    """Fail as told; counts attempts by the job's own record, so it is safe to redeliver."""
    attempt = task.attempt
    if data.mode == "crash":
        time.sleep(data.seconds)  # die mid-job, as an OOM kill does
        os.kill(os.getpid(), signal.SIGKILL)
    if data.mode == "reject":
        raise Reject(data.message, requeue=False)
    if data.mode == "permanent":
        raise PermanentError(data.message)
    if data.mode == "times" and attempt <= data.times:
        time.sleep(data.seconds)  # a drill can cut the broker while it runs, before its retry is published
        raise TransientError(f"{data.message} (attempt {attempt})")
    if data.mode == "always":
        raise TransientError(f"{data.message} (attempt {attempt})")
    if data.mode == "sleep":
        end = time.monotonic() + data.seconds
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                if not data.ignore_soft_limit:
                    raise
    return {"attempt": attempt}


class HookedInput(BaseModel):
    mode: Literal["succeed", "permanent"] = Field("succeed", description="succeed, or fail with a permanent error.")
    seconds: float = Field(0, ge=0, le=3600, description="Run this long first, heartbeating twice a second.")
    hook_failures: int = Field(0, ge=0, le=100, description="The on_terminal hook raises on its first N runs.")


def record_terminal(job: Any) -> None:
    """on_terminal hook: write the job's final state to MEDIA_ROOT/diagnostics/terminal/<job id>.json.

    Idempotent, as every hook must be: a second run rewrites the same file with the same state.
    """
    if job.terminal_hook_attempts <= int(job.payload.get("hook_failures", 0)):
        raise RuntimeError(f"on_terminal drill: failing run {job.terminal_hook_attempts} as told")
    path = Path(settings.MEDIA_ROOT) / "diagnostics" / "terminal" / f"{job.pk}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"job": str(job.pk), "status": job.status, "error_type": job.error_type, "run": job.terminal_hook_attempts}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(state))
    partial.replace(path)


# No retries: a lost attempt ends it (failed as lost), which is what the on_terminal drills need.
@job(
    "diagnostics.hooked",
    input=HookedInput,
    retry=RetryPolicy(max_retries=0),
    time_limit=settings.TERMINUS_DIAGNOSTICS_TIME_LIMIT,
    soft_time_limit=max(1, settings.TERMINUS_DIAGNOSTICS_TIME_LIMIT - 1),
    on_terminal=record_terminal,
    audience=audience,
)
def hooked(task: TrackedTask, data: HookedInput) -> dict[str, float]:
    """Run ``seconds`` then succeed or fail; its on_terminal hook records how it ended (idempotent)."""
    started = time.monotonic()
    while (remaining := started + data.seconds - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.5))
        task.heartbeat()
    if data.mode == "permanent":
        raise PermanentError("diagnostics.hooked failing as told")
    return {"ran": round(time.monotonic() - started, 3)}
