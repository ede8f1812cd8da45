"""Per-gateway limits on what the server takes from the broker: how many messages a second
it handles from one gateway, and how many warnings about one gateway reach the log.

Both are keyed by the gateway's uuid as the topic names it; the broker's ACL binds that to the
gateway's own identity, so one gateway cannot spend another's allowance, and there are never
more keys than registered gateways.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class GatewayRate:
    """A token bucket per gateway: on average ``rate`` messages a second, ``burst`` at once
    (what a gateway saved up while it, or the server, was away). ``rate`` 0: no limit."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """uuid → (tokens, when counted)."""
        self._next_prune = 0.0

    def allow(self, device_uuid: str) -> bool:
        """Take one token for a message of ``device_uuid``; False when it has none left."""
        if not self.rate:
            return True
        now = self.clock()
        held = self._buckets.get(device_uuid)
        tokens = (
            float(self.burst)
            if held is None
            else min(float(self.burst), held[0] + (now - held[1]) * self.rate)
        )
        allowed = tokens >= 1
        self._buckets[device_uuid] = (tokens - 1 if allowed else tokens, now)
        if now >= self._next_prune:
            self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        """Forget the gateways whose bucket has refilled: they start full anyway."""
        refill = self.burst / self.rate
        self._buckets = {u: b for u, b in self._buckets.items() if now - b[1] < refill}
        self._next_prune = now + max(refill, 60.0)

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class _Window:
    logged: int = 0
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class GatewayLog:
    """Warnings about one gateway: the first ``first`` of a ``window`` (seconds, from the
    first one) reach ``log``; the rest are counted and summed up in one line when the window
    closes. A gateway sending junk nonstop costs ``first + 1`` lines a window, not one a
    message. Needs a running event loop."""

    def __init__(self, log: logging.Logger, *, first: int = 5, window: float = 60.0) -> None:
        self.log = log
        self.first = first
        self.window = window
        self._windows: dict[str, _Window] = {}

    def warning(self, device_uuid: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        self._emit(logging.WARNING, device_uuid, msg, args, exc_info)

    def error(self, device_uuid: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        self._emit(logging.ERROR, device_uuid, msg, args, exc_info)

    def _emit(
        self, level: int, device_uuid: str, msg: str, args: tuple[Any, ...], exc_info: bool
    ) -> None:
        w = self._windows.get(device_uuid)
        if w is None:
            w = self._windows[device_uuid] = _Window()
            w.timer = asyncio.get_running_loop().call_later(self.window, self._close, device_uuid)
        if w.logged < self.first:
            w.logged += 1
            self.log.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
        else:
            w.suppressed += 1

    def _close(self, device_uuid: str) -> None:
        w = self._windows.pop(device_uuid, None)
        if w is not None and w.suppressed:
            self.log.warning(
                "%d more warnings about gateway %s in the last %g s were not logged",
                w.suppressed,
                device_uuid,
                self.window,
            )

    def close(self) -> None:
        """Sum up every open window now (shutdown)."""
        for device_uuid, w in list(self._windows.items()):
            if w.timer is not None:
                w.timer.cancel()
            self._close(device_uuid)
