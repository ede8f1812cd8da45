"""The live event stream's engine: one tailer per process reads new events from the database
and hands each to every stream connected to this process.

Reading the table, not only what this process stores, lets any server instance stream the
events another instance stored. The tailer runs while a stream is connected; it polls every
``poll_seconds`` and at once when this process stores a batch (an ``EventService`` listener).

Ids and commit order: on PostgreSQL concurrent writers take ids from one sequence and commit
in any order, so an id below the highest one seen may still appear. ``Watermark`` keeps such
holes as *gaps* for ``grace`` seconds, asking for them at each poll, then gives them up (an id
that was never committed: a batch rolled back, a duplicate skipped). The tailer hands each
event out once, so a stream never gets one twice.

A stream's queue is bounded: a client that does not keep up is ended (it reconnects with
``Last-Event-ID`` and is replayed what it missed from the database) rather than holding the
tailer or the memory of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import Gauge

from edgefleet.db.engine import Database
from edgefleet.db.repos.events import EventRepo
from edgefleet.db.tables import Event
from edgefleet.domain.events import StoredEvent
from edgefleet.errors import StorageError
from edgefleet.services.events import EventService
from edgefleet.workers import Worker, Workers

log = logging.getLogger(__name__)

STREAMS = Gauge("edgefleet_event_streams", "Live event streams connected to this process")

GRACE_SECONDS = 5.0
"""How long an id below the highest seen is waited for."""
POLL_SECONDS = 1.0
BATCH = 1000
"""Events read per query; a full batch is followed by another query at once."""
MAX_GAPS = 256
"""Gap ranges kept at most (the lowest are given up first)."""
QUEUE_LIMIT = 5000
"""Events waiting for one stream before it is ended as too slow."""
START_WINDOW = 5000
"""At start, holes among this many newest ids are taken as gaps."""


@dataclass(frozen=True)
class Position:
    """What the tailer had handed out at one moment: every id up to ``high`` except those
    in ``gaps`` (inclusive ranges)."""

    high: int
    gaps: tuple[tuple[int, int], ...] = ()

    def passed(self, event_id: int) -> bool:
        return event_id <= self.high and not any(lo <= event_id <= hi for lo, hi in self.gaps)


@dataclass
class _Gap:
    lo: int
    hi: int
    deadline: float


class Watermark:
    """Which event ids a tailer has seen, when ids may become visible out of order.

    Pure bookkeeping: the caller queries ``id > high`` and the ``gaps``, then reports the
    ids it got with ``observe`` and lets old gaps go with ``expire``.
    """

    def __init__(self, high: int = 0, *, grace: float = GRACE_SECONDS, max_gaps: int = MAX_GAPS):
        self.high = high
        self.grace = grace
        self.max_gaps = max_gaps
        self._gaps: list[_Gap] = []  # sorted by lo, disjoint, all below high

    @classmethod
    def starting_at(
        cls,
        newest_ids: Iterable[int],
        now: float,
        *,
        grace: float = GRACE_SECONDS,
        max_gaps: int = MAX_GAPS,
    ) -> Watermark:
        """Start after the newest stored ids; the holes among them may still be filled by
        transactions in flight, so they start as gaps."""
        mark = cls(grace=grace, max_gaps=max_gaps)
        ids = sorted(set(newest_ids))
        if ids:
            mark.high = ids[0]
            mark.observe(ids[1:], now)
        return mark

    @property
    def gaps(self) -> list[tuple[int, int]]:
        return [(g.lo, g.hi) for g in self._gaps]

    def position(self) -> Position:
        return Position(self.high, tuple(self.gaps))

    def observe(self, ids: Iterable[int], now: float) -> list[int]:
        """Take the ids a poll returned; answers those not seen before, ascending."""
        fresh: list[int] = []
        for i in sorted(set(ids)):
            if i > self.high:
                if i > self.high + 1:
                    self._gaps.append(_Gap(self.high + 1, i - 1, now + self.grace))
                self.high = i
                fresh.append(i)
            elif self._fill(i):
                fresh.append(i)
        if len(self._gaps) > self.max_gaps:
            del self._gaps[: len(self._gaps) - self.max_gaps]
        return fresh

    def _fill(self, i: int) -> bool:
        for n, g in enumerate(self._gaps):
            if g.lo > i:
                return False
            if i <= g.hi:
                parts = [
                    _Gap(lo, hi, g.deadline)
                    for lo, hi in ((g.lo, i - 1), (i + 1, g.hi))
                    if lo <= hi
                ]
                self._gaps[n : n + 1] = parts
                return True
        return False

    def expire(self, now: float) -> int:
        """Give up the gaps waited for long enough; answers how many ids were given up."""
        kept = [g for g in self._gaps if g.deadline > now]
        given_up = sum(g.hi - g.lo + 1 for g in self._gaps if g.deadline <= now)
        self._gaps = kept
        return given_up


Accept = Callable[[Event], bool]


class Subscription:
    """One stream's queue of events from the tailer."""

    def __init__(self, feed: EventFeed, accept: Accept, position: Position, limit: int) -> None:
        self._feed = feed
        self._accept = accept
        self._limit = limit
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()
        self.position = position
        """What the tailer had handed out when this subscription began: the rest comes
        through ``take``, so a replay from the database stops there."""
        self.ended: str | None = None
        """Why no more events will come: ``too slow`` or ``shut down``."""

    def _offer(self, events: Sequence[Event]) -> None:
        if self.ended:
            return
        taken = [e for e in events if self._accept(e)]
        if not taken:
            return
        if len(self._items) + len(taken) > self._limit:
            self._items.clear()
            self._end("too slow")
            return
        self._items.extend(taken)
        self._ready.set()

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self._ready.set()

    async def wait(self, seconds: float) -> bool:
        """Wait until events are queued or the subscription ends; False after ``seconds``."""
        if not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), seconds)
        return self._ready.is_set()

    def take(self) -> list[Event]:
        """The events queued, oldest first."""
        items = list(self._items)
        self._items.clear()
        if self.ended is None:
            self._ready.clear()
        return items

    def close(self) -> None:
        self._feed._remove(self)


