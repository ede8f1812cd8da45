"""Events: the write path of the event service (batched, de-duplicated) and alarm clearing.

On PostgreSQL a batch is written with COPY (ids taken from the sequence first, so the rows
can be handed on with them); a batch that meets a row already stored (same gateway, same
``key``: a redelivery, or a batch written again after an ambiguous commit) is written again
with ``INSERT … ON CONFLICT DO NOTHING``, which skips it. SQLite always takes that path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from asyncpg.exceptions import UniqueViolationError
from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    case,
    delete,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import Device, Event
from edgefleet.domain.eventfilter import EventFilter, severities_from
from edgefleet.domain.events import AlarmState, NewEvent, StoredEvent

_COLUMNS = ("id", "at", "type", "device_uuid", "resource", "text", "data", "severity", "key")


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _naive(at: datetime) -> datetime:
    if at.tzinfo is UTC:
        return at.replace(tzinfo=None)
    return at.astimezone(UTC).replace(tzinfo=None)


def _stored(event_id: int, e: NewEvent) -> StoredEvent:
    return StoredEvent(
        event_id,
        e.type.value,
        e.at,
        e.device_uuid,
        e.resource,
        e.text,
        e.data,
        e.severity.value if e.severity else None,
    )


class EventRepo:
    def __init__(self, s: AsyncSession) -> None:
        self.s = s
        self._dialect = s.get_bind().dialect.name

    # --- writing ----------------------------------------------------------------------------

    async def insert(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Store ``events``, skipping any already stored (same gateway and key); the stored
        ones come back with their ids, in the order given."""
        if not events:
            return []
        if self._dialect == "postgresql":
            try:
                async with self.s.begin_nested():
                    return await self._copy(events)
            except (IntegrityError, UniqueViolationError):
                # some were stored before, or the batch repeats a key (a redelivery): insert
                # skipping those. COPY runs on the driver itself, so its own error comes here
                pass
        return await self._insert_skipping(events)

    async def _copy(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        conn = await self.s.connection()
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        # the driver's own calls: SQLAlchemy's result machinery costs more than the rows here
        fetched = await raw.fetch(
            "SELECT nextval('events_id_seq') FROM generate_series(1, $1)", len(events)
        )
        ids = [r[0] for r in fetched]
        records = [
            (
                i,
                _naive(e.at),
                e.type.value,
                e.device_uuid,
                e.resource,
                e.text,
                None if e.data is None else _dumps(e.data),
                e.severity.value if e.severity else None,
                e.key,
            )
            for i, e in zip(ids, events, strict=True)
        ]
        await raw.copy_records_to_table("events", records=records, columns=_COLUMNS)
        return [_stored(i, e) for i, e in zip(ids, events, strict=True)]

    async def _insert_skipping(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        table = cast(Table, Event.__table__)
        make = pg_insert if self._dialect == "postgresql" else sqlite_insert
        stored: list[StoredEvent] = []
        # a batch may repeat a key itself (a redelivery inside one batch): first one wins
        seen: set[str] = set()
        unique: list[NewEvent] = []
        for e in events:
            if e.key not in seen:
                seen.add(e.key)
                unique.append(e)
        for start in range(0, len(unique), 1000):
            chunk = unique[start : start + 1000]
            rows: list[dict[str, Any]] = [
                {
                    "at": e.at,
                    "type": e.type.value,
                    "device_uuid": e.device_uuid,
                    "resource": e.resource,
                    "text": e.text,
                    "data": e.data,
                    "severity": e.severity.value if e.severity else None,
                    "key": e.key,
                }
                for e in chunk
            ]
            stmt = (
                make(table)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(table.c.id, table.c.key)
            )
            result = await self.s.execute(stmt)
            ids = {r.key: r.id for r in result}
            stored.extend(_stored(ids[e.key], e) for e in chunk if e.key in ids)
        return stored

    async def clear_alarms(
        self,
        device_uuids: Sequence[str],
        event_type: str,
        *,
        by: str,
        at: datetime,
        before_id: int | None = None,
    ) -> int:
        """Clear the open alarms of ``event_type`` of these gateways (a gateway that came
        back clears its ``device_offline``); only those older than ``before_id`` if given."""
        return await self._update_alarms(
            Event.device_uuid,
            device_uuids,
            [
                Event.cleared_at.is_(None),
                Event.type == event_type,
                Event.id < before_id if before_id is not None else true(),
            ],
            {"cleared_at": at, "cleared_by": by},
        )

    async def _update_alarms(
        self,
        key: Any,
        keys: Sequence[Any],
        conditions: list[Any],
        values: dict[str, Any],
    ) -> int:
        """Set ``values`` on the alarms whose ``key`` is among ``keys`` (1,000 per statement)
        and that meet ``conditions``; returns how many changed."""
        changed = 0
        for start in range(0, len(keys), 1000):
            result = await self.s.execute(
                update(Event)
                .where(
                    key.in_(list(keys[start : start + 1000])),
                    Event.severity.is_not(None),
                    *conditions,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            changed += cast(int, getattr(result, "rowcount", 0) or 0)
        return changed

    async def delete_older_than(self, cutoff: datetime, limit: int) -> int:
        """Delete up to ``limit`` events older than ``cutoff``, oldest first, keeping open
        alarms (retention; the caller repeats until it gets fewer than ``limit``)."""
        ids = (
            select(Event.id)
            .where(Event.at < cutoff)
            .where(~and_(Event.severity.is_not(None), Event.cleared_at.is_(None)))
            .order_by(Event.id)
            .limit(limit)
        )
        result = await self.s.execute(
            delete(Event)
            .where(Event.id.in_(ids.scalar_subquery()))
            .execution_options(synchronize_session=False)
        )
        return cast(int, getattr(result, "rowcount", 0) or 0)

    # --- reading (the event log, the live stream's tailer) ------------------------------------

    @staticmethod
    def _conditions(f: EventFilter) -> list[ColumnElement[bool]]:
        """``f`` in SQL; the same rules as ``domain.eventfilter.matches``."""
        where: list[ColumnElement[bool]] = []
        if f.devices is not None:
            where.append(Event.device_uuid.in_(sorted(f.devices)))
        if f.group_id is not None:
            members = select(Device.uuid).where(Device.group_id == f.group_id)
            where.append(Event.device_uuid.in_(members.scalar_subquery()))
        if f.types is not None:
            where.append(Event.type.in_(sorted(f.types)))
        if f.resource is not None:
            # substr, not LIKE: SQLite's LIKE ignores case, a prefix here does not
            where.append(func.substr(Event.resource, 1, len(f.resource)) == f.resource)
        if f.severity is not None:
            where.append(Event.severity.in_(severities_from(f.severity)))
        if f.alarm is not None:
            where.append(Event.severity.is_not(None))
            if f.alarm is AlarmState.OPEN:
                where.append(Event.cleared_at.is_(None))
            elif f.alarm is AlarmState.UNACKNOWLEDGED:
                where.extend((Event.cleared_at.is_(None), Event.acked_at.is_(None)))
            elif f.alarm is AlarmState.ACKNOWLEDGED:
                where.extend((Event.cleared_at.is_(None), Event.acked_at.is_not(None)))
            else:
                where.append(Event.cleared_at.is_not(None))
        if f.since is not None:
            where.append(Event.at >= f.since)
        if f.until is not None:
            where.append(Event.at < f.until)
        if f.q is not None:
            where.append(
                or_(
                    Event.text.icontains(f.q, autoescape=True),
                    Event.resource.icontains(f.q, autoescape=True),
                )
            )
        return where

    async def get(self, event_id: int) -> Event | None:
        return await self.s.get(Event, event_id, populate_existing=True)

    async def query(self, f: EventFilter, *, before_id: int | None, limit: int) -> list[Event]:
        """Events passing ``f``, newest first, older than ``before_id`` if given."""
        stmt = select(Event).where(*self._conditions(f)).order_by(Event.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(Event.id < before_id)
        return list(await self.s.scalars(stmt))

    async def replay(
        self, f: EventFilter, *, after_id: int, upto_id: int, limit: int
    ) -> list[Event]:
        """Events passing ``f`` with ``after_id < id <= upto_id``, oldest first."""
        stmt = (
            select(Event)
            .where(Event.id > after_id, Event.id <= upto_id, *self._conditions(f))
            .order_by(Event.id)
            .limit(limit)
        )
        return list(await self.s.scalars(stmt))

    async def tail(self, after_id: int, gaps: Sequence[tuple[int, int]], limit: int) -> list[Event]:
        """Events after ``after_id`` and those inside the ``gaps`` (inclusive id ranges not
        seen yet), oldest first."""
        seen_past = [Event.id > after_id]
        seen_past.extend(Event.id.between(lo, hi) for lo, hi in gaps)
        stmt = select(Event).where(or_(*seen_past)).order_by(Event.id).limit(limit)
        return list(await self.s.scalars(stmt))

    async def newest_ids(self, n: int) -> list[int]:
        """The ids of the newest ``n`` events, newest first."""
        return list(await self.s.scalars(select(Event.id).order_by(Event.id.desc()).limit(n)))

    async def count_by_type(self, since: datetime, until: datetime) -> dict[str, int]:
        rows = await self.s.execute(
            select(Event.type, func.count())
            .where(Event.at >= since, Event.at < until)
            .group_by(Event.type)
        )
        return {t: int(n) for t, n in rows}

    async def open_alarm_counts(self) -> dict[str, tuple[int, int]]:
        """Per severity: open alarms, and how many of those are unacknowledged (the
        condition is the partial index's, so only open alarms are read)."""
        rows = await self.s.execute(
            select(
                Event.severity,
                func.count(),
                func.count(case((Event.acked_at.is_(None), 1))),
            )
            .where(Event.severity.is_not(None), Event.cleared_at.is_(None))
            .group_by(Event.severity)
        )
        return {str(s): (int(n), int(u)) for s, n, u in rows}

    # --- alarms by hand ---------------------------------------------------------------------

    async def acknowledge(self, ids: Sequence[int], *, by: str, at: datetime) -> int:
        """Acknowledge the alarms among ``ids`` not acknowledged yet (the first ack stays)."""
        return await self._update_alarms(
            Event.id, ids, [Event.acked_at.is_(None)], {"acked_at": at, "acked_by": by}
        )

    async def clear(self, ids: Sequence[int], *, by: str, at: datetime) -> int:
        """Clear the open alarms among ``ids``; one not acknowledged is acknowledged too."""
        return await self._update_alarms(
            Event.id,
            ids,
            [Event.cleared_at.is_(None)],
            {
                "cleared_at": at,
                "cleared_by": by,
                "acked_at": func.coalesce(Event.acked_at, at),
                "acked_by": func.coalesce(Event.acked_by, by),
            },
        )
