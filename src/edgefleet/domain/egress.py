"""Which addresses the server's own outbound requests (webhooks) may reach. No I/O here:
services/egress.py resolves names and connects, asking :meth:`EgressPolicy.refusal` about
every address it would connect to.

Refused unless an allowed network (``events.webhook_allow_networks``) contains them:
loopback, private (RFC 1918), link-local (169.254.0.0/16 with the cloud metadata service,
fe80::/10), unique-local (fc00::/7), shared address space (CGNAT, 100.64.0.0/10), reserved
and documentation ranges (everything Python's ``ipaddress`` does not call global), and the
server's own addresses. Multicast and the unspecified address (0.0.0.0 and ``::`` reach the
local host on Linux) are refused even when listed. An IPv6 address that carries an IPv4
address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``,
IPv4-compatible ``::a.b.c.d``, IPv4-translated ``::ffff:0:a.b.c.d``) is judged by that
IPv4 address as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

_KINDS: tuple[tuple[str, IPNetwork], ...] = tuple(
    (name, ipaddress.ip_network(net))
    for name, net in (
        ("loopback", "127.0.0.0/8"),
        ("loopback", "::1/128"),
        ("link-local", "169.254.0.0/16"),
        ("link-local", "fe80::/10"),
        ("private", "10.0.0.0/8"),
        ("private", "172.16.0.0/12"),
        ("private", "192.168.0.0/16"),
        ("unique-local", "fc00::/7"),
        ("shared (CGNAT)", "100.64.0.0/10"),
        ("this network", "0.0.0.0/8"),
        # special-purpose blocks that not every Python's ipaddress tables call non-global
        # (3.11.7 took all three for global): the IETF assignments with Oracle Cloud's
        # metadata service at 192.0.0.192, the deprecated 6to4 relay anycast, and the
        # local-use NAT64 prefix, which translates to private IPv4 addresses (RFC 8215)
        ("reserved", "192.0.0.0/24"),
        ("reserved", "192.88.99.0/24"),
        ("reserved", "64:ff9b:1::/48"),
    )
)
"""Names for the refusals most often met, for the server log, and the special-purpose
blocks the rules must not leave to the interpreter's version."""

IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
"""``::a.b.c.d`` (deprecated, RFC 4291): judged by its IPv4 address (``::`` and ``::1`` aside)."""
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
"""``::ffff:0:a.b.c.d`` (SIIT, RFC 2765): judged by its IPv4 address."""


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64 or 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64 or ip in IPV4_TRANSLATED or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def kind(ip: IPAddress) -> str:
    """What sort of address ``ip`` is, in a word or two (for logs and messages)."""
    for name, net in _KINDS:
        if ip.version == net.version and ip in net:
            return name
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if not ip.is_global:
        return "reserved"
    return "global"


@dataclass(frozen=True)
class EgressPolicy:
    """``allow``: networks reachable although internal (a receiver on the LAN, the tests'
    127.0.0.0/8); ``own``: this server's addresses, refused unless allowed."""

    allow: tuple[IPNetwork, ...] = ()
    own: frozenset[IPAddress] = field(default_factory=frozenset)

    @classmethod
    def of(cls, allow: Iterable[IPNetwork], own: Iterable[IPAddress] = ()) -> EgressPolicy:
        return cls(tuple(allow), frozenset(own))

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` may not be connected to (e.g. ``"loopback"``), or None if it may."""
        inner = embedded_ipv4(ip)
        # the IPv4 address first: "::ffff:127.0.0.1" is loopback before it is reserved
        candidates = (ip,) if inner is None else (inner, ip)
        for candidate in candidates:
            if candidate.is_multicast:
                return "multicast"
            if candidate.is_unspecified:
                return "unspecified"
        if any(self._allowed(c) for c in candidates):
            return None
        for candidate in candidates:
            if candidate in self.own:
                return "this server's own address"
            what = kind(candidate)
            if what != "global":
                return what
        return None

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow)
