"""``Client``: submit jobs to a Terminus server over HTTP and wait for their terminal state.

Every call maps to one endpoint of ``/api/`` (see the server's ``/api/docs/``); ``wait`` is the
polling loop a caller would otherwise write by hand: long polls (``?wait=``) with the job's ETag,
so the server answers the moment the job changes, ``Retry-After`` honoured between polls, and an
overall timeout.
"""

from __future__ import annotations

import builtins
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx

from .errors import JobCancelled, JobFailed, RateLimited, TerminusError, WaitTimeout
from .models import CANCELLED, FAILED, BulkResult, DeadLetter, DeadLetterStats, Job, JobSpec
from .retry import RetryPolicy, parse_retry_after
from .transport import Transport

#: Seconds one request may take (connect, send, read); a long poll's read may take its wait longer.
DEFAULT_TIMEOUT = 10.0
#: Seconds ``wait`` gives a job before raising WaitTimeout.
DEFAULT_WAIT_TIMEOUT = 300.0
#: Seconds each long poll of ``wait`` asks the server to hold it (the server caps it, 60 by default).
DEFAULT_POLL_WAIT = 30

JobRef = str | uuid.UUID | Job


@runtime_checkable
class PydanticModel(Protocol):
    """A job type's input model (pydantic): submitted as its JSON dump."""

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


Payload = Mapping[str, Any] | PydanticModel


def job_id_of(job: JobRef) -> str:
    return job.id if isinstance(job, Job) else str(job)


def payload_json(payload: Payload | None) -> dict[str, Any]:
    if payload is None:
        return {}
    if isinstance(payload, PydanticModel):
        return payload.model_dump(mode="json")
    return dict(payload)


