"""Our compatible endpoints answer what the official ThingsPro v2.5 spec says.

The list of operations comes from the spec itself: an operation the spec defines on the
paths below that this test does not exercise makes the test fail.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from edgefleet.bootstrap import Container
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.domain.tasks import TaskState
from tests import spec
from tests.conftest import Caller
from tests.integration.test_groups_api import add_task

PATHS = ("/devices", "/devices/{uuid}", "/groups", "/groups/{id}", "/groups/{id}/devices")
COMPAT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")

ERRATA = {
    ("post", "/devices"): "schema says an array of Device; its example and the original answer one",
    ("post", "/groups"): "schema says an array of Group; its example answers one Group",
}
"""Where the spec contradicts itself, edgefleet answers like its examples: one object."""

PROPERTIES = {
    "aliasName": "Pump 7",
    "gps": {"lat": 25.03, "lng": 121.56},
    "iccId": "898600MFSSYYGXXXXXXP",
    "modelName": "UC-8112-LX-CG",
    "softwareVersion": "version 2.3.2 Build 18102617",
    "defaultRoute": "eth0",
    "wifi": "connected",
    "customProperties": {"line": 3},
}


class World:
    """Real data behind the requests: registered devices with properties, a group, a task."""

    def __init__(self, client: httpx.AsyncClient, h: dict[str, str], c: Container) -> None:
        self.client, self.h, self.c = client, h, c
        self.n = 0

    async def device(self) -> dict[str, Any]:
        self.n += 1
        body = {
            "displayName": f"gw {self.n}",
            "mac": f"0090E8{self.n:06X}",
            "serialNumber": f"SN{self.n}",
        }
        schema = spec.body_schema("post", "/devices")
        assert schema is not None
        spec.validate(body, schema)
        r = await self.client.post("/api/v1/devices", headers=self.h, json=body)
        assert r.status_code == 200, r.text
        dev = dict(r.json())
        async with self.c.db.session() as s:
            await DeviceRepo(s).set_many_properties([(dev["uuid"], PROPERTIES)], datetime.now(UTC))
        return dev

    async def group(self, devices: int = 2) -> dict[str, Any]:
        self.n += 1
        body = {"name": f"group {self.n}", "description": "line 3"}
        schema = spec.body_schema("post", "/groups")
        assert schema is not None
        spec.validate(body, schema)
        r = await self.client.post("/api/v1/groups", headers=self.h, json=body)
        assert r.status_code == 200, r.text
        group = dict(r.json())
        uuids = [(await self.device())["uuid"] for _ in range(devices)]
        if uuids:
            url = f"/api/v1/groups/{group['id']}/devices"
            r = await self.client.post(url, headers=self.h, json=uuids)
            assert r.status_code == 200
            await add_task(self.c, group["id"], {u: TaskState.SUCCESS for u in uuids})
        return group


Op = Callable[[World], Awaitable[httpx.Response]]


async def _devices_get(w: World) -> httpx.Response:
    await w.device()
    await w.device()
    return await w.client.get("/api/v1/devices", headers=w.h)


async def _devices_post(w: World) -> httpx.Response:
    return await w.client.post(
        "/api/v1/devices",
        headers=w.h,
        json={"displayName": "new", "mac": "0090E8FFFFFF", "serialNumber": "X"},
    )


async def _devices_delete(w: World) -> httpx.Response:
    body = [(await w.device())["uuid"]]
    schema = spec.body_schema("delete", "/devices")
    assert schema is not None
    spec.validate(body, schema)
    return await w.client.request("DELETE", "/api/v1/devices", headers=w.h, json=body)


async def _device_get(w: World) -> httpx.Response:
    return await w.client.get(f"/api/v1/devices/{(await w.device())['uuid']}", headers=w.h)


async def _device_delete(w: World) -> httpx.Response:
    return await w.client.delete(f"/api/v1/devices/{(await w.device())['uuid']}", headers=w.h)


async def _groups_get(w: World) -> httpx.Response:
    await w.group()
    return await w.client.get("/api/v1/groups", headers=w.h)


async def _groups_post(w: World) -> httpx.Response:
    return await w.client.post(
        "/api/v1/groups", headers=w.h, json={"name": "fresh", "description": ""}
    )


async def _groups_delete(w: World) -> httpx.Response:
    body = [(await w.group(0))["id"]]
    schema = spec.body_schema("delete", "/groups")
    assert schema is not None
    spec.validate(body, schema)
    return await w.client.request("DELETE", "/api/v1/groups", headers=w.h, json=body)


async def _group_get(w: World) -> httpx.Response:
    return await w.client.get(f"/api/v1/groups/{(await w.group())['id']}", headers=w.h)


async def _group_put(w: World) -> httpx.Response:
    g = await w.group()
    body = {"name": "renamed", "description": "new text"}
    schema = spec.body_schema("put", "/groups/{id}")
    assert schema is not None
    spec.validate(body, schema)
    return await w.client.put(f"/api/v1/groups/{g['id']}", headers=w.h, json=body)


async def _group_delete(w: World) -> httpx.Response:
    return await w.client.delete(f"/api/v1/groups/{(await w.group(0))['id']}", headers=w.h)


async def _group_devices_get(w: World) -> httpx.Response:
    return await w.client.get(f"/api/v1/groups/{(await w.group())['id']}/devices", headers=w.h)


async def _group_devices_post(w: World) -> httpx.Response:
    g = await w.group(0)
    body = [(await w.device())["uuid"]]
    schema = spec.body_schema("post", "/groups/{id}/devices")
    assert schema is not None
    spec.validate(body, schema)
    return await w.client.post(f"/api/v1/groups/{g['id']}/devices", headers=w.h, json=body)


async def _group_devices_delete(w: World) -> httpx.Response:
    g = await w.group(2)
    members = (await w.client.get(f"/api/v1/groups/{g['id']}/devices", headers=w.h)).json()
    return await w.client.request(
        "DELETE", f"/api/v1/groups/{g['id']}/devices", headers=w.h, json=members[:1]
    )


OPERATIONS: dict[tuple[str, str], Op] = {
    ("get", "/devices"): _devices_get,
    ("post", "/devices"): _devices_post,
    ("delete", "/devices"): _devices_delete,
    ("get", "/devices/{uuid}"): _device_get,
    ("delete", "/devices/{uuid}"): _device_delete,
    ("get", "/groups"): _groups_get,
    ("post", "/groups"): _groups_post,
    ("delete", "/groups"): _groups_delete,
    ("get", "/groups/{id}"): _group_get,
    ("put", "/groups/{id}"): _group_put,
    ("delete", "/groups/{id}"): _group_delete,
    ("get", "/groups/{id}/devices"): _group_devices_get,
    ("post", "/groups/{id}/devices"): _group_devices_post,
    ("delete", "/groups/{id}/devices"): _group_devices_delete,
}


def spec_operations() -> set[tuple[str, str]]:
    paths = spec.load()["paths"]
    return {
        (method, path)
        for path in PATHS
        for method in paths[path]
        if method in ("get", "post", "put", "delete", "patch")
    }


def test_every_spec_operation_is_exercised() -> None:
    assert spec_operations() == set(OPERATIONS)


def test_errata_are_real() -> None:
    for method, path in ERRATA:
        schema = spec.response_schema(method, path)
        assert schema.get("type") == "array", f"{method} {path}: the spec no longer says array"


def _check_device(d: dict[str, Any]) -> None:
    assert d["connection"]["status"] in {"created", "online", "offline"}
    assert COMPAT_TIME.match(d["connection"]["createdAt"]), d["connection"]["createdAt"]
    assert COMPAT_TIME.match(d["createdAt"])
    assert d["properties"] == {} or d["properties"]["deviceUUID"] == d["uuid"]


@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS), ids=lambda v: str(v))
async def test_response_matches_the_spec(
    client: httpx.AsyncClient, writer: Caller, container: Container, method: str, path: str
) -> None:
    world = World(client, writer.headers, container)
    r = await OPERATIONS[(method, path)](world)
    assert r.status_code == 200, r.text
    schema = spec.response_schema(method, path)
    if (method, path) in ERRATA:
        schema = schema["items"]
    body = r.json()
    if schema:
        spec.validate(body, schema)
    if path == "/devices" and method == "get":
        assert set(body) == {"count", "limit", "offset", "data"} and body["count"] == 2
        for d in body["data"]:
            _check_device(d)
            spec.validate(
                d["properties"], spec.load()["definitions"]["Device"]["properties"]["properties"]
            )
    if (path in ("/devices/{uuid}",) and method == "get") or (method, path) == ("post", "/devices"):
        _check_device(body)
    if path in ("/groups/{id}",) and method in ("get", "put"):
        assert body["deviceStatus"]["totalCount"] == body["deviceStatus"]["createdCount"] == 2
        assert body["deviceStatus"]["created"] == 2
        assert body["taskStatus"] == {
            "activeCount": 0,
            "completedCount": 2,
            "revokedCount": 0,
            "totalCount": 2,
        }
        for d in body["devices"]:
            spec.validate(d, {"$ref": "#/definitions/Device"})
        assert len(body["tasks"]) == 2
        for t in body["tasks"]:
            spec.validate(t, {"$ref": "#/definitions/DeviceTaskCreate"})
    if (method, path) == ("get", "/groups"):
        for g in body["data"]:
            spec.validate(g, {"$ref": "#/definitions/Group"})
