"""Console pages of single gateways, the map, and files (see views.py for the design)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.db.repos.devices import DeviceFilter
from edgefleet.domain.auth import Permission
from edgefleet.domain.eventfilter import EventFilter
from edgefleet.errors import DeviceNotFoundError
from edgefleet.web.views import page, render, viewer_of

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


@router.get("/devices/{uuid}")
async def device_page(request: Request, c: ContainerDep, uuid: str) -> Response:
    viewer = await viewer_of(request, c)
    if (
        viewer is not None
        and not viewer.principal.must_change_password
        and viewer.principal.can(Permission.FLEET_READ)
    ):
        try:
            view = await c.fleet.get_device(uuid)
        except DeviceNotFoundError:
            return render(request, "devices/missing.html", viewer, status=404, uuid=uuid)
        group = None
        if view.device.group_id is not None:
            group = (await c.fleet.get_group(view.device.group_id)).group
        properties = sorted((view.device.properties or {}).items())
        return render(
            request,
            "devices/detail.html",
            viewer,
            view=view,
            d=view.device,
            group=group,
            gps=_gps(view.device.properties),
            properties=[(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in properties],
        )
    return await page(
        request, c, "devices/detail.html", Permission.FLEET_READ
    )  # login / not allowed


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


# --- map --------------------------------------------------------------------------------------


@router.get("/map")
async def map_page(request: Request, c: ContainerDep) -> Response:
    return await page(request, c, "devices/map.html", Permission.FLEET_READ)


@router.get("/fragments/map")
async def map_fragment(request: Request, c: ContainerDep) -> Response:
    """Gateways by their reported GPS on an equirectangular plot: no map tiles, since
    consoles (and tests) often run without internet."""
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
        lat, lng = where
        points.append(
            {
                "uuid": v.device.uuid,
                "name": v.device.display_name or v.device.uuid,
                "status": v.device.connection_status,
                "lat": lat,
                "lng": lng,
                "x": round((lng + 180) / 360 * 1000, 1),
                "y": round((90 - lat) / 180 * 500, 1),
            }
        )
    return render(
        request,
        "devices/map_points.html",
        viewer,
        points=points,
        unplaced=unplaced,
        beyond=max(0, result.total - len(result.items)),
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