def iso(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else value


def query(**params: Any) -> dict[str, Any]:
    """Query parameters without the ones left out; lists comma-joined, datetimes in ISO 8601."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, str | bytes):
            out[name] = value
        elif isinstance(value, datetime):
            out[name] = value.isoformat()
        elif isinstance(value, Iterable):
            out[name] = ",".join(str(item) for item in value)
        else:
            out[name] = value
    return out


class Client:
    """A synchronous Terminus API client; use it as a context manager, or call ``close()``.

    ``base_url`` is the server's root (``https://terminus.example.com``), ``token`` a user's API
    token (``Authorization: Token <key>``). ``retry`` says how requests that got no answer, or a
    503, are sent again. ``dead_letters`` holds the dead-letter calls.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
    ):
        self.transport = Transport(
            base_url, token, timeout=timeout, retry=retry or RetryPolicy(), headers=headers, verify=verify
        )
        self.dead_letters = DeadLetters(self.transport)

    @classmethod
    def from_env(cls, **options: Any) -> Client:
        """A client for ``TERMINUS_URL`` with the token in ``TERMINUS_TOKEN``."""
        try:
            base_url = os.environ["TERMINUS_URL"]
        except KeyError:
            raise ValueError("TERMINUS_URL is not set (the server's root URL, e.g. http://127.0.0.1:8000)") from None
        return cls(base_url, os.environ.get("TERMINUS_TOKEN"), **options)

    @property
    def http(self) -> httpx.Client:
        """The underlying httpx client (event hooks, proxies, ...)."""
        return self.transport.http

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- submit ----------------------------------------------------------------------------------
    def submit(
        self,
        type: str,
        payload: Payload | None = None,
        *,
        idempotency_key: str | None = None,
        queue: str | None = None,
        countdown: int | None = None,
        scheduled_for: datetime | str | None = None,
        correlation_id: str | None = None,
    ) -> Job:
        """Record and enqueue one job; the job as recorded (status ``queued``).

        With ``idempotency_key``, submitting again returns the first job instead of a new one,
        which is also what makes the submission safe to send again after a broken connection.
        """
        body: dict[str, Any] = {"type": type, "payload": payload_json(payload)}
        for name, value in (("idempotency_key", idempotency_key), ("queue", queue), ("countdown", countdown)):
            if value is not None:
                body[name] = value
        if scheduled_for is not None:
            body["scheduled_for"] = iso(scheduled_for)
        headers = {"X-Correlation-ID": correlation_id} if correlation_id else None
        response = self.transport.request(
            "POST", "/api/jobs/", json=body, headers=headers, idempotent=idempotency_key is not None
        )
        return job_from(response)

    def submit_many(
        self, jobs: Iterable[JobSpec | Mapping[str, Any]], *, correlation_id: str | None = None
    ) -> BulkResult:
        """Record many jobs in one request (all or none: one bad item refuses the batch with 400)."""
        items = [job.to_json() if isinstance(job, JobSpec) else dict(job) for job in jobs]
        headers = {"X-Correlation-ID": correlation_id} if correlation_id else None
        response = self.transport.request(
            "POST", "/api/jobs/bulk/", json={"jobs": items}, headers=headers, idempotent=False
        )
        return BulkResult.from_json(response.json())

    # -- poll ------------------------------------------------------------------------------------
    def get(self, job: JobRef) -> Job:
        """The job now, with its attempt history."""
        found, _ = self._poll(job_id_of(job), etag=None, wait=0)
        if found is None:  # only an If-None-Match can be answered 304, and none was sent
            raise TerminusError("the server answered 304 Not Modified to a poll without If-None-Match")
        return found

    def poll(self, job: JobRef, *, etag: str | None = None, wait: int = 0) -> Job | None:
        """The job if it changed since ``etag`` (its ``Job.etag``), else None (the server said 304).

        With ``wait`` (seconds), a long poll: the server holds the request until the job changes
        or ``wait`` passes (it caps ``wait``, 60 s by default).
        """
        return self._poll(job_id_of(job), etag=etag, wait=wait)[0]

    def wait(
        self,
        job: JobRef,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        poll_wait: int = DEFAULT_POLL_WAIT,
        raise_on_failure: bool = False,
    ) -> Job:
        """The job once it is terminal (succeeded, failed or cancelled).

        Long polls with the job's ETag, so an answer comes as soon as the job changes; between
        unchanged answers it waits the server's ``Retry-After``; a 429 (too many long polls held
        at once) is waited out. Raises WaitTimeout (with the job as last seen) after ``timeout``
        seconds; with ``raise_on_failure``, JobFailed or JobCancelled when it ends that way.
        """
        job_id = job_id_of(job)
        deadline = time.monotonic() + timeout
        current = self.get(job_id)
        while not current.terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(current, timeout)
            started = time.monotonic()
            try:
                changed, retry_after = self._poll(job_id, etag=current.etag, wait=int(min(poll_wait, remaining)))
            except RateLimited as exc:
                time.sleep(max(0.0, min(exc.retry_after or 1.0, deadline - time.monotonic())))
                continue
            if changed is not None:
                moved = changed.etag is not None and changed.etag != current.etag
                current = changed
                if moved:
                    continue
            # Not modified (or no version to compare): the long poll ran out, or the server holds
            # polls for less than asked. Its Retry-After keeps this from becoming a busy loop.
            pause = min((retry_after or 1.0) - (time.monotonic() - started), deadline - time.monotonic())
            if pause > 0:
                time.sleep(pause)
        if raise_on_failure and current.status == FAILED:
            raise JobFailed(current)
        if raise_on_failure and current.status == CANCELLED:
            raise JobCancelled(current)
        return current

    def _poll(self, job_id: str, *, etag: str | None, wait: int) -> tuple[Job | None, float | None]:
        """(the job or None on 304, the answer's Retry-After)."""
        headers = {"If-None-Match": etag} if etag else None
        params = {"wait": wait} if wait > 0 else None
        response = self.transport.request(
            "GET",
            f"/api/jobs/{quote(job_id, safe='')}/",
            params=params,
            headers=headers,
            idempotent=True,
            read_timeout=self.transport.timeout + wait if wait > 0 else None,
        )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if response.status_code == httpx.codes.NOT_MODIFIED:
            return None, retry_after
        return job_from(response), retry_after

    # -- act on a job ----------------------------------------------------------------------------
    def cancel(self, job: JobRef, reason: str | None = None) -> Job:
        """Cancel a queued, running or retrying job; Conflict (409) once it is terminal."""
        body = {"reason": reason} if reason is not None else {}
        response = self.transport.request(
            "POST", f"/api/jobs/{quote(job_id_of(job), safe='')}/cancel/", json=body, idempotent=False
        )
        return job_from(response)

    def retry(self, job: JobRef) -> Job:
        """Run a failed or cancelled job again: the new job (``retry_of`` names the old one)."""
        response = self.transport.request(
            "POST", f"/api/jobs/{quote(job_id_of(job), safe='')}/retry/", idempotent=False
        )
        return job_from(response)

    def job_types(self) -> builtins.list[dict[str, Any]]:
        """The registered job types this token may submit, with each one's input JSON Schema."""
        types: builtins.list[dict[str, Any]] = self.transport.request("GET", "/api/job-types/", idempotent=True).json()
        return types

    # -- list ------------------------------------------------------------------------------------
    def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        type: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Job]:
        """Every job matching the filters, newest first, fetching page after page as it is iterated."""
        params = query(
            status=status,
            type=type,
            created_after=created_after,
            created_before=created_before,
            page_size=page_size,
        )
        for item in paginate(self.transport, "/api/jobs/", params):
            yield Job.from_json(item)


