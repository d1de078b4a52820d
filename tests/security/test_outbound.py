"""No SSRF through webhook.deliver: a tenant cannot make a worker reach what only the worker can reach.

A listener on loopback stands for an internal service (Redis, PostgreSQL, a metadata endpoint). A
worker started with the production default (no TERMINUS_OUTBOUND_ALLOW) is asked to POST to it
through every spelling of a loopback address: no request arrives, and each job fails for good at
once with an error that says why. The allow-list then admits it, and even then the job's result
carries the receiver's status and size, never its answer.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpcore
import pytest
from django.core.exceptions import ImproperlyConfigured

from results.models import Status
from tasks.runtime import outbound
from tasks.runtime.outbound import OutboundRefused, Policy, checked_address, parse_policy
from tasks.submit.outbox import submit
from tests.helpers import wait_terminal
from tests.receivers import start_receiver

#: Every spelling of loopback the probe tried, with where it must not connect.
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "localhost",
    "0.0.0.0",  # noqa: S104 - an address to refuse, not to bind
    "2130706433",
    "0x7f000001",
    "127.1",
    "0177.0.0.1",
    "[::ffff:127.0.0.1]",
]
#: Internal addresses with nothing listening here: refused before any connection is tried.
INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://10.0.0.1:6379/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
]


@pytest.mark.parametrize(
    "host",
    [
        *[h.strip("[]") for h in LOOPBACK_SPELLINGS],
        "::1",
        "169.254.169.254",
        "10.1.2.3",
        "172.16.0.1",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "fd00:ec2::254",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "metadata.google.internal",
    ],
)
def test_the_policy_refuses_every_internal_address_however_it_is_spelled(host):
    with pytest.raises(OutboundRefused, match=r"TERMINUS_OUTBOUND_ALLOW|metadata"):
        checked_address(host, 80, Policy())


def test_the_policy_admits_public_addresses_and_what_the_allow_list_names():
    assert str(checked_address("8.8.8.8", 443, Policy())) == "8.8.8.8"
    allow = parse_policy(("127.0.0.1/32", "hooks.internal"))
    assert str(checked_address("127.0.0.1", 80, allow)) == "127.0.0.1"
    assert str(checked_address("2130706433", 80, allow)) == "127.0.0.1"  # the address, not its spelling
    with pytest.raises(OutboundRefused):
        checked_address("10.0.0.1", 80, allow)


def test_a_name_that_resolves_to_one_public_and_one_internal_address_is_refused(monkeypatch):
    # Given a name whose DNS answer mixes a public and a loopback address
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 80)) for ip in ("8.8.8.8", "127.0.0.1")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers)
    # Then the connection is refused: a failed connect to the first must not fall back to the second
    with pytest.raises(OutboundRefused, match=r"127\.0\.0\.1"):
        checked_address("mixed.example", 80, Policy())


def test_the_socket_connects_to_the_address_that_was_checked_not_to_a_second_lookup(monkeypatch):
    """DNS rebinding: a name answering a public address first and loopback afterwards gains nothing."""
    lookups: list[str] = []

    def rebinding(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        ip = "8.8.8.8" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 80))]

    connected: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(
        httpcore.SyncBackend, "connect_tcp", lambda self, host, port, *args, **kwargs: connected.append(host)
    )
    outbound.GuardedBackend(Policy()).connect_tcp("rebind.example", 80)
    assert (lookups, connected) == (["rebind.example"], ["8.8.8.8"])


def test_a_malformed_allow_list_is_a_configuration_error():
    for bad in ("10.0.0.0/33", "not a host!", "1.2.3.4.5"):
        with pytest.raises(ImproperlyConfigured, match="TERMINUS_OUTBOUND_ALLOW"):
            parse_policy((bad,))


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_no_post_reaches_a_loopback_listener_through_any_spelling_and_the_allow_list_admits_it(
    start_worker, drill_queue, settings
):
    # Given a listener on loopback (IPv4, and IPv6 when the machine has it), standing for an
    # internal service, and a worker at the production default: no TERMINUS_OUTBOUND_ALLOW
    listener = start_receiver(200)
    listener6 = start_receiver(200, host="::1") if socket.has_ipv6 else None
    try:
        start_worker(drill_queue, TERMINUS_OUTBOUND_ALLOW="")
        urls = [f"http://{host}:{listener.port}/hook" for host in LOOPBACK_SPELLINGS]
        if listener6 is not None:
            urls.append(f"http://[::1]:{listener6.port}/hook")
        urls += INTERNAL
        # When a tenant submits a webhook to each
        started = time.monotonic()
        jobs = [submit("webhook.deliver", {"url": url, "body": {"probe": True}}, queue=drill_queue) for url in urls]
        done = [wait_terminal(job.id) for job in jobs]
        seconds = time.monotonic() - started
        # Then every job failed for good on its first attempt, saying why, and nothing arrived
        for url, job in zip(urls, done, strict=True):
            assert (job.status, job.error_type, job.attempts) == (Status.FAILED, "OutboundRefused", 1), (url, job)
            assert "refused to connect" in job.error_message, job.error_message
            assert job.result is None
        assert listener.requests == []
        assert listener6 is None or listener6.requests == []
        print(f"outbound: {len(urls)} internal URLs refused, 0 requests received, all terminal in {seconds:.1f}s")
        # And a worker whose allow-list names the receiver delivers to it, returning no body
        allowed_queue = f"{drill_queue}-allowed"
        settings.TERMINUS_QUEUES = [*settings.TERMINUS_QUEUES, allowed_queue]
        start_worker(allowed_queue, TERMINUS_OUTBOUND_ALLOW="127.0.0.1/32")
        job = submit("webhook.deliver", {"url": listener.url}, queue=allowed_queue)
        delivered = wait_terminal(job.id)
        assert delivered.status == Status.SUCCEEDED, delivered.error_message
        assert set(delivered.result) == {"status_code", "response_bytes"}
        assert len(listener.requests) == 1
    finally:
        listener.stop()
        if listener6 is not None:
            listener6.stop()
