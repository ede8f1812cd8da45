"""The console's event log (``/console/events``): gateway events and alarms, newest first,
filtered as ``GET /api/v1/events`` is (a gateway by uuid or by name), paged by cursor; open
alarms are acknowledged and cleared through ``/api/v1/events/...`` from the page."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.bootstrap import Container
from edgefleet.db.tables import Event
from edgefleet.domain.auth import Permission
from edgefleet.domain.eventfilter import MAX_VALUES, parse_filter
from edgefleet.domain.events import AlarmState, EventType, Severity
from edgefleet.errors import EdgefleetError, ValidationError
from edgefleet.presenters.events import decode_cursor, encode_cursor
from edgefleet.web.admin.filters import first_values, link
from edgefleet.web.i18n import gettext
from edgefleet.web.views import PAGE_SIZE, fragment_viewer, iso, page, render, when

router = APIRouter(prefix="/console", include_in_schema=False)

EVENT_PARAMS = ("device", "group", "type", "resource", "severity", "alarm", "since", "until", "q")
"""The query parameters of ``GET /api/v1/events`` the events page honours."""


@dataclass(frozen=True)
class EventRow:
    id: int
    at: str
    at_iso: str
    type: str
    device_uuid: str | None
    device_name: str | None
    """The gateway's name; None when the gateway is gone (its events stay)."""
    resource: str
    text: str
    severity: str | None
    state: str
    """``unacknowledged``, ``acknowledged`` or ``cleared`` for an alarm; empty otherwise."""
    acked_by: str
    acked_at: str
    cleared_by: str
    cleared_at: str

    @property
    def is_open(self) -> bool:
        return self.state in (AlarmState.UNACKNOWLEDGED, AlarmState.ACKNOWLEDGED)


def event_row(e: Event, names: dict[str, str]) -> EventRow:
    state = ""
    if e.severity is not None:
        if e.cleared_at is not None:
            state = AlarmState.CLEARED.value
        elif e.acked_at is not None:
            state = AlarmState.ACKNOWLEDGED.value
        else:
            state = AlarmState.UNACKNOWLEDGED.value
    return EventRow(
        id=e.id,
        at=when(e.at),
        at_iso=iso(e.at),
        type=e.type,
        device_uuid=e.device_uuid,
        device_name=names.get(e.device_uuid) if e.device_uuid else None,
        resource=e.resource,
        text=e.text,
        severity=e.severity,
        state=state,
        acked_by=e.acked_by or "",
        acked_at=when(e.acked_at),
        cleared_by=e.cleared_by or "",
        cleared_at=when(e.cleared_at),
    )


async def device_names(c: Container, uuids: set[str]) -> dict[str, str]:
    """Names of the gateways among ``uuids`` that still exist."""
    found = await c.fleet.display_names(sorted(uuids))
    return {uuid: name or uuid for uuid, name in found.items()}


async def gateways_named(c: Container, values: list[str]) -> list[str]:
    """The ``device`` values of the events filter as uuids: each is a uuid or (part of) a
    gateway's name."""
    out: list[str] = []
    for value in (v.strip() for v in values):
        if not value:
            continue
        try:
            out.append(str(uuidlib.UUID(value)))
            continue
        except ValueError:
            pass
        found = await c.fleet.uuids_named(value, MAX_VALUES)
        if not found:
            raise ValidationError(gettext("No gateway is named %(name)s.") % {"name": value})
        if len(found) > MAX_VALUES:
            raise ValidationError(
                gettext("More than %(n)s gateways have %(name)s in their name: be more precise.")
                % {"n": MAX_VALUES, "name": value}
            )
        out.extend(found)
    return out


@router.get("/events")
async def events_page(request: Request, c: ContainerDep) -> Response:
    return await page(
        request,
        c,
        "events/index.html",
        Permission.FLEET_READ,
        f=first_values(request, EVENT_PARAMS),
        query=request.url.query,
        types=[t.value for t in EventType],
        severities=[s.value for s in Severity],
        alarm_states=[a.value for a in AlarmState],
    )


@router.get("/fragments/events")
async def events_fragment(request: Request, c: ContainerDep, cursor: str = "") -> Response:
    viewer = await fragment_viewer(request, c, Permission.FLEET_READ)
    if viewer is None:
        return Response(status_code=401)
    qp = request.query_params
    error = ""
    rows: list[EventRow] = []
    older = ""
    try:
        f = parse_filter(
            devices=await gateways_named(c, qp.getlist("device")),
            group=qp.get("group"),
            types=qp.getlist("type"),
            resource=qp.get("resource"),
            severity=qp.get("severity"),
            alarm=qp.get("alarm"),
            since=qp.get("since"),
            until=qp.get("until"),
            q=qp.get("q"),
        )
        found = await c.event_log.query(
            f, before_id=decode_cursor(cursor) if cursor else None, limit=PAGE_SIZE + 1
        )
        names = await device_names(c, {e.device_uuid for e in found if e.device_uuid})
        rows = [event_row(e, names) for e in found[:PAGE_SIZE]]
        if len(found) > PAGE_SIZE and rows:
            pairs = [(k, v) for k, v in qp.multi_items() if k in EVENT_PARAMS]
            older = link("/console/events", [*pairs, ("cursor", encode_cursor(rows[-1].id))])
    except EdgefleetError as exc:
        error = exc.message
    newest = ""
    if cursor:
        newest = link("/console/events", [(k, v) for k, v in qp.multi_items() if k != "cursor"])
    filtered = any(qp.get(name) for name in EVENT_PARAMS)
    return render(
        request,
        "events/rows.html",
        viewer,
        rows=rows,
        error=error,
        older=older,
        newest=newest,
        filtered=filtered,
        selectable=viewer.can_write and any(r.is_open for r in rows),
    )
