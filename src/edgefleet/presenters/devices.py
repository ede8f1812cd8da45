"""A device as the ThingsPro API shapes it, plus our keys (tags, attributes, groupId)."""

from __future__ import annotations

from typing import Any

from edgefleet.presenters.times import compat_time
from edgefleet.services.fleet import DeviceRecord, DeviceView, ListedDevice


def device_public(view: DeviceView) -> dict[str, Any]:
    return device_fields(view.device, view.tags)


def listed_device(item: ListedDevice) -> dict[str, Any]:
    return device_fields(item.record, item.tags)


def device_fields(d: DeviceRecord, tags: list[str]) -> dict[str, Any]:
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
        "tags": tags,
        "attributes": d.attributes or {},
    }
