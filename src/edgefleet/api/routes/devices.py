"""``/api/v1/devices``: ThingsPro's device API, plus inventory edits and fleet queries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response

from edgefleet.api.deps import ContainerDep, FleetReader, FleetWriter, audit_target
from edgefleet.api.errors import CompatRoute
from edgefleet.api.inputs import Int32, Offset, parse_json
from edgefleet.api.responses import reply
from edgefleet.api.responses.devices import DeviceCreated, DeviceList, DevicePsk, DevicePublic
from edgefleet.api.schemas import (
    DeviceCreate,
    DevicesUpdate,
    DeviceUpdate,
    Exact,
    SelectedFrom,
    selection,
)
from edgefleet.domain.devicefilter import PARTIAL_KEYS, DeviceFilter, DeviceOrder
from edgefleet.domain.devices import ConnectionStatus, mac_key, parse_sort
from edgefleet.domain.limits import INT64_MAX
from edgefleet.domain.query import parse
from edgefleet.errors import ValidationError
from edgefleet.presenters.devices import device_public, listed_device
from edgefleet.services.fleet import Registration, Selection

router = APIRouter(prefix="/api/v1", tags=["devices"], route_class=CompatRoute)
extra = APIRouter(prefix="/api/v1", tags=["devices"])

MAX_LIMIT = 1000
DEFAULT_LIMIT = 20


def _legacy_query(raw: str) -> tuple[dict[str, str], int | None, int | None]:
    """ThingsPro's ``query``: URL-encoded JSON ``{offset, limit, keys: {k: {filter: v}}}``."""
    doc = parse_json(raw, ("query", "query"))
    if not isinstance(doc, dict):
        raise ValidationError("query must be a JSON object")
    keys = doc.get("keys") or {}
    if not isinstance(keys, dict):
        raise ValidationError("query.keys must be an object")
    partial: dict[str, str] = {}
    for key, spec in keys.items():
        if key not in PARTIAL_KEYS:
            raise ValidationError(
                f"query key {key!r} is not searchable; use one of {', '.join(PARTIAL_KEYS)}"
            )
        value = spec.get("filter") if isinstance(spec, dict) else spec
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValidationError(f"query.keys.{key}.filter must be a string")
        if str(value):
            partial[key] = str(value)

    def number(name: str) -> int | None:
        v = doc.get(name)
        if v is None:
            return None
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= INT64_MAX:
            raise ValidationError(f"query.{name} must be a number from 0 to {INT64_MAX}")
        return int(v)

    return partial, number("offset"), number("limit")


@router.get("/devices", name="devices.list", response_model=DeviceList)
async def list_devices(
    c: ContainerDep,
    _: FleetReader,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1)] = DEFAULT_LIMIT,
    uuid: str | None = None,
    mac: str | None = None,
    serialNumber: str | None = None,
    query: Annotated[str | None, Query(description="ThingsPro JSON filter (partial match)")] = None,
    q: Annotated[
        str | None, Query(description='fleet query, e.g. model = "UC-8112" and tag:line-3')
    ] = None,
    status: ConnectionStatus | None = None,
    tag: str | None = None,
    groupId: Int32 | None = None,
    sort: Annotated[
        str,
        Query(
            description="name, status, since, mac, model, firmware, group or created (the "
            "default); a leading - sorts descending"
        ),
    ] = "created",
) -> Response:
    key, descending = parse_sort(sort)
    partial: dict[str, str] = {}
    if query:
        partial, q_offset, q_limit = _legacy_query(query)
        offset = q_offset if q_offset is not None else offset
        limit = q_limit if q_limit is not None else limit
    limit = max(1, min(limit, MAX_LIMIT))
    f = DeviceFilter(
        uuid=uuid,
        mac_key=mac_key(mac) if mac else None,
        serial_number=serialNumber,
        partial=partial,
        status=status.value if status else None,
        tag=tag,
        group_id=groupId,
        query=parse(q) if q else None,
    )
    page = await c.fleet.device_rows(
        f, offset=offset, limit=limit, order=DeviceOrder(key, descending)
    )
    return reply(
        {
            "count": page.total,
            "limit": limit,
            "offset": offset,
            "data": [listed_device(v) for v in page.items],
        }
    )


@router.post("/devices", name="devices.create", response_model=DeviceCreated)
async def register_device(
    request: Request, c: ContainerDep, _: FleetWriter, body: DeviceCreate
) -> Response:
    view, psk = await c.fleet.register_device(
        Registration(
            display_name=body.displayName or body.mac,
            mac=body.mac,
            serial_number=body.serialNumber,
            description=body.description,
            icc_id=body.iccId,
            tags=tuple(body.tags),
            attributes=body.attributes,
        )
    )
    audit_target(request, "device", view.device.uuid)
    return reply({**device_public(view), "psk": psk})


@router.delete("/devices", name="devices.delete_many")
async def delete_devices(
    request: Request,
    c: ContainerDep,
    _: FleetWriter,
    uuids: Annotated[list[str], Body(min_length=1, max_length=10000)],
    q: SelectedFrom = None,
    exact: Exact = False,
) -> list[str]:
    deleted = await c.fleet.delete_devices(uuids, selection=selection(uuids, q, exact))
    audit_target(request, "device", ",".join(deleted)[:64])
    return deleted


@router.get("/devices/{uuid}", name="devices.get", response_model=DevicePublic)
async def get_device(c: ContainerDep, _: FleetReader, uuid: str) -> Response:
    return reply(device_public(await c.fleet.get_device(uuid)))


@router.delete("/devices/{uuid}", name="devices.delete")
async def delete_device(request: Request, c: ContainerDep, _: FleetWriter, uuid: str) -> list[str]:
    audit_target(request, "device", uuid)
    return await c.fleet.delete_devices([uuid])


@extra.patch("/devices", name="devices.update_many")
async def update_devices(
    request: Request, c: ContainerDep, _: FleetWriter, body: DevicesUpdate
) -> list[str]:
    """Ours: tags added and removed, attributes merged (null removes a key), description
    set, on many gateways at once, all or none. With ``query``, the devices were selected
    from a list of that fleet query: refused (409) unless each still matches it (and, with
    ``exact``, unless they are all it matches)."""
    changed = await c.fleet.update_devices(
        Selection(body.devices, body.query or "", body.exact),
        add_tags=body.addTags,
        remove_tags=body.removeTags,
        attributes=body.attributes,
        description=body.description,
    )
    audit_target(request, "device", ",".join(changed)[:64])
    return changed


@extra.patch("/devices/{uuid}", name="devices.update", response_model=DevicePublic)
async def update_device(
    request: Request, c: ContainerDep, _: FleetWriter, uuid: str, body: DeviceUpdate
) -> Response:
    audit_target(request, "device", uuid)
    view = await c.fleet.update_device(
        uuid,
        display_name=body.displayName,
        description=body.description,
        tags=body.tags,
        attributes=body.attributes,
    )
    return reply(device_public(view))


@extra.post("/devices/{uuid}/psk", name="devices.rotate_psk", response_model=DevicePsk)
async def rotate_psk(request: Request, c: ContainerDep, _: FleetWriter, uuid: str) -> Response:
    """A new pre-shared key for the gateway, shown once; the old one stops working at once
    (brokers close the gateway's session), so configure the gateway with this one."""
    audit_target(request, "device", uuid)
    return reply({"uuid": uuid, "psk": await c.fleet.rotate_psk(uuid)})
