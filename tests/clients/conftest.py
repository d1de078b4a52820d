"""Fixtures for the Python client's tests: a live Terminus web server (gunicorn) and Alice's client.

The server is the browser tests' ``WebServer`` (``gunicorn project.wsgi`` on the test database
and the session's broker), told of the hold queue; the suite's shared worker runs the jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from terminus_client import Client

from tests.clients.helpers import SERVER_QUEUES, client_for_url
from tests.factories import token_for
from tests.results.web.helpers import WebServer, artifact


@pytest.fixture(scope="module")
def terminus_web(django_db_setup: None, request: pytest.FixtureRequest) -> Iterator[WebServer]:
    """One web server for the module (users and tokens are rows: each test's are its own)."""
    server = WebServer(
        log_path=artifact(f"client-{request.module.__name__.rsplit('.', 1)[-1]}.log"), TERMINUS_QUEUES=SERVER_QUEUES
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_terminus_web(transactional_db: None, request: pytest.FixtureRequest) -> Iterator[Callable[..., WebServer]]:
    """Factory: another web server with other settings (``TERMINUS_SUBMIT_RATE=...``) or on a given ``port``."""
    started: list[WebServer] = []

    def start(*, port: int = 0, **env: Any) -> WebServer:
        log = artifact(f"{request.node.name}-client-web-{len(started)}.log")
        server = WebServer(log_path=log, port=port, TERMINUS_QUEUES=SERVER_QUEUES, **env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def terminus(transactional_db: None, terminus_web: WebServer, alice: User) -> Iterator[Client]:
    """Alice's client of the live server (tenant acme), with quick retries."""
    with client_for_url(terminus_web.url, token_for(alice)) as client:
        yield client
