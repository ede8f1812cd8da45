"""``/api/v1/broker/…``: the hooks brokers call, in EMQX's HTTP authn/authz shape."""

from __future__ import annotations

import httpx

from edgefleet.bootstrap import Container
from edgefleet.domain.audit import AuditFilter
from edgefleet.domain.auth import Role, Scope
from edgefleet.services.fleet import Registration
from tests.conftest import Callers

AUTHN = "/api/v1/broker/authn"
AUTHZ = "/api/v1/broker/authz"


async def _device(c: Container, mac: str = "0090e8000001") -> tuple[str, str]:
    view, psk = await c.fleet.register_device(Registration(display_name="gw", mac=mac))
    return view.device.uuid, psk


async def test_only_a_broker_token_may_ask(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    uuid, psk = await _device(container)
    body = {"username": uuid, "clientid": uuid, "password": psk}
    assert (await client.post(AUTHN, json=body)).status_code == 401
    writer = await callers.token(Role.ADMIN, Scope.READ_WRITE)
    r = await client.post(AUTHN, json=body, headers=writer.headers)
    assert r.status_code == 403 and "broker" in r.json()["detail"]
    broker = await callers.token(Role.ADMIN, Scope.BROKER)
    r = await client.post(AUTHN, json=body, headers=broker.headers)
    assert r.status_code == 200 and r.json() == {"result": "allow", "is_superuser": False}
    # a broker token can do nothing else
    assert (await client.get("/api/v1/devices", headers=broker.headers)).status_code == 403


async def test_authentication_decisions(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    uuid, psk = await _device(container)

    async def ask(**body: str) -> dict[str, object]:
        r = await client.post(AUTHN, json=body, headers=h)
        assert r.status_code == 200
        return dict(r.json())

    assert (await ask(username=uuid, clientid=uuid, password=psk.upper()))["result"] == "allow"
    assert (await ask(username=uuid, clientid=uuid, password="00" * 32))["result"] == "deny"
    assert (await ask(username=uuid, clientid="someone-else", password=psk))["result"] == "deny"
    assert (await ask(username=uuid, clientid=uuid, cert_common_name=uuid))["result"] == "allow"
    assert (await ask(username=uuid, clientid=uuid, cert_common_name="x"))["result"] == "deny"
    ghost = "00000000-0000-4000-8000-000000000000"
    assert (await ask(username=ghost, clientid=ghost, password=psk))["result"] == "deny"
    server = container.settings.mqtt.server_username
    password = container.settings.mqtt_server_password()
    assert await ask(username=server, clientid="edgefleet-a", password=password) == {
        "result": "allow",
        "is_superuser": True,
    }
    assert (await ask(username=server, clientid="x", password="wrong"))["result"] == "deny"
    # a deregistered gateway is refused at once (its cached key is forgotten)
    await container.fleet.delete_devices([uuid])
    assert (await ask(username=uuid, clientid=uuid, password=psk))["result"] == "deny"


async def test_authorisation_decisions(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    a, _ = await _device(container, "0090e8000001")
    b, _ = await _device(container, "0090e8000002")

    async def ask(user: str, topic: str, action: str) -> str:
        body = {"username": user, "clientid": user, "topic": topic, "action": action}
        r = await client.post(AUTHZ, json=body, headers=h)
        assert r.status_code == 200, r.text
        return str(r.json()["result"])

    assert await ask(a, f"$ThingsPro/devices/{a}/client", "publish") == "allow"
    assert await ask(a, f"$ThingsPro/devices/{a}/server", "subscribe") == "allow"
    assert await ask(a, f"$ThingsPro/devices/{b}/client", "publish") == "deny"
    assert await ask(a, "$ThingsPro/devices/+/server", "subscribe") == "deny"
    server = container.settings.mqtt.server_username
    assert await ask(server, "$ThingsPro/devices/+/client", "subscribe") == "allow"
    r = await client.post(AUTHZ, json={"username": a, "topic": "x", "action": "fly"}, headers=h)
    assert r.status_code == 422


async def test_psk_lookups_for_brokers(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    a, psk_a = await _device(container, "0090e8000001")
    b, psk_b = await _device(container, "0090e8000002")
    r = await client.get(f"/api/v1/broker/psk/{a}", headers=h)
    assert r.status_code == 200 and r.json() == {"identity": a, "psk": psk_a}
    assert (await client.get("/api/v1/broker/psk/nobody", headers=h)).status_code == 404
    r = await client.get("/api/v1/broker/psk-file", headers=h)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert sorted(r.text.splitlines()) == sorted([f"{a}:{psk_a}", f"{b}:{psk_b}"])


async def test_hook_calls_are_not_audited(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    broker = await callers.token(Role.ADMIN, Scope.BROKER)
    body = {"username": "u", "clientid": "u", "topic": "t", "action": "publish"}
    assert (await client.post(AUTHZ, json=body, headers=broker.headers)).status_code == 200
    authn = {"username": "u", "password": "p", "clientid": "u"}
    assert (await client.post(AUTHN, json=authn, headers=broker.headers)).status_code == 200
    assert await container.audit.query(AuditFilter(action="broker."), 10) == []
    # while a write through the API is
    writer = await callers.token(Role.ADMIN, Scope.READ_WRITE)
    await client.post("/api/v1/groups", json={"name": "g"}, headers=writer.headers)
    assert await container.audit.query(AuditFilter(action="groups."), 10) != []


async def test_broker_nodes_register_and_withdraw(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    """``edgefleet broker-node --advertise``'s calls: a broker token registers a node with
    its address (again and again: the latest address wins), the registry lists it until its
    withdrawal; a bad name or address is a 4xx JSON problem; any other token is refused."""
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    url = "/api/v1/broker/nodes/edge-a"
    r = await client.put(url, json={"address": "10.0.0.5:18830"}, headers=h)
    assert r.status_code == 200 and r.json() == {"name": "edge-a", "address": "10.0.0.5:18830"}
    r = await client.put(url, json={"address": "[fd00::5]:18830"}, headers=h)
    assert r.json() == {"name": "edge-a", "address": "[fd00::5]:18830"}
    assert [str(n) for n in await container.node_registry.live()] == ["edge-a=[fd00::5]:18830"]
    for bad_url, body in (
        ("/api/v1/broker/nodes/Edge-A", {"address": "10.0.0.5:18830"}),
        (url, {"address": "10.0.0.5"}),
        (url, {"address": "10.0.0.5:0"}),
        (url, {}),
    ):
        r = await client.put(bad_url, json=body, headers=h)
        assert r.status_code in (400, 422) and r.headers["content-type"].endswith("json"), body
    writer = await callers.token(Role.ADMIN, Scope.READ_WRITE)
    r = await client.put(url, json={"address": "10.0.0.6:1"}, headers=writer.headers)
    assert r.status_code == 403
    assert (await client.delete(url, headers=writer.headers)).status_code == 403
    assert (await client.delete(url, headers=h)).status_code == 204
    assert await container.node_registry.live() == []
    assert (await client.delete(url, headers=h)).status_code == 204  # gone already: fine
