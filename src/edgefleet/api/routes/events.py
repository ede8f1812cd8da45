"""``/api/v1/events``: the event log, its counts, alarms, and the live stream (SSE)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from edgefleet.api.deps import (
    ContainerDep,
    FleetReader,
    FleetWriter,
    audit_target,
    credential_holds,
)
from edgefleet.api.inputs import Int64
from edgefleet.api.responses import json_bytes, reply
from edgefleet.api.responses.events import Changed, EventList, EventPublic, EventSummaryPublic
from edgefleet.api.responses.service import TEXT
from edgefleet.api.schemas import EventIds
from edgefleet.domain.auth import Permission
from edgefleet.domain.eventfilter import (
    EventFilter,
    parse_device_uuid,
    parse_event_id,
    parse_filter,
    parse_time,
)
from edgefleet.errors import ValidationError
from edgefleet.presenters.events import decode_cursor, encode_cursor, event_public, summary_public
from edgefleet.services.eventlog import EventLog, StreamRequest

router = APIRouter(prefix="/api/v1", tags=["events"])

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
KEEPALIVE_SECONDS = 15.0
RETRY_MS = 3000
"""How long a browser's EventSource waits before it reconnects."""

OPENED = f": connected\nretry: {RETRY_MS}\n\n".encode()


