"""Console pages of groups (``/console/groups``), as the original's group list: online and
offline gateways, active and completed task records, and per group Group Reboot, Restore
configuration and Group Upgrade under the policies No retry / Retry times / Schedule; a page
per group with its gateways (added by uuid or by fleet query, removed one by one) and its
tasks. Reboot and restore are group tasks (``POST /api/v1/groupTasks``); an upgrade is a
one-wave rollout over the group with a catalogue image (``POST /api/v1/rollouts`` with
``firmwareId``), since a group task cannot name an image and its download link must be made
fresh at each dispatch.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.api.inputs import Int32, Offset
from edgefleet.bootstrap import Container
from edgefleet.db.tables import Device, Group
from edgefleet.domain.auth import Permission
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.query import parse
from edgefleet.errors import EdgefleetError
from edgefleet.web.i18n import gettext
from edgefleet.web.tasks.reading import (
    PAGE_SIZE,
    group_rows,
    page_offset,
    reader,
    self_url,
    write_context,
)
from edgefleet.web.views import page, render

router = APIRouter(prefix="/console", include_in_schema=False)

PREVIEW_LIMIT = 10_000
"""Gateways a fleet query adds to a group at once (the API takes 10,000 uuids a call)."""
SAMPLE = 8
"""Gateways named in a fleet query's preview."""


@router.get("/groups")
async def groups_page(request: Request, c: ContainerDep) -> Response:
    viewer = await reader(request, c)
    return await page(
        request, c, "groups/index.html", Permission.FLEET_READ, **await write_context(c, viewer)
    )


@router.get("/fragments/groups")
async def groups_fragment(request: Request, c: ContainerDep, offset: Offset = 0) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    offset = page_offset(offset)
    total, groups = await c.fleet.group_rows(offset=offset, limit=PAGE_SIZE)
    rows = await group_rows(c, groups)
    return render(
        request,
        "groups/list.html",
        viewer,
        rows=rows,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        url=self_url("/console/fragments/groups", offset=offset),
        page_url=lambda o: self_url("/console/fragments/groups", offset=o),
        live=any(r.latest and r.latest.is_open for r in rows),
    )


async def group_summary_context(c: Container, group: Group) -> dict[str, Any]:
    (row,) = await group_rows(c, [group])
    return {
        "r": row,
        "url": f"/console/fragments/groups/{group.id}/summary",
        "live": bool(row.latest and row.latest.is_open),
    }


@router.get("/groups/{ref}")
async def group_page(request: Request, c: ContainerDep, ref: str) -> Response:
    viewer = await reader(request, c, for_page=True)
    if viewer is None:
        return await page(request, c, "groups/detail.html", Permission.FLEET_READ)
    group_id = int(ref) if ref.isdigit() and len(ref) < 10 else -1
    found = await c.fleet.groups_by_id([group_id])
    if group_id not in found:
        return render(request, "groups/missing.html", viewer, status=404, group_id=ref)
    return render(
        request,
        "groups/detail.html",
        viewer,
        group=found[group_id],
        **await group_summary_context(c, found[group_id]),
        **await write_context(c, viewer),
    )


@router.get("/fragments/groups/{group_id}/summary")
async def group_summary(request: Request, c: ContainerDep, group_id: Int32) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    found = await c.fleet.groups_by_id([group_id])
    if group_id not in found:
        return render(request, "groups/gone.html", viewer, group_id=group_id)
    return render(
        request, "groups/summary.html", viewer, **await group_summary_context(c, found[group_id])
    )


@router.get("/fragments/groups/{group_id}/devices")
async def group_members(
    request: Request, c: ContainerDep, group_id: Int32, offset: Offset = 0
) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    offset = page_offset(offset)
    result = await c.fleet.list_devices(
        DeviceFilter(group_id=group_id), offset=offset, limit=PAGE_SIZE
    )
    return render(
        request,
        "groups/members.html",
        viewer,
        group_id=group_id,
        rows=[v.device for v in result.items],
        total=result.total,
        offset=offset,
        page_size=PAGE_SIZE,
        url=self_url(f"/console/fragments/groups/{group_id}/devices", offset=offset),
        page_url=lambda o: self_url(f"/console/fragments/groups/{group_id}/devices", offset=o),
    )


@router.get("/fragments/groups/{group_id}/candidates")
async def group_candidates(
    request: Request, c: ContainerDep, group_id: Int32, q: str = ""
) -> Response:
    """What adding the gateways of a fleet query would do: how many match, are free, are
    here already, or belong to another group (a gateway is in one group at most)."""
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    error = ""
    matched: list[Device] = []
    total = 0
    if q.strip():
        try:
            result = await c.fleet.list_devices(
                DeviceFilter(query=parse(q)), offset=0, limit=PREVIEW_LIMIT
            )
            matched, total = [v.device for v in result.items], result.total
        except EdgefleetError as exc:
            error = exc.message
    else:
        error = gettext('Write a fleet query, e.g. model = "UC-8112-LX" and status = online')
    free = [d for d in matched if d.group_id is None]
    return render(
        request,
        "groups/candidates.html",
        viewer,
        group_id=group_id,
        q=q,
        error=error,
        total=total,
        free=len(free),
        here=sum(1 for d in matched if d.group_id == group_id),
        elsewhere=sum(1 for d in matched if d.group_id not in (None, group_id)),
        beyond=max(0, total - len(matched)),
        sample=free[:SAMPLE],
    )
