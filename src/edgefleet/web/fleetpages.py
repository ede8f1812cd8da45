"""Console pages of single gateways, the map, and files (see views.py for the design)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from edgefleet.api.deps import ContainerDep
from edgefleet.bootstrap import Container
from edgefleet.domain.auth import Permission
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.eventfilter import EventFilter
from edgefleet.errors import DeviceNotFoundError
from edgefleet.web.views import page, page_for, render, session_viewer, viewer_of

router = APIRouter(prefix="/console", include_in_schema=False)

MAP_LIMIT = 5000
"""Gateways drawn on the map at most (the rest are counted)."""


def _gps(properties: dict[str, Any] | None) -> tuple[float, float] | None:
    gps = (properties or {}).get("gps")
    if not isinstance(gps, dict):
        return None
    lat, lng = gps.get("lat"), gps.get("lng")
    if not isinstance(lat, int | float) or not isinstance(lng, int | float):
        return None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        return None
    return float(lat), float(lng)


# --- one gateway ------------------------------------------------------------------------------


async def device_context(c: Container, uuid: str) -> dict[str, Any] | None:
    """What the gateway page and its live summary show; None once the gateway is gone."""
    try:
        view = await c.fleet.get_device(uuid)
    except DeviceNotFoundError:
        return None
    group = None
    if view.device.group_id is not None:
        names = await c.fleet.group_names({view.device.group_id})
        if view.device.group_id in names:
            group = {"id": view.device.group_id, "name": names[view.device.group_id]}
    properties = sorted((view.device.properties or {}).items())
    return {
        "view": view,
        "d": view.device,
        "group": group,
        "gps": _gps(view.device.properties),
        "properties": [
            (k, json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)
            for k, v in properties
        ],
    }


@router.get("/devices/{uuid}")
async def device_page(request: Request, c: ContainerDep, uuid: str) -> Response:
    # page_for sends a one-time password away
    viewer = await session_viewer(request, c, for_page=True)
    if (
        viewer is None
        or viewer.principal.must_change_password
        or not viewer.principal.can(Permission.FLEET_READ)
    ):
        return await page_for(request, c, viewer, "devices/detail.html", Permission.FLEET_READ)
    context = await device_context(c, uuid)
    if context is None:
        return render(request, "devices/missing.html", viewer, status=404, uuid=uuid)
    return render(request, "devices/detail.html", viewer, **context)


@router.get("/fragments/devices/{uuid}")
async def device_summary(request: Request, c: ContainerDep, uuid: str) -> Response:
    """The gateway's identity and state, reloaded on each live event: its state follows the
    gateway without a reload of the page."""
    viewer = await viewer_of(request, c)
    if viewer is None or not viewer.principal.can(Permission.FLEET_READ):
        return Response(status_code=401)
    context = await device_context(c, uuid)
    if context is None:
        return render(request, "devices/gone.html", viewer, uuid=uuid)
    return render(request, "devices/summary.html", viewer, **context)


@router.get("/fragments/devices/{uuid}/events")
async def device_events(
    request: Request, c: ContainerDep, uuid: str, jobs: bool = False
) -> Response:
    viewer = await viewer_of(request, c)
    if viewer is None or not viewer.principal.can(Permission.FLEET_READ):
        return Response(status_code=401)
    f = EventFilter(devices=frozenset({uuid}), types=frozenset({"job_update"}) if jobs else None)
    events = await c.event_log.query(f, before_id=None, limit=50)
    return render(request, "devices/events.html", viewer, events=events, uuid=uuid, jobs=jobs)


# --- map ------------------------------------------------------------------------------------------


@router.get("/map")
async def map_page(request: Request, c: ContainerDep) -> Response:
    console = c.settings.console
    return await page(
        request,
        c,
        "devices/map.html",
        Permission.FLEET_READ,
        tiles=console.map_tiles_url,
        attribution=console.map_tiles_attribution,
        max_zoom=console.map_tiles_max_zoom,
    )


@router.get("/fragments/map-points")
async def map_points(request: Request, c: ContainerDep) -> Response:
    """The gateways with a reported GPS position, as JSON for static/map.js (at most
    ``MAP_LIMIT``; the others are counted)."""
    viewer = await viewer_of(request, c)
    if viewer is None or not viewer.principal.can(Permission.FLEET_READ):
        return Response(status_code=401)
    result = await c.fleet.list_devices(DeviceFilter(), offset=0, limit=MAP_LIMIT)
    points = []
    unplaced = 0
    for v in result.items:
        where = _gps(v.device.properties)
        if where is None:
            unplaced += 1
            continue
        points.append(
            {
                "uuid": v.device.uuid,
                "name": v.device.display_name or v.device.uuid,
                "status": v.device.connection_status,
                "model": v.device.model_name,
                "lat": where[0],
                "lng": where[1],
            }
        )
    return JSONResponse(
        {
            "points": points,
            "unplaced": unplaced,
            "beyond": max(0, result.total - len(result.items)),
        }
    )


# --- files ------------------------------------------------------------------------------------


@router.get("/files")
async def files_page(request: Request, c: ContainerDep) -> Response:
    return await page(
        request,
        c,
        "files/index.html",
        Permission.FLEET_READ,
        max_mib=c.settings.storage.max_file_bytes // (1024 * 1024),
    )


@router.get("/fragments/firmware")
async def firmware_fragment(request: Request, c: ContainerDep) -> Response:
    viewer = await viewer_of(request, c)
    if viewer is None or not viewer.principal.can(Permission.FLEET_READ):
        return Response(status_code=401)
    total, rows = await c.firmware.list_firmware(offset=0, limit=200)
    return render(request, "files/firmware.html", viewer, rows=rows, total=total)


@router.get("/fragments/files")
async def files_fragment(request: Request, c: ContainerDep) -> Response:
    viewer = await viewer_of(request, c)
    if viewer is None or not viewer.principal.can(Permission.FLEET_READ):
        return Response(status_code=401)
    return render(request, "files/list.html", viewer, rows=await c.files.recent(100))
