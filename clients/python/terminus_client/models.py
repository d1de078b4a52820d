"""The API's records as typed, read-only values: jobs, attempts, bulk results, dead letters.

Each is built from the JSON the server sent (``from_json``) and keeps that JSON whole in ``raw``,
so a field a newer server adds is never lost to an older client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: A job's states; the last three are terminal: the job will never change again.
QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as the server writes it (``...Z`` included), or None."""
    if not value:
        return None
    text = str(value)
    if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not read the Z suffix
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class Attempt:
    """One earlier attempt of a job (``attempt_history``)."""

    number: int
    outcome: str
    worker: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error_type: str = ""
    error_message: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            number=int(data.get("number") or 0),
            outcome=str(data.get("outcome") or ""),
            worker=str(data.get("worker") or ""),
            started_at=parse_datetime(data.get("started_at")),
            finished_at=parse_datetime(data.get("finished_at")),
            error_type=str(data.get("error_type") or ""),
            error_message=str(data.get("error_message") or ""),
        )


@dataclass(frozen=True)
class Job:
    """A job as the API shows it, with the poll headers of the answer that carried it.

    ``etag`` is the job's version (send it back to be told "not modified"); ``retry_after`` is
    the server's advice, in seconds, before polling again (None once the job is terminal).
    ``attempt_history`` is empty in list answers, which leave it out.
    """

    id: str
    type: str
    status: str
    queue: str = ""
    attempts: int = 0
    max_retries: int = 0
    attempt: int = 0
    max_attempts: int = 0
    progress: float | None = None
    progress_message: str = ""
    result: Any = None
    error_type: str = ""
    error_message: str = ""
    traceback: str | None = None
    worker: str = ""
    correlation_id: str = ""
    idempotency_key: str | None = None
    retry_of: str | None = None
    next_retry_at: datetime | None = None
    heartbeat_at: datetime | None = None
    terminal_by: datetime | None = None
    created_at: datetime | None = None
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt_history: tuple[Attempt, ...] = ()
    etag: str | None = None
    retry_after: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """True once succeeded, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, etag: str | None = None, retry_after: float | None = None) -> Job:
        progress = data.get("progress")
        return cls(
            id=str(data["id"]),
            type=str(data.get("type") or ""),
            status=str(data.get("status") or ""),
            queue=str(data.get("queue") or ""),
            attempts=int(data.get("attempts") or 0),
            max_retries=int(data.get("max_retries") or 0),
            attempt=int(data.get("attempt") or 0),
            max_attempts=int(data.get("max_attempts") or 0),
            progress=float(progress) if progress is not None else None,
            progress_message=str(data.get("progress_message") or ""),
            result=data.get("result"),
            error_type=str(data.get("error_type") or ""),
            error_message=str(data.get("error_message") or ""),
            traceback=data.get("traceback"),
            worker=str(data.get("worker") or ""),
            correlation_id=str(data.get("correlation_id") or ""),
            idempotency_key=data.get("idempotency_key"),
            retry_of=str(data["retry_of"]) if data.get("retry_of") else None,
            next_retry_at=parse_datetime(data.get("next_retry_at")),
            heartbeat_at=parse_datetime(data.get("heartbeat_at")),
            terminal_by=parse_datetime(data.get("terminal_by")),
            created_at=parse_datetime(data.get("created_at")),
            dispatched_at=parse_datetime(data.get("dispatched_at")),
            started_at=parse_datetime(data.get("started_at")),
            finished_at=parse_datetime(data.get("finished_at")),
            attempt_history=tuple(Attempt.from_json(item) for item in data.get("attempt_history") or ()),
            etag=etag,
            retry_after=retry_after,
            raw=dict(data),
        )


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One job of a ``submit_many`` batch."""

    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    countdown: int | None = None
    scheduled_for: datetime | str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "payload": dict(self.payload)}
        if self.queue is not None:
            body["queue"] = self.queue
        if self.countdown is not None:
            body["countdown"] = self.countdown
        if self.scheduled_for is not None:
            when = self.scheduled_for
            body["scheduled_for"] = when.isoformat() if isinstance(when, datetime) else when
        return body


@dataclass(frozen=True)
class BulkJob:
    """One job a batch recorded: poll it with ``get(id)`` or ``wait(id)``."""

    id: str
    type: str
    status: str
    url: str


@dataclass(frozen=True)
class BulkResult:
    """What ``submit_many`` recorded: every job of the batch, in the order sent, one correlation id."""

    count: int
    correlation_id: str
    jobs: tuple[BulkJob, ...]

    @property
    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BulkResult:
        jobs = tuple(
            BulkJob(id=str(item["id"]), type=str(item["type"]), status=str(item["status"]), url=str(item["url"]))
            for item in data.get("jobs") or ()
        )
        return cls(count=int(data.get("count") or len(jobs)), correlation_id=str(data.get("correlation_id")), jobs=jobs)


@dataclass(frozen=True)
class DeadLetter:
    """A job (or a message) that failed for good, waiting for a human to replay or resolve it.

    ``job`` is the failed job's id (None for a message that never became a job run); ``body``,
    ``traceback`` and ``alerts`` are only in single dead letters (``get``, ``resolve``), not in lists.
    """

    id: int
    status: str
    type: str
    job: str | None = None
    queue: str = ""
    reason: str = ""
    error_type: str = ""
    error_message: str = ""
    attempts: int = 0
    replay_job: str | None = None
    created_at: datetime | None = None
    replayed_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_by: str = ""
    body: Any = None
    traceback: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeadLetter:
        return cls(
            id=int(data["id"]),
            status=str(data.get("status") or ""),
            type=str(data.get("type") or ""),
            job=str(data["job"]) if data.get("job") else None,
            queue=str(data.get("queue") or ""),
            reason=str(data.get("reason") or ""),
            error_type=str(data.get("error_type") or ""),
            error_message=str(data.get("error_message") or ""),
            attempts=int(data.get("attempts") or 0),
            replay_job=str(data["replay_job"]) if data.get("replay_job") else None,
            created_at=parse_datetime(data.get("created_at")),
            replayed_at=parse_datetime(data.get("replayed_at")),
            resolved_at=parse_datetime(data.get("resolved_at")),
            resolved_by=str(data.get("resolved_by") or ""),
            body=data.get("body"),
            traceback=data.get("traceback"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class DeadLetterStats:
    """Open dead letters, the age of the oldest open one (seconds) and the total kept."""

    open: int
    oldest_age_seconds: float
    total: int
