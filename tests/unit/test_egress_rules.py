"""Which addresses outbound requests may reach (domain/egress.py), and how host names in
numeric forms are read (services/egress.py, without a lookup)."""

from __future__ import annotations

import ipaddress

import pytest

from edgefleet.domain.egress import EgressPolicy, embedded_ipv4
from edgefleet.services.egress import Egress, EgressRefusedError, numeric_host

STRICT = EgressPolicy()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "unique-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.100.100.200", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:7f00:1::", "loopback"),
        ("::ffff:0.0.0.0", "unspecified"),
        # what the interpreter's ipaddress tables did not all know (Python 3.11.7 called
        # these global): the IETF block with Oracle Cloud's metadata service, the local-use
        # NAT64 prefix (translates to private IPv4), the IPv4-compatible and IPv4-translated
        # forms, the deprecated 6to4 relay anycast
        ("192.0.0.192", "reserved"),
        ("192.0.0.1", "reserved"),
        ("64:ff9b:1::a00:1", "reserved"),
        ("::127.0.0.1", "loopback"),
        ("::169.254.169.254", "link-local"),
        ("::ffff:0:a9fe:a9fe", "link-local"),
        ("192.88.99.1", "reserved"),
    ],
)
def test_internal_addresses_are_refused_when_not_allowed(address: str, reason: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "1.1.1.1"])
def test_global_addresses_are_allowed(address: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) is None


def test_listed_networks_are_allowed_in_every_form_but_multicast_and_unspecified_never() -> None:
    policy = EgressPolicy.of(
        [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("0.0.0.0/0")]
    )
    for allowed in ("127.0.0.1", "::ffff:127.0.0.1", "10.0.0.1", "169.254.169.254"):
        assert policy.refusal(ipaddress.ip_address(allowed)) is None, allowed
    for refused in ("0.0.0.0", "224.0.0.1", "::ffff:0.0.0.0"):
        assert policy.refusal(ipaddress.ip_address(refused)) is not None, refused
    assert policy.refusal(ipaddress.ip_address("::1")) == "loopback"  # IPv6 not listed


def test_the_servers_own_addresses_are_refused_unless_allowed() -> None:
    own = ipaddress.ip_address("93.184.215.14")
    assert EgressPolicy.of([], [own]).refusal(own) == "this server's own address"
    listed = EgressPolicy.of([ipaddress.ip_network("93.184.215.0/24")], [own])
    assert listed.refusal(own) is None


def test_embedded_ipv4_is_found_in_mapped_nat64_6to4_compatible_and_translated_forms() -> None:
    v4 = ipaddress.IPv4Address("169.254.169.254")
    for form in (
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "::169.254.169.254",
        "::ffff:0:169.254.169.254",
    ):
        assert embedded_ipv4(ipaddress.ip_address(form)) == v4, form
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1111")) is None
    for own_kind in ("::", "::1"):  # unspecified and loopback themselves, no IPv4 inside
        assert embedded_ipv4(ipaddress.ip_address(own_kind)) is None
    assert embedded_ipv4(v4) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
    ],
)
def test_numeric_hosts_are_read_as_a_connect_would(host: str, address: str) -> None:
    assert numeric_host(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["localhost", "example.com", "127.0.0.1.nip.io", "0x7g.1"])
def test_names_are_not_numeric_hosts(host: str) -> None:
    assert numeric_host(host) is None


async def test_numeric_hosts_are_refused_without_a_lookup() -> None:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["93.184.215.14"]

    egress = Egress(STRICT, resolver)
    for host in ("2130706433", "0x7f.1", "127.1", "::1", "::ffff:169.254.169.254"):
        with pytest.raises(EgressRefusedError):
            await egress.addresses(host, 80)
    assert asked == []
    assert await egress.addresses("example.com", 80) == ["93.184.215.14"]
    assert asked == ["example.com"]
