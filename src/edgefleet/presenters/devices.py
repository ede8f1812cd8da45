"""A device as the ThingsPro API shapes it, plus our keys (tags, attributes, groupId)."""

from __future__ import annotations

from typing import Any

from edgefleet.db.tables import Device
from edgefleet.presenters.times import compat_time
from edgefleet.services.fleet import DeviceView


def device_public(view: DeviceView) -> dict[str, Any]:
    d: Device = view.device
    properties: dict[str, Any] = {}
    if d.properties:
        properties = {
            "deviceUUID": d.uuid,
            "createdAt": compat_time(d.properties_updated_at),
            **d.properties,
        }
    return {
        "uuid": d.uuid,
        "displayName": d.display_name,
        "description": d.description,
        "mac": d.mac,
        "serialNumber": d.serial_number,
        "iccId": d.icc_id,
        "createdAt": compat_time(d.created_at),
        "updatedAt": compat_time(d.updated_at),
        "connection": {
            "deviceUUID": d.uuid,
            "status": d.connection_status,
            "createdAt": compat_time(d.connection_changed_at),
        },
        "properties": properties,
        "groupId": d.group_id,
        "tags": view.tags,
        "attributes": d.attributes or {},
    }
