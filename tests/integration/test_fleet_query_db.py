"""Fleet queries against real SQL, the same answers on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgefleet.bootstrap import Container
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.db.tables import Device
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.query import parse
from edgefleet.services.fleet import Registration

FLEET: dict[str, tuple[str, dict[str, Any], list[str], dict[str, Any], str | None]] = {
    # name: (mac, properties, tags, attributes, group)
    "a": (
        "00:90:e8:00:00:0a",
        {"modelName": "UC-8112-LX-CG", "softwareVersion": "2.4.0", "defaultRoute": "eth0"},
        ["line-3"],
        {"site": "Berlin", "rack": 4},
        "plant-a",
    ),
    "b": (
        "0090E800000B",
        {"modelName": "UC-8112-LX-CG", "softwareVersion": "2.10.1", "defaultRoute": "wwan0"},
        ["line-3", "retired"],
        {"site": "Hamburg", "rack": 12},
        "plant-a",
    ),
    "c": (
        "0090e800000c",
        {
            "modelName": "UC-2112-LX",
            "softwareVersion": "version 2.3.2 Build 18102617",
            "defaultRoute": "wlan0",
        },
        [],
        {"site": "100% Berlin"},
        "plant-b",
    ),
    "d": ("0090e800000d", {}, ["spare"], {}, None),
}


@pytest.fixture
async def fleet(container: Container) -> dict[str, str]:
    names: dict[str, str] = {}
    groups: dict[str, int] = {}
    for gname in ("plant-a", "plant-b"):
        groups[gname] = (await container.fleet.create_group(gname)).group.id
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i, (name, (mac, props, tags, attrs, group)) in enumerate(FLEET.items()):
        view, _ = await container.fleet.register_device(
            Registration(
                display_name=f"Gateway {name.upper()}", mac=mac, tags=tuple(tags), attributes=attrs
            )
        )
        uuid = view.device.uuid
        names[uuid] = name
        async with container.db.session() as s:
            if props:
                await DeviceRepo(s).set_many_properties([(uuid, props)], start)
            row = await s.get(Device, uuid)
            assert row is not None
            row.created_at = start + timedelta(days=i)
            if name in ("a", "b"):
                row.connection_status = "online"
        if group:
            await container.fleet.add_to_group(groups[group], [uuid])
    return names


CASES = [
    ('model = "UC-8112-LX-CG"', "ab"),
    ('model = "UC-8112-LX-CG" and softwareVersion < "2.5"', "a"),
    ("softwareVersion > 2.4", "b"),
    ('softwareVersion >= "2.3"', "abc"),
    ('softwareVersion < "2.4"', "c"),  # unknown versions never compare
    ('model != "UC-2112-LX"', "abd"),  # a missing model counts as "not equal"
    ("tag:line-3 and not tag:retired", "a"),
    ("tag:spare or defaultRoute = wlan0", "cd"),
    ('mac = "00-90-E8-00-00-0B"', "b"),
    ('mac in ["0090e800000a", "00:90:e8:00:00:0d"]', "ad"),
    ('group = "plant-a"', "ab"),
    ('group != "plant-a"', "cd"),
    ("status = online", "ab"),
    ("status != online", "cd"),
    ('attr.site ~ "berlin"', "ac"),
    ('attr.site ~ "100%"', "c"),  # % is a literal, not a wildcard
    ('attr.site ~ "0% B"', "c"),
    ("attr.rack > 5", "b"),
    ("attr.rack = 4", "a"),
    ("has attr.rack", "ab"),
    ('name ~ "gateway" and not (name = "Gateway A" or name = "Gateway B")', "cd"),
    ('createdAt >= "2026-01-02" and createdAt < "2026-01-04"', "bc"),
    ('aliasName = ""', "abcd"),
]


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[q for q, _ in CASES])
async def test_query_selects_exactly(
    container: Container, fleet: dict[str, str], query: str, expected: str
) -> None:
    async with container.db.session() as s:
        uuids = await DeviceRepo(s).uuids(DeviceFilter(query=parse(query)))
    assert "".join(sorted(fleet[u] for u in uuids)) == expected
