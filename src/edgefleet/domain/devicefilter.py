"""Which gateways a list or a selection takes, and in which order (db/repos/devices.py turns
both into SQL)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.domain.query import Node

PARTIAL_KEYS = ("uuid", "mac", "displayName", "serialNumber", "defaultRoute", "softwareVersion")
"""The keys ThingsPro's ``query`` parameter matches partially (spec ``FilterDevice``)."""


@dataclass(frozen=True)
class DeviceFilter:
    """Which gateways a list or a selection takes; every field set must match."""

    uuid: str | None = None
    mac_key: str | None = None
    serial_number: str | None = None
    partial: dict[str, str] = field(default_factory=dict)
    """``PARTIAL_KEYS`` → text the value contains (case-insensitive)."""
    status: str | None = None
    tag: str | None = None
    group_id: int | None = None
    query: Node | None = None


@dataclass(frozen=True)
class DeviceOrder:
    """A gateway list's order: one of ``SORT_KEYS``, ascending unless ``descending``."""

    key: str = "created"
    descending: bool = False
