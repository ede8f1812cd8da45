"""``POST /api/v1/deviceTasks`` end to end: REST → server → real Mosquitto → virtual gateway
→ REST, with the original's answer shape and errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container
from edgefleet.domain.auth import Role, Scope
from edgefleet.simulator.gateway import Behaviour
from tests import spec
from tests.answers import checked_client
from tests.conftest import Callers
from tests.gateways import PROPS, count, eventually, register, start

URL = "/api/v1/deviceTasks"


@pytest.fixture
async def api(live: Container) -> AsyncIterator[httpx.AsyncClient]:
    async with checked_client(create_app(live)) as client:
        yield client


async def _online(live: Container, n: int) -> None:
    async def ready() -> bool:
        return await count(live, "online") >= n

    await eventually(ready)


async def test_a_request_is_relayed_and_the_gateways_answer_returned(
    live: Container, api: httpx.AsyncClient
) -> None:
    creds = await register(live, 1)
    _, tasks = start(live, creds)
    await _online(live, 1)
    writer = await Callers(live).token(Role.OPERATOR, Scope.READ_WRITE)
    uuid = creds[0][0]
    r = await api.post(
        URL,
        json={"deviceUUID": uuid, "payload": {"method": "GET", "resource": "/system/properties"}},
        headers={"MX-API-TOKEN": writer.headers["mx-api-token"]},  # any letter case
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 200 and body["method"] == "get"
    assert body["resource"] == "/system/properties"
    assert body["data"]["modelName"] == PROPS["modelName"]
    assert body["task_id"] == body["taskID"] and len(body["taskID"]) == 36
    assert isinstance(body["sign"], list)
    spec.validate(body, spec.response_schema("post", "/deviceTasks"))  # the original's shape
    # data is passed through untouched, query string kept
    r = await api.post(
        URL,
        json={
            "deviceUUID": uuid,
            "payload": {"method": "put", "resource": "/system/services/ssh?x=1", "data": [1, 2]},
        },
        headers=writer.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["resource"] == "/system/services/ssh?x=1"
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_unknown_offline_and_silent_gateways_get_clear_errors(
    live: Container, api: httpx.AsyncClient
) -> None:
    writer = await Callers(live).token(Role.OPERATOR, Scope.READ_WRITE)
    get = {"method": "get", "resource": "/system/properties"}
    r = await api.post(URL, json={"deviceUUID": "nope", "payload": get}, headers=writer.headers)
    assert r.status_code == 404 and "nope" in r.json()["message"]

    (never, _), slow = await register(live, 2)
    r = await api.post(URL, json={"deviceUUID": never, "payload": get}, headers=writer.headers)
    assert r.status_code == 409 and "offline" in r.json()["message"]

    _, tasks = start(live, [slow], behaviour=Behaviour(latency=5.0))
    await _online(live, 1)
    r = await api.post(
        URL + "?timeout=1", json={"deviceUUID": slow[0], "payload": get}, headers=writer.headers
    )
    assert r.status_code == 504 and "did not answer within 1 s" in r.json()["message"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(
    "body",
    [
        {"payload": {"method": "get", "resource": "/x"}},
        {"deviceUUID": "u"},
        {"deviceUUID": "u", "payload": {"method": "patch", "resource": "/x"}},
        {"deviceUUID": "u", "payload": {"method": "get", "resource": "no-slash"}},
    ],
)
async def test_a_malformed_task_is_refused(
    live: Container, api: httpx.AsyncClient, body: dict[str, object]
) -> None:
    writer = await Callers(live).token(Role.OPERATOR, Scope.READ_WRITE)
    r = await api.post(URL, json=body, headers=writer.headers)
    assert r.status_code == 400 and r.json()["message"]


async def test_a_read_token_may_not_send_tasks(live: Container, api: httpx.AsyncClient) -> None:
    reader = await Callers(live).token(Role.OPERATOR, Scope.READ)
    r = await api.post(
        URL,
        json={"deviceUUID": "u", "payload": {"method": "get", "resource": "/x"}},
        headers=reader.headers,
    )
    assert r.status_code == 403


async def test_reading_a_gateways_properties_stores_what_it_read(
    live: Container, api: httpx.AsyncClient
) -> None:
    """The console's "Read properties" (a deviceTasks GET /system/properties): what the
    gateway answers becomes its stored properties, as its answer at connection did."""
    creds = await register(live, 1)
    gws, tasks = start(live, creds)
    await _online(live, 1)
    uuid = creds[0][0]

    async def stored() -> dict[str, object]:
        return dict((await live.fleet.get_device(uuid)).device.properties or {})

    async def connected_ones() -> bool:
        return (await stored()).get("modelName") == PROPS["modelName"]

    await eventually(connected_ones)
    # the gateway changes without saying so (no event): only a read can tell
    gws[0].properties.update({"hostName": "press-7b", "gps": {"lat": 25.03, "lng": 121.56}})
    writer = await Callers(live).token(Role.OPERATOR, Scope.READ_WRITE)
    r = await api.post(
        URL,
        json={"deviceUUID": uuid, "payload": {"method": "get", "resource": "/system/properties"}},
        headers=writer.headers,
    )
    assert r.status_code == 200 and r.json()["data"]["hostName"] == "press-7b", r.text

    async def read_ones() -> bool:
        now = await stored()
        return now.get("hostName") == "press-7b" and now.get("gps") == {"lat": 25.03, "lng": 121.56}

    await eventually(read_ones, 10)
    # any other request is relayed as it was, and stores nothing
    r = await api.post(
        URL,
        json={"deviceUUID": uuid, "payload": {"method": "get", "resource": "/system/status"}},
        headers=writer.headers,
    )
    assert r.status_code == 200
    await live.messaging.presence.drained()
    assert "uptime" not in await stored()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
