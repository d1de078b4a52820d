"""Helpers for the client tests: the hold queue, free ports, clients with short retries."""

from __future__ import annotations

import socket

from terminus_client import Client, RetryPolicy

#: A queue the test web servers accept and no worker consumes: jobs sent there stay ``queued``
#: (their messages wait in the broker, which the next session purges).
HOLD_QUEUE = "client-hold"
#: The queues the test web servers know.
SERVER_QUEUES = f"default,slow,{HOLD_QUEUE}"
#: Quick retries, so the tests that exhaust them take a second, not a minute.
QUICK_RETRY = RetryPolicy(max_attempts=3, backoff_base=0.1, backoff_max=0.3)


def free_port() -> int:
    """A loopback port nothing listens on (bound by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_for_url(url: str, token: str | None, *, retry: RetryPolicy = QUICK_RETRY, timeout: float = 10) -> Client:
    """A client of ``url`` with ``token`` and the tests' quick retries."""
    return Client(url, token, retry=retry, timeout=timeout)
