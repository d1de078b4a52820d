"""Record writes that outlive a short database outage.

A terminal state that fails to land leaves a job ``running`` until the reaper notices; a write
that waits out a database restart (or a connection broken by one, when connections are reused
across tasks) keeps the promise without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)
T = TypeVar("T")


def durable(write: Callable[[], T], *, what: str) -> T:
    """Run ``write``, retrying with backoff on connection errors for TERMINUS_DB_RETRY_SECONDS."""
    deadline = time.monotonic() + settings.TERMINUS_DB_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            logger.warning("database unavailable while recording %s (%s); retrying in %.1fs", what, exc, delay)
            connection.close()  # a broken connection is replaced on the next try
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
