"""``chaos.effect``: a job type with a side effect the fault-injection scenarios can count.

Workers load it with TERMINUS_JOB_MODULES (see ``chaos_env``); the test process imports it to
submit and validate. Each completed body appends one line to ``effects_dir()/<job id>``, so a
scenario counts how often a job's effect really landed, independently of the job's records (a
second delivery that ran alongside the first would not show in the attempt rows).

It is written as an idempotent job type should be: it heartbeats while it runs and once more just
before its effect, so an attempt that was cancelled, reaped or superseded stops before the effect.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.conf import settings
from pydantic import BaseModel, Field

from tasks.runtime.base import TrackedTask
from tasks.runtime.registry import job
from tasks.runtime.retry import RetryPolicy
from tasks.runtime.types import get_job_type

NAME = "chaos.effect"
#: Hard limit of one attempt (s): short, so the reaper's lost-worker cutoff (limit + grace) is seconds.
TIME_LIMIT = 6
MODULES = ",".join([*settings.TERMINUS_JOB_MODULES, __name__])


class EffectInput(BaseModel):
    seconds: float = Field(0.1, ge=0, le=30, description="How long to run before the effect.")
    heartbeat_every: float = Field(0.1, gt=0, le=5)


def effects_dir() -> Path:
    return Path(settings.VAR_DIR) / "chaos-effects"


@job(NAME, input=EffectInput, retry=RetryPolicy(max_retries=3), time_limit=TIME_LIMIT, soft_time_limit=TIME_LIMIT - 1)
def effect(task: TrackedTask, data: EffectInput) -> dict[str, int]:
    """Run ``seconds`` heartbeating, then apply the effect once (one line in the job's effect file)."""
    started = time.monotonic()
    while (remaining := started + data.seconds - time.monotonic()) > 0:
        time.sleep(min(remaining, data.heartbeat_every))
        task.heartbeat()
    task.heartbeat()  # still this attempt's job: a superseded attempt stops here, before the effect
    effects_dir().mkdir(parents=True, exist_ok=True)
    line = f"{task.attempt} {os.getpid()} {task.request.hostname}\n".encode()
    fd = os.open(effects_dir() / task.job_id, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return {"attempt": task.attempt}


JOB_TYPE = get_job_type(NAME)