def event_filter(
    device: Annotated[list[str] | None, Query(description="a gateway's uuid; repeatable")] = None,
    group: Annotated[str | None, Query(description="a group id: its gateways now")] = None,
    type: Annotated[list[str] | None, Query(description="an event type; repeatable")] = None,
    resource: Annotated[str | None, Query(description="a prefix of the resource")] = None,
    severity: Annotated[
        str | None, Query(description="warning, major or critical: or above")
    ] = None,
    alarm: Annotated[
        str | None, Query(description="open, unacknowledged, acknowledged or cleared")
    ] = None,
    since: Annotated[str | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[str | None, Query(description="ISO 8601, exclusive")] = None,
    q: Annotated[str | None, Query(description="text in text or resource, any case")] = None,
) -> EventFilter:
    return parse_filter(
        devices=device or (),
        group=group,
        types=type or (),
        resource=resource,
        severity=severity,
        alarm=alarm,
        since=since,
        until=until,
        q=q,
    )


Filter = Annotated[EventFilter, Depends(event_filter)]


async def _page(c: EventLog, f: EventFilter, cursor: str | None, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be between 1 and {MAX_LIMIT}")
    before = decode_cursor(cursor) if cursor else None
    rows = await c.query(f, before_id=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [event_public(r) for r in rows],
        "next": encode_cursor(rows[-1].id) if more and rows else None,
    }


@router.get("/events", name="events.list", response_model=EventList)
async def list_events(
    c: ContainerDep,
    _: FleetReader,
    f: Filter,
    cursor: Annotated[str | None, Query(description="the 'next' of the previous page")] = None,
    limit: int = DEFAULT_LIMIT,
) -> Response:
    """Events newest first; ``next`` is the cursor of the following page (null at the end)."""
    return reply(await _page(c.event_log, f, cursor, limit))


@router.get("/devices/{uuid}/events", name="events.device_list", response_model=EventList)
async def list_device_events(
    c: ContainerDep,
    _: FleetReader,
    uuid: str,
    f: Filter,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Response:
    """One gateway's events (also those of a gateway deleted since), as ``/events``."""
    device = parse_device_uuid(uuid)
    devices = frozenset({device}) & f.devices if f.devices is not None else frozenset({device})
    return reply(await _page(c.event_log, dataclasses.replace(f, devices=devices), cursor, limit))


@router.get("/events/summary", name="events.summary", response_model=EventSummaryPublic)
async def event_summary(
    c: ContainerDep,
    _: FleetReader,
    since: Annotated[str | None, Query(description="default: 24 hours before until")] = None,
    until: Annotated[str | None, Query(description="default: now")] = None,
) -> Response:
    """Events per type in a range, and the alarms open now (what the console's bell shows)."""
    start = parse_time(since, "since") if since else None
    end = parse_time(until, "until") if until else None
    if start is not None and end is not None and start >= end:
        raise ValidationError("since must be before until")
    return reply(summary_public(await c.event_log.summary(start, end)))


@router.get(
    "/events/stream",
    name="events.stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": TEXT},
            "description": "id, event (the type) and data (an Event as JSON) per event",
        }
    },
)
async def event_stream(
    request: Request,
    c: ContainerDep,
    _: FleetReader,
    f: Filter,
    after: Annotated[
        str | None, Query(description="replay the stored events after this id first")
    ] = None,
    last_event_id: Annotated[
        str | None, Header(description="as after; sent by EventSource when it reconnects")
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: ``id``, ``event`` (the type) and ``data`` (the event's JSON) per
    event, a comment every 15 s while quiet. With ``Last-Event-ID`` (or ``after``) the stored
    events after that id come first, then new ones, each once. The stream ends when its
    credential no longer holds (checked again every ``KEEPALIVE_SECONDS``)."""
    start = last_event_id if last_event_id not in (None, "") else after
    resume = parse_event_id(start, "Last-Event-ID / after") if start else None
    req = await c.event_log.prepare_stream(f, resume)

    async def allowed() -> bool:
        return await credential_holds(request, c, Permission.FLEET_READ)

    return StreamingResponse(
        _frames(c.event_log, req, allowed),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _frames(
    log: EventLog, req: StreamRequest, allowed: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    # The id sent is the highest sent so far: an event committed late (out of id order on
    # PostgreSQL) carries the id of the one before it, so a client that resumes from its
    # Last-Event-ID is never sent that later event a second time.
    last = req.after or 0
    opened = False
    checked = time.monotonic()
    async with aclosing(log.stream(req, KEEPALIVE_SECONDS)) as batches:
        async for batch in batches:
            # authenticated once when it opened: a stolen session's stream must not outlive
            # the password change, the logout or the revocation that ended the credential
            if time.monotonic() - checked >= KEEPALIVE_SECONDS:
                if not await allowed():
                    return
                checked = time.monotonic()
            if not batch:
                # the first one says the stream is subscribed: later events will come
                yield b": keep-alive\n\n" if opened else OPENED
                opened = True
                continue
            parts = []
            for e in batch:
                last = max(last, e.id)
                kind = e.type.encode("utf-8", "replace")
                data = json_bytes(event_public(e))
                parts.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (last, kind, data))
            yield b"".join(parts)


@router.get("/events/{id}", name="events.get", response_model=EventPublic)
async def get_event(c: ContainerDep, _: FleetReader, id: Int64) -> Response:
    return reply(event_public(await c.event_log.get(id)))


@router.post("/events/acknowledge", name="events.acknowledge_many", response_model=Changed)
async def acknowledge_events(
    request: Request, c: ContainerDep, who: FleetWriter, body: EventIds
) -> Response:
    """Acknowledge the alarms among ``ids``; answers how many changed."""
    audit_target(request, "event", ",".join(map(str, body.ids))[:64])
    return reply({"changed": await c.event_log.acknowledge_many(body.ids, who.email)})


@router.post("/events/clear", name="events.clear_many", response_model=Changed)
async def clear_events(
    request: Request, c: ContainerDep, who: FleetWriter, body: EventIds
) -> Response:
    """Clear the open alarms among ``ids``; answers how many changed."""
    audit_target(request, "event", ",".join(map(str, body.ids))[:64])
    return reply({"changed": await c.event_log.clear_many(body.ids, who.email)})


@router.post("/events/{id}/acknowledge", name="events.acknowledge", response_model=EventPublic)
async def acknowledge_event(
    request: Request, c: ContainerDep, who: FleetWriter, id: Int64
) -> Response:
    """Acknowledge an alarm (409 if the event is not one); a second time keeps the first."""
    audit_target(request, "event", id)
    return reply(event_public(await c.event_log.acknowledge(id, who.email)))


@router.post("/events/{id}/clear", name="events.clear", response_model=EventPublic)
async def clear_event(request: Request, c: ContainerDep, who: FleetWriter, id: Int64) -> Response:
    """Clear an alarm, acknowledging it too if nobody had (409 if the event is not one)."""
    audit_target(request, "event", id)
    return reply(event_public(await c.event_log.clear(id, who.email)))
