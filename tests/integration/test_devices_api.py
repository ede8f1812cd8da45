"""The ThingsPro-compatible device API and our inventory extensions, over HTTP."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import httpx

from edgefleet.bootstrap import Container
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.db.tables import Device
from edgefleet.services.fleet import FLEET_COUNT_TTL, Registration
from tests.conftest import Caller

COMPAT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")


async def register(
    client: httpx.AsyncClient, h: dict[str, str], mac: str, **extra: object
) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/devices", headers=h, json={"displayName": f"gw-{mac}", "mac": mac, **extra}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_registration_returns_uuid_and_psk_once(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    body = await register(
        client, writer.headers, "0090E8112233", serialNumber="MOXA00000001", iccId="8986"
    )
    assert re.fullmatch(r"[0-9a-f-]{36}", str(body["uuid"]))
    assert re.fullmatch(r"[0-9a-f]{64}", str(body["psk"]))
    assert body["connection"]["status"] == "created"
    assert COMPAT_TIME.match(body["connection"]["createdAt"])
    assert body["properties"] == {}
    got = (await client.get(f"/api/v1/devices/{body['uuid']}", headers=writer.headers)).json()
    assert "psk" not in got
    assert got["mac"] == "0090E8112233" and got["serialNumber"] == "MOXA00000001"
    # stored encrypted, readable by the server for the broker
    async with container.db.session() as s:
        row = await s.get(Device, body["uuid"])
        assert row is not None and body["psk"] not in row.psk_encrypted
    assert await container.fleet.device_psk(str(body["uuid"])) == body["psk"]


async def test_duplicate_mac_is_refused_in_any_spelling(
    client: httpx.AsyncClient, writer: Caller
) -> None:
    await register(client, writer.headers, "0090e8112233")
    r = await client.post(
        "/api/v1/devices",
        headers=writer.headers,
        json={"displayName": "x", "mac": "00:90:E8:11:22:33"},
    )
    assert r.status_code == 409
    assert r.json() == {"message": "a device with mac '00:90:E8:11:22:33' already exists"}
    listed = (await client.get("/api/v1/devices", headers=writer.headers)).json()
    assert listed["count"] == 1


async def test_bad_registration_bodies_get_clear_errors(
    client: httpx.AsyncClient, writer: Caller
) -> None:
    r = await client.post(
        "/api/v1/devices", headers=writer.headers, json={"displayName": "x", "mac": "nope"}
    )
    assert r.status_code == 400 and "not a MAC address" in r.json()["message"]
    r = await client.post("/api/v1/devices", headers=writer.headers, json={"displayName": "x"})
    assert r.status_code == 400 and "mac" in r.json()["message"]
    r = await client.post("/api/v1/devices", headers=writer.headers, content=b"{not json")
    assert r.status_code == 400
    r = await client.post(
        "/api/v1/devices",
        headers=writer.headers,
        json={"mac": "0090e8000001", "tags": ["bad tag!"]},
    )
    assert r.status_code == 400 and "tag" in r.json()["message"]


async def test_list_pages_with_count_limit_offset(
    client: httpx.AsyncClient, writer: Caller
) -> None:
    macs = [f"0090e80000{i:02x}" for i in range(25)]
    for mac in macs:
        await register(client, writer.headers, mac)
    first = (await client.get("/api/v1/devices", headers=writer.headers)).json()
    assert (first["count"], first["limit"], first["offset"], len(first["data"])) == (25, 20, 0, 20)
    second = (await client.get("/api/v1/devices?offset=20&limit=20", headers=writer.headers)).json()
    assert len(second["data"]) == 5
    seen = [d["mac"] for d in first["data"] + second["data"]]
    assert seen == macs  # registration order, no duplicates across pages
    capped = (await client.get("/api/v1/devices?limit=5000", headers=writer.headers)).json()
    assert capped["limit"] == 1000
    r = await client.get("/api/v1/devices?offset=-1", headers=writer.headers)
    assert r.status_code == 400


async def test_the_fleet_count_is_kept_briefly_and_dropped_by_a_change_made_here(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    """The list's count of the whole fleet is read once a second at most; a registration or
    deletion through this server shows in the next answer, a gateway another server added
    within ``FLEET_COUNT_TTL``."""
    now = [1000.0]
    container.fleet.monotonic = lambda: now[0]

    async def count(query: str = "") -> int:
        r = await client.get(f"/api/v1/devices{query}", headers=writer.headers)
        assert r.status_code == 200, r.text
        return int(r.json()["count"])

    first = await register(client, writer.headers, "0090e8000001")
    assert await count() == 1
    await register(client, writer.headers, "0090e8000002")
    assert await count() == 2  # at once, in the same second
    await container.fleet.register_many([Registration("b", "0090e8000003")])
    assert await count() == 3
    await container.fleet.delete_devices([str(first["uuid"])])
    assert await count() == 2
    # another server's registration: not counted until the kept count is a second old
    async with container.db.session() as s:
        device, tags, _ = container.fleet._new_device(Registration("c", "0090e8000004"))
        await DeviceRepo(s).add(device, tags)
    assert await count() == 2
    assert await count("?limit=5") == 2  # the same count for any page of the whole fleet
    assert await count("?status=created") == 3  # a filter's count is read each time
    now[0] += FLEET_COUNT_TTL
    assert await count() == 3


async def test_exact_filters(client: httpx.AsyncClient, writer: Caller) -> None:
    a = await register(client, writer.headers, "0090e8000001", serialNumber="SN-A")
    await register(client, writer.headers, "0090e8000002", serialNumber="SN-B")
    h = writer.headers
    by_uuid = (await client.get(f"/api/v1/devices?uuid={a['uuid']}", headers=h)).json()
    assert [d["uuid"] for d in by_uuid["data"]] == [a["uuid"]]
    by_mac = (await client.get("/api/v1/devices?mac=00:90:E8:00:00:01", headers=h)).json()
    assert [d["uuid"] for d in by_mac["data"]] == [a["uuid"]]
    by_sn = (await client.get("/api/v1/devices?serialNumber=SN-A", headers=h)).json()
    assert by_sn["count"] == 1
    partial_sn = (await client.get("/api/v1/devices?serialNumber=SN", headers=h)).json()
    assert partial_sn["count"] == 0  # exact, not partial


async def _set_props(container: Container, uuid: str, props: dict[str, object]) -> None:
    async with container.db.session() as s:
        await DeviceRepo(s).set_many_properties([(uuid, props)], datetime.now(UTC))


async def test_legacy_json_query_matches_partially(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    a = await register(client, writer.headers, "0090e8000001", displayName="Pump Station 7")
    b = await register(client, writer.headers, "0090e8000002", displayName="pump house")
    await register(client, writer.headers, "0090e8000003", displayName="Boiler")
    await _set_props(
        container,
        str(a["uuid"]),
        {"softwareVersion": "version 2.3.2 Build 18102617", "defaultRoute": "eth0"},
    )
    await _set_props(
        container, str(b["uuid"]), {"softwareVersion": "version 2.4.0", "defaultRoute": "wwan0"}
    )

    async def q(doc: dict[str, object]) -> list[str]:
        r = await client.get(
            "/api/v1/devices", headers=writer.headers, params={"query": json.dumps(doc)}
        )
        assert r.status_code == 200, r.text
        return sorted(d["displayName"] for d in r.json()["data"])

    assert await q({"keys": {"displayName": {"filter": "PUMP"}}}) == [
        "Pump Station 7",
        "pump house",
    ]
    assert await q({"keys": {"softwareVersion": {"filter": "2.3"}}}) == ["Pump Station 7"]
    assert await q(
        {"keys": {"displayName": {"filter": "pump"}, "defaultRoute": {"filter": "wwan"}}}
    ) == ["pump house"]
    assert (
        await q({"keys": {"displayName": {"filter": "%"}}}) == []
    )  # no SQL wildcard leaks through
    r = await client.get(
        "/api/v1/devices",
        headers=writer.headers,
        params={"query": json.dumps({"offset": 1, "limit": 1, "keys": {}})},
    )
    assert (r.json()["offset"], r.json()["limit"], len(r.json()["data"])) == (1, 1, 1)
    r = await client.get("/api/v1/devices", headers=writer.headers, params={"query": "{oops"})
    assert r.status_code == 400 and "not JSON" in r.json()["message"]
    r = await client.get(
        "/api/v1/devices",
        headers=writer.headers,
        params={"query": json.dumps({"keys": {"psk": {"filter": "a"}}})},
    )
    assert r.status_code == 400 and "not searchable" in r.json()["message"]


async def test_fleet_query_parameter(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    a = await register(client, writer.headers, "0090e8000001", tags=["line-3"])
    b = await register(client, writer.headers, "0090e8000002", tags=["line-3", "retired"])
    c = await register(client, writer.headers, "0090e8000003")
    await _set_props(
        container, str(a["uuid"]), {"modelName": "UC-8112-LX-CG", "softwareVersion": "2.3.2"}
    )
    await _set_props(
        container, str(b["uuid"]), {"modelName": "UC-8112-LX-CG", "softwareVersion": "2.10.0"}
    )
    await _set_props(
        container, str(c["uuid"]), {"modelName": "UC-8112-LX-CG", "softwareVersion": "2.1"}
    )
    r = await client.get(
        "/api/v1/devices",
        headers=writer.headers,
        params={"q": 'model = "UC-8112-LX-CG" and softwareVersion < "2.4" and tag:line-3'},
    )
    assert r.status_code == 200, r.text
    assert [d["uuid"] for d in r.json()["data"]] == [a["uuid"]]
    r = await client.get(
        "/api/v1/devices", headers=writer.headers, params={"q": "softwareVersion > 2.4"}
    )
    assert [d["uuid"] for d in r.json()["data"]] == [b["uuid"]]
    r = await client.get("/api/v1/devices", headers=writer.headers, params={"q": "model = "})
    assert r.status_code == 400 and "invalid fleet query" in r.json()["message"]


async def test_delete_by_list_is_all_or_nothing(client: httpx.AsyncClient, writer: Caller) -> None:
    a = await register(client, writer.headers, "0090e8000001")
    b = await register(client, writer.headers, "0090e8000002")
    r = await client.request(
        "DELETE", "/api/v1/devices", headers=writer.headers, json=[a["uuid"], "no-such-uuid"]
    )
    assert r.status_code == 404 and "no-such-uuid" in r.json()["message"]
    assert (await client.get("/api/v1/devices", headers=writer.headers)).json()["count"] == 2
    r = await client.request(
        "DELETE", "/api/v1/devices", headers=writer.headers, json=[a["uuid"], b["uuid"]]
    )
    assert r.status_code == 200 and sorted(r.json()) == sorted([a["uuid"], b["uuid"]])
    assert (await client.get("/api/v1/devices", headers=writer.headers)).json()["count"] == 0
    r = await client.request("DELETE", "/api/v1/devices", headers=writer.headers, json="not-a-list")
    assert r.status_code == 400


async def test_get_and_delete_one(client: httpx.AsyncClient, writer: Caller) -> None:
    a = await register(client, writer.headers, "0090e8000001")
    assert (
        await client.get(f"/api/v1/devices/{a['uuid']}", headers=writer.headers)
    ).status_code == 200
    assert (
        await client.delete(f"/api/v1/devices/{a['uuid']}", headers=writer.headers)
    ).status_code == 200
    r = await client.get(f"/api/v1/devices/{a['uuid']}", headers=writer.headers)
    assert r.status_code == 404 and r.json() == {"message": f"device {a['uuid']} not found"}


async def test_inventory_edit_uses_problem_json(client: httpx.AsyncClient, writer: Caller) -> None:
    a = await register(client, writer.headers, "0090e8000001")
    r = await client.patch(
        f"/api/v1/devices/{a['uuid']}",
        headers=writer.headers,
        json={
            "displayName": "Pump 7",
            "tags": ["line-3", "line-3", "eu"],
            "attributes": {"site": "Berlin", "rack": 4},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["eu", "line-3"] and r.json()["attributes"] == {
        "site": "Berlin",
        "rack": 4,
    }
    r = await client.get(
        "/api/v1/devices",
        headers=writer.headers,
        params={"q": 'attr.site ~ "berl" and attr.rack = 4'},
    )
    assert r.json()["count"] == 1
    r = await client.patch(
        "/api/v1/devices/nope", headers=writer.headers, json={"displayName": "x"}
    )
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 404 and r.json()["type"].endswith("/not-found")
    r = await client.patch(
        f"/api/v1/devices/{a['uuid']}", headers=writer.headers, json={"psk": "x"}
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
