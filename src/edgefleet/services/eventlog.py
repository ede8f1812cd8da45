"""The read side of the event service: the event log's queries and counts, alarms handled by
hand (acknowledge, clear), and live streams (a replay from the database, then the feed).

The write side (ingest, batching, automatic clearing, retention) is services/events.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.db.repos.events import EventRepo
from edgefleet.db.repos.groups import GroupRepo
from edgefleet.db.tables import Event
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.eventfilter import EventFilter, matches
from edgefleet.errors import ConflictError, GroupNotFoundError, NotFoundError
from edgefleet.services.eventfeed import EventFeed

log = logging.getLogger(__name__)

SUMMARY_DEFAULT = timedelta(hours=24)
REPLAY_PAGE = 500


@dataclass(frozen=True)
class EventSummary:
    since: datetime
    until: datetime
    by_type: dict[str, int]
    """Events per type with ``since <= at < until``."""
    open_alarms: dict[str, tuple[int, int]]
    """Per severity, now: open alarms and the unacknowledged among them."""


@dataclass(frozen=True)
class StreamRequest:
    """A live stream's filter, checked, with the group resolved to its gateways."""

    filter: EventFilter
    members: frozenset[str] | None
    after: int | None
    """Replay the stored events after this id first (the client's ``Last-Event-ID``)."""


class EventLog:
    def __init__(self, db: Database, feed: EventFeed, clock: Clock = utcnow) -> None:
        self.db = db
        self.feed = feed
        self.clock = clock

    # --- queries ------------------------------------------------------------------------------

    async def query(self, f: EventFilter, *, before_id: int | None, limit: int) -> list[Event]:
        """Events passing ``f``, newest first; ``before_id`` is the previous page's last id."""
        async with self.db.session() as s:
            await _check_group(s, f)
            return await EventRepo(s).query(f, before_id=before_id, limit=limit)

    async def get(self, event_id: int) -> Event:
        async with self.db.session() as s:
            row = await EventRepo(s).get(event_id)
        if row is None:
            raise NotFoundError(f"event {event_id} not found")
        return row

    async def newest_id(self) -> int:
        """The id of the newest stored event (0 when there is none): where a page that
        renders now starts its live stream (``after``), so no event is lost in between."""
        async with self.db.session() as s:
            ids = await EventRepo(s).newest_ids(1)
        return ids[0] if ids else 0

    async def summary(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> EventSummary:
        """Counts per type in a range (default: the last 24 hours) and open alarms now."""
        end = until or self.clock()
        start = since or end - SUMMARY_DEFAULT
        async with self.db.session() as s:
            repo = EventRepo(s)
            by_type = await repo.count_by_type(start, end)
            open_alarms = await repo.open_alarm_counts()
        return EventSummary(start, end, by_type, open_alarms)

    # --- alarms -------------------------------------------------------------------------------

    async def acknowledge(self, event_id: int, by: str) -> Event:
        """Acknowledge one alarm; one acknowledged before keeps its first acknowledgement."""
        async with self.db.session() as s:
            repo = EventRepo(s)
            await repo.acknowledge([event_id], by=by, at=self.clock())
            return await _alarm(repo, event_id)

    async def clear(self, event_id: int, by: str) -> Event:
        """Clear one alarm (acknowledging it if nobody had); clearing twice changes nothing."""
        async with self.db.session() as s:
            repo = EventRepo(s)
            await repo.clear([event_id], by=by, at=self.clock())
            return await _alarm(repo, event_id)

    async def acknowledge_many(self, ids: Sequence[int], by: str) -> int:
        """Acknowledge the alarms among ``ids``; answers how many changed (ids of unknown
        events, of events that are not alarms, or acknowledged before are left alone)."""
        async with self.db.session() as s:
            return await EventRepo(s).acknowledge(sorted(set(ids)), by=by, at=self.clock())

    async def clear_many(self, ids: Sequence[int], by: str) -> int:
        async with self.db.session() as s:
            return await EventRepo(s).clear(sorted(set(ids)), by=by, at=self.clock())

    # --- live ---------------------------------------------------------------------------------

    async def prepare_stream(self, f: EventFilter, after: int | None) -> StreamRequest:
        """Check a stream's filter before its response starts (an unknown group is a 404)."""
        members: frozenset[str] | None = None
        if f.group_id is not None:
            async with self.db.session() as s:
                await _check_group(s, f)
                members = frozenset(await _group_members(s, f.group_id))
        return StreamRequest(f, members, after)

    async def stream(
        self, req: StreamRequest, keepalive: float
    ) -> AsyncGenerator[list[Event], None]:
        """The events of a live stream in batches: first an empty batch once subscribed, then
        the stored events after ``req.after`` (oldest first), then new ones as they are
        stored; an empty batch after ``keepalive`` quiet seconds. Ends when the stream is too
        slow or the server shuts down. Each event comes once."""
        f, members, after = req.filter, req.members, req.after

        def accept(e: Event) -> bool:
            return (after is None or e.id > after) and matches(f, e, members)

        sub = await self.feed.subscribe(accept)
        try:
            yield []
            if after is not None:
                async for page in self._replay(f, after, sub.position.high):
                    kept = [e for e in page if sub.position.passed(e.id)]
                    if kept:
                        yield kept
                    if sub.ended:
                        break
            while True:
                if not await sub.wait(keepalive):
                    yield []
                    continue
                batch = sub.take()
                if batch:
                    yield batch
                if sub.ended:
                    log.info("event stream ended: %s", sub.ended)
                    return
        finally:
            sub.close()

    async def _replay(self, f: EventFilter, after: int, upto: int) -> AsyncIterator[list[Event]]:
        cursor = after
        while cursor < upto:
            async with self.db.session() as s:
                page = await EventRepo(s).replay(
                    f, after_id=cursor, upto_id=upto, limit=REPLAY_PAGE
                )
            if not page:
                return
            yield page
            if len(page) < REPLAY_PAGE:
                return
            cursor = page[-1].id


async def _check_group(s: AsyncSession, f: EventFilter) -> None:
    if f.group_id is not None and await GroupRepo(s).get(f.group_id) is None:
        raise GroupNotFoundError(f.group_id)


async def _group_members(s: AsyncSession, group_id: int) -> list[str]:
    return await DeviceRepo(s).uuids(DeviceFilter(group_id=group_id))


async def _alarm(repo: EventRepo, event_id: int) -> Event:
    row = await repo.get(event_id)
    if row is None:
        raise NotFoundError(f"event {event_id} not found")
    if row.severity is None:
        raise ConflictError(f"event {event_id} is not an alarm: it has no severity")
    return row