class DeadLetters:
    """The dead-letter calls (``client.dead_letters``): jobs that failed for good, for a human to handle."""

    def __init__(self, transport: Transport):
        self.transport = transport

    def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        type: str | None = None,
        error_type: str | None = None,
        reason: str | Iterable[str] | None = None,
        job: JobRef | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        older_than: int | None = None,
        page_size: int | None = None,
    ) -> Iterator[DeadLetter]:
        """Every dead letter matching the filters, newest first, page after page."""
        params = query(
            status=status,
            type=type,
            error_type=error_type,
            reason=reason,
            job=job_id_of(job) if job is not None else None,
            created_after=created_after,
            created_before=created_before,
            older_than=older_than,
            page_size=page_size,
        )
        for item in paginate(self.transport, "/api/dead-letters/", params):
            yield DeadLetter.from_json(item)

    def get(self, letter: int | DeadLetter) -> DeadLetter:
        """One dead letter with its message body and traceback (staff only)."""
        response = self.transport.request("GET", f"/api/dead-letters/{letter_id(letter)}/", idempotent=True)
        return DeadLetter.from_json(response.json())

    def replay(self, letter: int | DeadLetter, payload: Payload | None = None) -> Job:
        """Run it again as a new job (with ``payload`` instead of the original, if given).

        Replaying again returns the same job and runs nothing, so this is safe to send twice.
        """
        body = {"payload": payload_json(payload)} if payload is not None else {}
        response = self.transport.request(
            "POST", f"/api/dead-letters/{letter_id(letter)}/replay/", json=body, idempotent=True
        )
        return job_from(response)

    def resolve(self, letter: int | DeadLetter) -> DeadLetter:
        """Close it without running anything; Conflict (409) if it was replayed."""
        response = self.transport.request("POST", f"/api/dead-letters/{letter_id(letter)}/resolve/", idempotent=True)
        return DeadLetter.from_json(response.json())

    def stats(self) -> DeadLetterStats:
        """Open dead letters, the oldest one's age and the total kept (for monitoring)."""
        data = self.transport.request("GET", "/api/dead-letters/stats/", idempotent=True).json()
        return DeadLetterStats(
            open=int(data["open"]), oldest_age_seconds=float(data["oldest_age_seconds"]), total=int(data["total"])
        )


def letter_id(letter: int | DeadLetter) -> int:
    return letter.id if isinstance(letter, DeadLetter) else int(letter)


def job_from(response: httpx.Response) -> Job:
    """The job in a detail answer, with its ETag and Retry-After headers."""
    return Job.from_json(
        response.json(),
        etag=response.headers.get("ETag"),
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def paginate(transport: Transport, url: str, params: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Each item of a cursor-paginated list, following ``next`` until it is null."""
    next_url: str | None = url
    next_params: Mapping[str, Any] | None = params
    while next_url:
        page = transport.request("GET", next_url, params=next_params, idempotent=True).json()
        yield from page.get("results") or ()
        next_url, next_params = page.get("next"), None  # next carries every parameter, cursor included
