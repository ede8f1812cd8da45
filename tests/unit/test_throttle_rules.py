"""The password-guessing throttle's rules (domain/throttle.py), without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgefleet.domain.throttle import ThrottlePolicy, address_key

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POLICY = ThrottlePolicy(free=5, find_time=600, ban_time=600)


def test_free_failures_then_delays_that_double_up_to_ban_time() -> None:
    assert [POLICY.delay(n) for n in range(5)] == [0, 0, 0, 0, 0]
    assert [POLICY.delay(n) for n in range(5, 16)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600,
    ]  # fmt: skip
    assert POLICY.delay(10_000) == 600  # no overflow however long the guessing went on


def test_wait_runs_from_the_latest_failure() -> None:
    assert POLICY.wait(4, T0, T0) == 0
    assert POLICY.wait(5, T0, T0) == 1
    assert POLICY.wait(7, T0, T0 + timedelta(seconds=1)) == 3
    assert POLICY.wait(7, T0, T0 + timedelta(seconds=5)) == 0
    assert POLICY.wait(0, None, T0) == 0


def test_failures_are_forgotten_find_time_after_the_last_delay() -> None:
    assert not POLICY.forgotten(3, T0, T0 + timedelta(seconds=599))
    assert POLICY.forgotten(3, T0, T0 + timedelta(seconds=600))
    # a guesser waiting out the longest delay is still remembered when it comes back
    assert not POLICY.forgotten(20, T0, T0 + timedelta(seconds=600 + 599))
    assert POLICY.forgotten(20, T0, T0 + timedelta(seconds=600 + 600))
    assert POLICY.forgotten(0, None, T0)


def test_addresses_are_throttled_as_ipv4_or_by_their_ipv6_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:7:1::1") == address_key("2001:db8:7:1:ffff::9")
    assert address_key("2001:db8:7:1::1") == "2001:db8:7:1::/64"
    assert address_key("2001:db8:7:2::1") != address_key("2001:db8:7:1::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an address") == "not an address"
