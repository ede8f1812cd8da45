"""Password hashing and checking off the event loop, on a few threads of their own.

argon2id (pwdlib) costs about 0.2 s of CPU and 64 MiB per call, by design. Run on the event
loop it stalls every request; run on asyncio's default executor (cores + 4 threads, shared
with file and S3 work) a login flood takes every core. Here a small pool of its own (half the
cores by default) does it, at a lower scheduling priority where the system allows, and a
bounded number of calls may wait for it: past that, a call is refused at once with
``BusyError`` (503, retry shortly) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from prometheus_client import Counter
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from edgefleet.errors import BusyError

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_PER_WORKER = 16
"""Calls that may wait per worker thread (about 16 times 0.2 s = 3 s of waiting at most)."""
MAX_AUTO_WORKERS = 4
"""With the default sizing, at most this many threads (and 4 times 64 MiB of argon2 memory)."""
WORKER_NICENESS = 10
"""How much lower than the event loop the hashing threads run (Linux: niceness per thread)."""

BUSY_MESSAGE = "too many password checks in progress; retry in a moment"

VERIFICATIONS = Counter(
    "edgefleet_password_verifications_total",
    "Passwords checked against a stored hash (logins and password changes), by result",
    ["result"],
)
REFUSED = Counter(
    "edgefleet_password_checks_refused_total",
    "Password hashes or checks refused because too many were waiting already",
)


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_AUTO_WORKERS, (cores or 1) // 2))


def _lower_priority() -> None:
    # Linux keeps a niceness per thread, and argon2's own lane threads inherit it: hashing
    # then uses idle CPU first and the event loop thread keeps answering.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)


class PasswordHasher:
    """``hash`` and ``verify`` on a bounded pool; ``BusyError`` when too many wait."""

    def __init__(self, workers: int = 0, queue: int | None = None) -> None:
        self.workers = workers or default_workers()
        self.capacity = self.workers + (self.workers * QUEUE_PER_WORKER if queue is None else queue)
        self._hasher = PasswordHash((Argon2Hasher(),))
        self._pool = ThreadPoolExecutor(
            max_workers=self.workers,
            thread_name_prefix="password-hash",
            initializer=_lower_priority,
        )
        # a service dropped without close() (tests build many) must not keep idle threads
        self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False)
        self._pending = 0
        self._lock = threading.Lock()

    def hash_now(self, password: str) -> str:
        """On the caller's thread: for start-up only, never on the event loop's hot path."""
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password: str, hashed: str) -> bool:
        ok = await self._run(self._hasher.verify, password, hashed)
        VERIFICATIONS.labels("match" if ok else "mismatch").inc()
        return ok

    def ensure_room(self) -> None:
        """``BusyError`` now if a call would be refused: lets a caller skip the work it does
        before hashing (a login's database round trips) during a flood."""
        with self._lock:
            full = self._pending >= self.capacity
        if full:
            REFUSED.inc()
            raise BusyError(BUSY_MESSAGE)

    def close(self) -> None:
        self._finalizer()

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        with self._lock:
            if self._pending >= self.capacity:
                REFUSED.inc()
                raise BusyError(BUSY_MESSAGE)
            self._pending += 1
        try:
            future: Future[T] = self._pool.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        # released when the thread is done, not when a cancelled caller stops waiting
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: object = None) -> None:
        with self._lock:
            self._pending -= 1
