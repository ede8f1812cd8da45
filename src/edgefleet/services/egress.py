"""Outbound HTTP that reaches only allowed addresses (webhooks): the name is resolved once,
every address it resolves to is checked (domain/egress.py), and the connection goes to the
checked address, so a name that resolves elsewhere a moment later (DNS rebinding) changes
nothing. ``Host`` and TLS SNI keep the name: httpcore asks its *network backend* for a TCP
stream to ``(host, port)`` and does the rest itself, so :class:`GuardedBackend` is the one
place that turns a name into an address.

A refused address raises :class:`EgressRefusedError` before any socket exists. Numeric host
forms (``2130706433``, ``0x7f.1``, ``127.1``) are parsed by the C library exactly as a
connect would, without a lookup. No proxy is used: a proxy would resolve the name itself,
after our check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import httpcore
import httpx
import psutil

from edgefleet.domain.egress import EgressPolicy, IPAddress, IPNetwork
from edgefleet.errors import EdgefleetError

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host name, port)`` → the addresses it resolves to (textual); raises ``OSError``."""


class EgressRefusedError(EdgefleetError):
    """The endpoint resolves to an address outbound requests may not reach."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {address}, a {reason} address: refused")
        self.host = host
        self.address = address
        self.reason = reason


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (``getaddrinfo``), off the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def numeric_host(host: str) -> IPAddress | None:
    """``host`` as an address if it is one in any form the C library accepts (dotted quad,
    ``2130706433``, ``0x7f.1``, ``127.1``, IPv6), without a lookup; None for a name."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except (socket.gaierror, UnicodeError):
        return None
    return _address(str(infos[0][4][0]))


def _address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone index


def own_addresses() -> frozenset[IPAddress]:
    """Every address on this host's interfaces."""
    found: set[IPAddress] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(_address(a.address))
                except ValueError:
                    continue
    return frozenset(found)


class Egress:
    """Resolves a host and keeps only the addresses the policy allows. ``resolver`` and
    ``network`` (what opens the checked connections) are read at each use, so tests can
    put recording or stub ones in."""

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver = system_resolver,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.network = network or httpcore.AnyIOBackend()

    @classmethod
    def for_networks(cls, allow: Iterable[IPNetwork]) -> Egress:
        """The policy with ``allow`` and this host's own addresses."""
        return cls(EgressPolicy.of(allow, own_addresses()))

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``: all of them allowed, or
        ``EgressRefusedError`` (one refused address refuses the name: which one a connect
        would use is not ours to choose). ``OSError`` when the name does not resolve."""
        literal = numeric_host(host)
        if literal is not None:
            found = [literal]
        else:
            found = [_address(a) for a in await self.resolver(host, port)]
            if not found:
                raise OSError(f"{host} resolves to no address")
        for ip in found:
            reason = self.policy.refusal(ip)
            if reason is not None:
                raise EgressRefusedError(host, str(ip), reason)
        return list(dict.fromkeys(str(ip) for ip in found))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend that connects only to addresses :class:`Egress` allows,
    to exactly the address it checked."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self.egress.addresses(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self.egress.network.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None  # addresses is never empty
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("outbound requests do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.egress.network.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request mapping, pooling, error translation) over a
    connection pool whose network backend is a :class:`GuardedBackend`. httpx takes no
    network backend of its own, so the pool it made is replaced by one that has it."""

    def __init__(self, backend: GuardedBackend, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),  # SSL_CERT_FILE still applies
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def guarded_client(
    egress: Egress, timeout: float, limits: httpx.Limits | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that reaches only what ``egress`` allows, follows no
    redirect and ignores proxy variables."""
    limits = limits or httpx.Limits()
    transport = GuardedTransport(GuardedBackend(egress), limits)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
    )
