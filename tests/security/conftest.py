"""Shared pieces of the security suite: tenants, users, tokens, jobs in every state, the error shape.

Two tenants (``acme`` and ``globex``) each have a user; tests act as acme's user and use globex's
jobs as the objects that must stay invisible. Jobs are put in their states through the record's
own state machine (results.models.Job), never by writing a status by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from tests.security.helpers import (
    FUZZ_REPORT,
    TenantJobs,
    jobs_in_every_state,
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FUZZ_REPORT:
        terminalreporter.section("security fuzz")
        for name, count in FUZZ_REPORT.items():
            terminalreporter.write_line(f"{name}: {count} generated requests")
        terminalreporter.write_line(f"total: {sum(FUZZ_REPORT.values())} generated requests")


@pytest.fixture
def acme_jobs(alice: User) -> TenantJobs:
    return jobs_in_every_state(alice)


@pytest.fixture
def globex_jobs(bob: User) -> TenantJobs:
    return jobs_in_every_state(bob)
