"""``/api/v1/groups``: ThingsPro's group API (one group per device)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response

from edgefleet.api.deps import ContainerDep, FleetReader, FleetWriter, audit_target
from edgefleet.api.errors import CompatRoute
from edgefleet.api.inputs import Int32, Offset
from edgefleet.api.responses import reply
from edgefleet.api.responses.groups import GroupList, GroupPublic
from edgefleet.api.schemas import Exact, GroupUpdate, GroupWrite, SelectedFrom, selection
from edgefleet.presenters.groups import group_public
from edgefleet.presenters.pages import page

router = APIRouter(prefix="/api/v1", tags=["groups"], route_class=CompatRoute)

UUIDList = Annotated[list[str], Body(min_length=1, max_length=10000)]


@router.get("/groups", name="groups.list", response_model=GroupList)
async def list_groups(
    c: ContainerDep,
    _: FleetReader,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1)] = 20,
) -> Response:
    limit = min(limit, 1000)
    total, views = await c.fleet.list_groups(offset=offset, limit=limit)
    return reply(page(total, offset, limit, [group_public(v) for v in views]))


@router.post("/groups", name="groups.create", response_model=GroupPublic)
async def create_group(
    request: Request, c: ContainerDep, _: FleetWriter, body: GroupWrite
) -> Response:
    view = await c.fleet.create_group(body.name, body.description)
    audit_target(request, "group", view.group.id)
    return reply(group_public(view))


@router.delete("/groups", name="groups.delete_many")
async def delete_groups(
    request: Request,
    c: ContainerDep,
    _: FleetWriter,
    ids: Annotated[list[Int32], Body(min_length=1, max_length=1000)],
) -> list[int]:
    audit_target(request, "group", ",".join(map(str, ids))[:64])
    await c.fleet.delete_groups(ids)
    return ids


@router.get("/groups/{id}", name="groups.get", response_model=GroupPublic)
async def get_group(c: ContainerDep, _: FleetReader, id: Int32) -> Response:
    return reply(group_public(await c.fleet.get_group(id)))


@router.put("/groups/{id}", name="groups.update", response_model=GroupPublic)
async def update_group(
    request: Request, c: ContainerDep, _: FleetWriter, id: Int32, body: GroupUpdate
) -> Response:
    audit_target(request, "group", id)
    return reply(
        group_public(await c.fleet.update_group(id, name=body.name, description=body.description))
    )


@router.delete("/groups/{id}", name="groups.delete")
async def delete_group(request: Request, c: ContainerDep, _: FleetWriter, id: Int32) -> list[int]:
    audit_target(request, "group", id)
    await c.fleet.delete_groups([id])
    return [id]


@router.get("/groups/{id}/devices", name="groups.devices")
async def group_devices(c: ContainerDep, _: FleetReader, id: Int32) -> list[str]:
    return await c.fleet.group_device_uuids(id)


@router.post("/groups/{id}/devices", name="groups.add_devices")
async def add_group_devices(
    request: Request,
    c: ContainerDep,
    _: FleetWriter,
    id: Int32,
    uuids: UUIDList,
    q: SelectedFrom = None,
    exact: Exact = False,
) -> list[str]:
    audit_target(request, "group", id)
    return await c.fleet.add_to_group(id, uuids, selection=selection(uuids, q, exact))


@router.delete("/groups/{id}/devices", name="groups.remove_devices")
async def remove_group_devices(
    request: Request, c: ContainerDep, _: FleetWriter, id: Int32, uuids: UUIDList
) -> list[str]:
    audit_target(request, "group", id)
    return await c.fleet.remove_from_group(id, uuids)
