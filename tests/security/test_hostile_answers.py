"""Nothing a receiver answers can leave a job open: NUL, invalid UTF-8, 50 MB, not JSON, on any status.

Each answer goes through a real worker and the real database; every job must end terminal, with
what the receiver sent described (status, size) or quoted escaped in the error, never stored raw.
"""

from __future__ import annotations

import time

import pytest

from results.models import Status
from tasks.submit.outbox import submit
from tests.helpers import wait_terminal

FIFTY_MB = 50 * 1024 * 1024

ANSWERS = {
    "nul": (200, b'{"ok": "\x00"}\x00\x00'),
    "invalid-utf8": (200, b"\xff\xfe\xc3\x28 not utf-8 \xed\xa0\x80"),
    "fifty-mb": (200, b"x" * FIFTY_MB),
    "not-json": (200, b"<html><body>hello</body></html>"),
}


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_a_job_ends_succeeded_whatever_the_receiver_answered(worker, receiver, name):
    status, body = ANSWERS[name]
    recv = receiver((status, body))
    started = time.monotonic()
    job = submit("webhook.deliver", {"url": recv.url, "timeout": 30})
    done = wait_terminal(job.id, timeout=120)
    print(f"hostile answer {name}: {done.status} in {time.monotonic() - started:.1f}s")
    assert done.status == Status.SUCCEEDED, (done.error_type, done.error_message)
    assert done.result["status_code"] == status
    assert done.result["response_bytes"] == min(len(body), 1024 * 1024)
    assert ("response_bytes_read_up_to" in done.result) == (len(body) > 1024 * 1024)
    assert len(recv.requests) == 1


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_an_error_answer_with_nul_and_invalid_utf8_fails_the_job_with_an_escaped_excerpt(worker, receiver):
    recv = receiver((404, b"gone\x00\xff\xfe <!channel>"))
    job = submit("webhook.deliver", {"url": recv.url})
    done = wait_terminal(job.id)
    assert (done.status, done.error_type) == (Status.FAILED, "WebhookRejected")
    assert "\x00" not in done.error_message and "\\x00" in done.error_message
    assert "404" in done.error_message