class EventFeed:
    """The tailer of one process and the streams it feeds."""

    def __init__(
        self,
        db: Database,
        events: EventService | None = None,
        *,
        poll_seconds: float = POLL_SECONDS,
        grace: float = GRACE_SECONDS,
        queue_limit: int = QUEUE_LIMIT,
        workers: Workers | None = None,
    ) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.grace = grace
        self.queue_limit = queue_limit
        self._subs: set[Subscription] = set()
        self._ending = False
        """Set once the server is stopping: new streams end at once."""
        self._mark: Watermark | None = None
        self.workers = workers if workers is not None else Workers()
        self._worker: Worker | None = None
        """The tailer, while it runs (a worker of ``workers``, named ``event-feed``)."""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        if events is not None:
            events.add_listener(self._stored)

    def _stored(self, stored: list[StoredEvent]) -> None:
        if stored:
            self._wake.set()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def running(self) -> bool:
        """Whether the tailer runs (only while a stream is connected)."""
        return self._worker is not None and not self._worker.done()

    async def subscribe(self, accept: Accept) -> Subscription:
        """Events stored from now on that ``accept`` takes; starts the tailer if it is not
        running (``StorageError`` if the database does not answer)."""
        async with self._lock:
            if self._mark is None or self._worker is None or self._worker.done():
                await self._start()
            assert self._mark is not None
            sub = Subscription(self, accept, self._mark.position(), self.queue_limit)
            if self._ending:  # the server is stopping: this stream ends as it starts
                sub._end("shut down")
                return sub
            self._subs.add(sub)
            STREAMS.inc()
            return sub

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            STREAMS.dec()

    async def _start(self) -> None:
        async with self.db.session() as s:
            newest = await EventRepo(s).newest_ids(START_WINDOW)
        now = asyncio.get_running_loop().time()
        self._mark = Watermark.starting_at(newest, now, grace=self.grace)
        self._worker = self.workers.start("event-feed", self._run, forever=False, replace=True)

    async def _run(self) -> None:
        """Poll while a stream is connected. An error other than an outage ends the run and
        the supervisor starts it again (after a backoff) where it was: the streams stay."""
        backoff = self.poll_seconds
        while self._subs:
            self._wake.clear()
            try:
                await self._poll()
                backoff = self.poll_seconds
            except StorageError as exc:
                log.warning("event feed: %s; retrying", exc.message)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            if not self._subs:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
        # no await from the last look at the subscribers to here: a stream that subscribes
        # after this starts a new tailer from the database's state then
        self._mark = None
        self._worker = None

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            mark = self._mark
            assert mark is not None
            async with self.db.session() as s:
                rows = await EventRepo(s).tail(mark.high, mark.gaps, BATCH)
            now = loop.time()
            fresh = set(mark.observe((r.id for r in rows), now))
            given_up = mark.expire(now)
            if given_up:
                log.debug("event feed: %d ids never appeared", given_up)
            out = [r for r in rows if r.id in fresh]
            if out:
                for sub in list(self._subs):
                    sub._offer(out)
            if len(rows) < BATCH:
                return

    def end_streams(self) -> None:
        """End every stream now; their responses finish. Not a coroutine, so a server can
        call it (with ``loop.call_soon_threadsafe``) as soon as it is told to stop: uvicorn
        waits for open responses to finish before it runs the app's shutdown."""
        self._ending = True  # a stream that subscribes from now on ends at once
        for sub in list(self._subs):
            sub._end("shut down")
            self._remove(sub)

    async def close(self) -> None:
        """End every stream and stop the tailer (server shutdown)."""
        self.end_streams()
        worker = self._worker
        if worker is not None:
            await worker.stop()
            if self._worker is worker:
                self._worker = None
                self._mark = None
        self._ending = False  # a restarted server takes streams again
