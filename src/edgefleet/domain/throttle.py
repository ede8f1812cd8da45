"""Password-guessing throttle rules: a few free failures, then delays that double.

A key (one account from one address, or one address over all accounts) has a count of
failures and the time of the latest. Below ``free`` failures an attempt is evaluated at once;
from then on the next attempt waits ``delay(failures)`` after the latest failure: 1 s, 2 s,
4 s, … up to ``ban_time``. Nothing locks an account for everyone: another address has keys
of its own. A key's failures are forgotten once it stayed quiet for ``find_time`` after its
last delay ran out, so a guesser who waits out each delay keeps paying the longest one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

IPV6_PREFIX = 64
"""An IPv6 client is throttled by its /64: one subscriber usually holds a whole /64, so an
address per attempt would otherwise buy fresh keys for free."""

FIRST_DELAY = 1.0
"""Seconds to wait after the first failure past the free ones; each further one doubles it."""


@dataclass(frozen=True)
class ThrottlePolicy:
    free: int
    """Failures evaluated without delay."""
    find_time: float
    """Seconds a key stays remembered after its last delay ran out."""
    ban_time: float
    """The longest delay, in seconds."""

    def delay(self, failures: int) -> float:
        """Seconds the attempt after ``failures`` failures waits after the latest one."""
        if failures < self.free:
            return 0.0
        doublings = min(failures - self.free, 32)  # 2**32 s is past any ban_time
        return min(self.ban_time, FIRST_DELAY * 2.0**doublings)

    def forgotten(self, failures: int, latest: datetime | None, now: datetime) -> bool:
        """Whether a key's failures are old enough to be dropped."""
        if latest is None or failures == 0:
            return True
        quiet_since = latest + timedelta(seconds=self.delay(failures))
        return now >= quiet_since + timedelta(seconds=self.find_time)

    def wait(self, failures: int, latest: datetime | None, now: datetime) -> float:
        """Seconds before the next attempt may be evaluated; 0 means now."""
        if latest is None or failures < self.free:
            return 0.0
        ready = latest + timedelta(seconds=self.delay(failures))
        return max(0.0, (ready - now).total_seconds())


def address_key(address: str) -> str:
    """What a client address is throttled as: an IPv4 address itself, an IPv6 one by its
    /64 (an IPv4-mapped one as its IPv4 address), anything else as given (bounded)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)
