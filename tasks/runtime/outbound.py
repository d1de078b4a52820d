"""Outbound HTTP to a URL a user gave: only to public addresses, checked where the socket connects.

A job that calls a URL from its payload (``webhook.deliver``, and any later one) would otherwise let
any API user make a worker reach what only the worker can reach: the cloud metadata service, Redis,
PostgreSQL, the RabbitMQ console, anything on loopback or the private network. So the connection
itself is guarded (``client()``): the host is resolved once, every address it resolves to must be
globally reachable (no loopback, private, shared, link-local, multicast, reserved or unspecified
address, IPv4 or IPv6, nor an IPv6 form that embeds such an IPv4 address), and the socket then
connects to the very address that was checked. A DNS name that answers a public address to a
first lookup and a private one later (DNS rebinding) therefore gains nothing, and every spelling
of an address (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``)
is judged by the address it resolves to, not by its text. Redirects are never followed.

Legitimate internal receivers are allowed by ``TERMINUS_OUTBOUND_ALLOW``: a comma-separated list
of networks (``10.1.0.0/16``, ``127.0.0.1/32``) and host names (``hooks.internal``); a host name
on the list may resolve to anything. A refusal is a ``PermanentError`` (the same request would be
refused again), with a message that names the host, the address and how to allow it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from tasks.failure import apprise_urls
from tasks.runtime.errors import PermanentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Names of cloud metadata services, refused before any lookup (their addresses are refused anyway).
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})
#: IPv6 prefixes that carry an IPv4 address inside (NAT64): judged by the IPv4 address they carry.
NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class OutboundRefused(PermanentError):
    """The URL's host is, or resolves to, an address jobs may not reach (see tasks.runtime.outbound)."""


@dataclass(frozen=True)
class Policy:
    """What TERMINUS_OUTBOUND_ALLOW admits besides public addresses."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks if network.version == address.version)


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


@functools.lru_cache(maxsize=8)
def parse_policy(entries: tuple[str, ...]) -> Policy:
    """``TERMINUS_OUTBOUND_ALLOW``'s entries as a Policy; a malformed entry is a configuration error.

    An address or a network (``127.0.0.1``, ``10.1.0.0/16``, ``fd00::/8``), else a host name.
    """
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for raw in entries:
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError as exc:
            problem = str(exc)
        if "/" in entry or re.fullmatch(r"[0-9.]+", entry) or not _HOST_NAME.match(entry):
            raise ImproperlyConfigured(
                f"TERMINUS_OUTBOUND_ALLOW: {raw!r} is neither a network nor a host name ({problem})"
            )
        hosts.add(entry)
    return Policy(networks=tuple(networks), hosts=frozenset(hosts))


def current_policy() -> Policy:
    return parse_policy(tuple(settings.TERMINUS_OUTBOUND_ALLOW))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    for prefix in NAT64_PREFIXES:
        if address in prefix:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Globally reachable unicast: not loopback, private, shared, link-local, multicast, reserved, unspecified."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
    return address.is_global and not address.is_multicast


def refusal(host: str, address: IPAddress, policy: Policy) -> str | None:
    """Why ``host`` at ``address`` may not be reached (None: it may)."""
    if policy.allows_host(host) or policy.allows_address(address) or is_public(address):
        return None
    return (
        f"refused to connect to {host} ({address}): not a public address (loopback, private, link-local, "
        "metadata or reserved); an internal receiver must be listed in TERMINUS_OUTBOUND_ALLOW"
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a numeric host in any spelling resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # an IPv6 scope id names an interface, not an address
        address = ipaddress.ip_address(text)
        if address not in addresses:
            addresses.append(address)
    return addresses


def checked_address(host: str, port: int, policy: Policy) -> IPAddress:
    """The address to connect to for ``host``; OutboundRefused if it, or any other it resolves to, is not allowed.

    Every resolved address must pass, not only the first: a name that resolves to one public and
    one private address would otherwise reach the private one whenever the first connect failed.
    """
    name = host.lower().rstrip(".").strip("[]")
    if name in METADATA_HOSTS and not policy.allows_host(name):
        raise OutboundRefused(f"refused to connect to {host}: a cloud metadata service")
    try:
        addresses = resolve(name, port)
    except (OSError, ValueError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    for address in addresses:
        reason = refusal(name, address, policy)
        if reason:
            raise OutboundRefused(reason)
    if not addresses:
        raise httpcore.ConnectError(f"{host} resolves to no address")
    return addresses[0]


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to the address it checked for the host."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        address = checked_address(host, port, self.policy)
        # TLS still verifies the certificate against the URL's host name (httpcore passes it as the
        # server name), so connecting by address changes nothing for HTTPS.
        return super().connect_tcp(str(address), port, timeout, local_address, socket_options)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the guarded backend; never a proxy (a proxy would connect for us, unchecked)."""

    def __init__(self, policy: Policy | None = None):
        super().__init__(trust_env=False)
        # httpx builds its pool without a way to pass a network backend: build the same pool with ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=GuardedBackend(policy or current_policy()),
        )


def client(*, timeout: float) -> httpx.Client:
    """An httpx client for user-given URLs: guarded connections, no redirects, no proxies from the environment."""
    return httpx.Client(transport=GuardedTransport(), timeout=timeout, follow_redirects=False, trust_env=False)


def alert_host_refusal(host: str, port: int) -> str | None:
    """Why an alert webhook (an apprise ``json://`` URL, …) may not post to ``host`` (None: it may)."""
    try:
        checked_address(host, port, current_policy())
    except OutboundRefused as exc:
        return str(exc)
    return None


apprise_urls.install_address_guard(alert_host_refusal)
