"""The login throttle's in-process side: what keeps a burst of attempts off the database.

The rules are domain/throttle.py's and the counts are rows in the database (every server
instance sees them), decided under a lock per key there. Without this, each of 200
concurrent attempts from one address took a connection of the pool and waited in it for
that lock: the pool ran dry and every other request waited with them. Here, attempts on the
same key wait for each other in the process (one of them at a time asks the database), and
a key known to be waiting until some time is refused from memory until then: a delay only
ever grows (more failures) or runs out, nothing shortens it, so the memory cannot be wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime

KNOWN_MAX = 10_000
"""Waiting keys remembered at most (past that the expired go, then all: the database knows)."""


class ThrottleGate:
    def __init__(self, known_max: int = KNOWN_MAX) -> None:
        self.known_max = known_max
        self._ready: dict[str, datetime] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def wait(self, keys: Iterable[str], now: datetime) -> float:
        """Seconds the longest known delay of ``keys`` still runs; 0 when none is known."""
        wait = 0.0
        for key in keys:
            ready = self._ready.get(key)
            if ready is not None:
                if ready <= now:
                    del self._ready[key]
                else:
                    wait = max(wait, (ready - now).total_seconds())
        return wait

    def remember(self, key: str, ready: datetime) -> None:
        """``key``'s attempts are refused until ``ready`` (the database said so)."""
        if len(self._ready) >= self.known_max:
            self._ready = {k: r for k, r in self._ready.items() if r > ready}
            if len(self._ready) >= self.known_max:
                self._ready.clear()
        self._ready[key] = ready

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the process's lock of each key (taken in sorted order: no deadlock)."""
        registered: list[str] = []
        acquired: list[asyncio.Lock] = []
        try:
            for key in sorted(set(keys)):
                lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
                self._locks[key] = (lock, users + 1)
                registered.append(key)
                await lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in reversed(acquired):
                lock.release()
            for key in registered:
                lock, users = self._locks[key]
                if users <= 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
