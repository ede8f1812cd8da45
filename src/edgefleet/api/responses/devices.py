"""Devices: ThingsPro's ``Device`` and ``DeviceList``, plus our keys."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from edgefleet.api.responses import Answer, Page
from edgefleet.domain.devices import ConnectionStatus


class Connection(Answer):
    deviceUUID: str
    status: ConnectionStatus
    createdAt: str = Field(description="when the status last changed (the original's form)")


class Gps(Answer):
    model_config = ConfigDict(extra="allow")

    lat: float | None = None
    lng: float | None = None


class DeviceProperties(Answer):
    """What the gateway last reported (``{}`` until it did), keys the spec names and any
    other key the gateway sends."""

    model_config = ConfigDict(extra="allow")

    deviceUUID: str | None = None
    createdAt: str | None = None
    aliasName: str | None = None
    iccId: str | None = None
    modelName: str | None = None
    softwareVersion: str | None = None
    defaultRoute: str | None = None
    gps: Gps | None = None
    wifi: str | None = None
    customProperties: dict[str, Any] | None = None


class DevicePublic(Answer):
    uuid: str
    displayName: str
    description: str
    mac: str
    serialNumber: str
    iccId: str
    createdAt: str = Field(description="UTC, the original's form: 2017-03-22T08:15:01.359380")
    updatedAt: str
    connection: Connection
    properties: DeviceProperties
    groupId: int | None = Field(description="ours: the device's group")
    tags: list[str] = Field(description="ours")
    attributes: dict[str, Any] = Field(description="ours: inventory attributes")


class DeviceCreated(DevicePublic):
    psk: str = Field(description="the gateway's pre-shared key, shown once")


class DeviceList(Page[DevicePublic]):
    pass


class DevicePsk(Answer):
    uuid: str
    psk: str = Field(description="the new pre-shared key, shown once")
