"""Fixtures for the browser face: a real gunicorn web process and a real headless Chromium.

The web server is ``gunicorn project.wsgi`` in its own process group (so a test can kill it, as
a crashed host or a deploy would), with ``DEBUG=false`` and collected static files as in
production, on the *test* database and the session's broker. Chromium is Debian's
``/usr/bin/chromium``, driven by Playwright with its executable path set. Nothing is downloaded.
``make install`` installs it with apt-get where it can; without it the browser tests skip,
saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.db import connections

from results.models import Membership, Tenant
from tests.helpers import ROOT, test_database_url
from tests.results.web.helpers import (
    CHROMIUM_ARGS,
    PASSWORD,
    WebServer,
    _append,
    artifact,
    chromium_executable,
)


@pytest.fixture(scope="session")
def collected_static(django_db_setup: None) -> None:
    """``collectstatic`` into this configuration's STATIC_ROOT, as the deploy does (DEBUG is off)."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": test_database_url()},
        check=True,
        timeout=120,
    )


@pytest.fixture
def start_web(
    transactional_db: None, collected_static: None, request: pytest.FixtureRequest
) -> Iterator[Callable[..., WebServer]]:
    """Factory: start (or, with ``port=``, restart) a gunicorn web server; all are stopped after."""
    started: list[WebServer] = []

    def start(**kwargs: Any) -> WebServer:
        server = WebServer(log_path=artifact(f"{request.node.name}-gunicorn-{len(started)}.log"), **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def web(start_web: Callable[..., WebServer]) -> WebServer:
    return start_web()


@pytest.fixture
def web_user(transactional_db: None) -> User:
    """A user of tenant "acme" with a password (hashed with few iterations: the login stays cheap)."""
    user = User.objects.create(username="ada", password=PBKDF2PasswordHasher().encode(PASSWORD, "websalt", 1000))
    Membership.objects.create(user=user, tenant=Tenant.objects.get_or_create(name="acme")[0])
    return user


@pytest.fixture
def page(transactional_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A page in a fresh headless Chromium (its own profile directory), closed after the test."""
    executable = chromium_executable()
    if executable is None:
        pytest.skip(
            "chromium is not installed (looked for /usr/bin/chromium and chromium on PATH); "
            "`make install` installs it with apt-get where apt is available"
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps its (idle) event loop set as the running loop of this thread,
    # which makes Django refuse ORM calls from the test body; they are still plain sync calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        context.set_default_timeout(30_000)
        page = context.pages[0] if context.pages else context.new_page()
        console = artifact("console.log")
        page.on("console", lambda message: _append(console, f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: _append(console, f"pageerror: {error}"))
        try:
            yield page
        finally:
            context.close()
            # ORM calls made while Playwright runs get connections of their own (its greenlet
            # switching gives them another context); close them, or the test database cannot be
            # dropped at the end of the session.
            connections.close_all()
