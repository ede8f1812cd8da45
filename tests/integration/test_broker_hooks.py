"""``/api/v1/broker/…``: the hooks brokers call, in EMQX's HTTP authn/authz shape."""

from __future__ import annotations

from datetime import timedelta

import httpx

from edgefleet.bootstrap import Container
from edgefleet.db.repos.nodes import NodeRepo
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
    its address (again and again), the registry lists it until its withdrawal; a bad name or
    address is a 4xx JSON problem; any other token is refused."""
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    url = "/api/v1/broker/nodes/edge-a"
    r = await client.put(url, json={"address": "[fd00::5]:18830"}, headers=h)
    assert r.status_code == 200
    assert r.json() == {"name": "edge-a", "address": "[fd00::5]:18830"}
    r = await client.put(url, json={"address": "[fd00::5]:18830"}, headers=h)
    assert r.status_code == 200
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


async def test_a_node_registers_only_a_private_ip_address(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    """A broker token (every broker node holds one) cannot point the servers, which send a
    registered node their MQTT password and gateways' requests, at an outside host, a cloud
    metadata address or a host name that may resolve anywhere: 400, nothing registered."""
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    url = "/api/v1/broker/nodes/evil"
    for address in (
        "203.0.113.7:1883",  # the internet
        "169.254.169.254:80",  # cloud metadata (link-local)
        "[fe80::1]:1883",
        "[::ffff:169.254.169.254]:80",  # the same, IPv4-mapped
        "[2001:db8::1]:1883",
        "0.0.0.0:1883",
        "224.0.0.1:1883",
        "evil.example.com:1883",  # a name: its answer may change after the check
        "localhost:1883",
    ):
        r = await client.put(url, json={"address": address}, headers=h)
        assert r.status_code == 400, address
        assert r.headers["content-type"].endswith("json"), address
    assert await container.node_registry.live() == []
    for address in ("10.1.2.3:18830", "172.16.0.9:18830", "192.168.1.2:18830", "[fd12::1]:1"):
        r = await client.put(url, json={"address": address}, headers=h)
        assert r.status_code == 200, address
        assert (await client.delete(url, headers=h)).status_code == 204


async def test_a_live_node_keeps_its_name(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    """A name a live node holds cannot be moved to another address (409: a second node
    misconfigured with the same name, or a token holder diverting a node's traffic); it
    moves once the node withdraws or its registration expires."""
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    url = "/api/v1/broker/nodes/edge-a"
    assert (await client.put(url, json={"address": "10.0.0.5:18830"}, headers=h)).is_success
    r = await client.put(url, json={"address": "10.0.0.66:18830"}, headers=h)
    assert r.status_code == 409 and r.headers["content-type"].endswith("json")
    assert [str(n) for n in await container.node_registry.live()] == ["edge-a=10.0.0.5:18830"]
    # the same node again at another port is another address too
    r = await client.put(url, json={"address": "10.0.0.5:1"}, headers=h)
    assert r.status_code == 409
    # expired: the name is free
    registry = container.node_registry
    later = registry.clock() + registry.ttl + timedelta(seconds=1)
    registry.clock = lambda: later
    r = await client.put(url, json={"address": "10.0.0.66:18830"}, headers=h)
    assert r.status_code == 200
    assert [str(n) for n in await registry.live()] == ["edge-a=10.0.0.66:18830"]
    # withdrawn: free at once
    assert (await client.delete(url, headers=h)).status_code == 204
    assert (await client.put(url, json={"address": "10.0.0.7:18830"}, headers=h)).is_success


async def test_registered_nodes_are_capped(
    client: httpx.AsyncClient, container: Container, callers: Callers
) -> None:
    """Each registered node costs every server instance a link: one over
    ``mqtt.max_registered_nodes`` is refused (409) while a live one may still renew, and a
    place frees when a node withdraws."""
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    container.node_registry.limit = 2
    for i in (1, 2):
        r = await client.put(
            f"/api/v1/broker/nodes/n{i}", json={"address": f"10.0.0.{i}:1"}, headers=h
        )
        assert r.status_code == 200
    r = await client.put("/api/v1/broker/nodes/n3", json={"address": "10.0.0.3:1"}, headers=h)
    assert r.status_code == 409 and "max_registered_nodes" in r.json()["detail"]
    r = await client.put("/api/v1/broker/nodes/n2", json={"address": "10.0.0.2:1"}, headers=h)
    assert r.status_code == 200  # a renewal is not a new node
    assert (await client.delete("/api/v1/broker/nodes/n1", headers=h)).status_code == 204
    r = await client.put("/api/v1/broker/nodes/n3", json={"address": "10.0.0.3:1"}, headers=h)
    assert r.status_code == 200
    assert [n.name for n in await container.node_registry.live()] == ["n2", "n3"]


async def test_a_percent_encoded_broker_path_is_not_served(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    """The public proxies (the AWS ALB's rule, the Ingress's paths) keep /api/v1/broker/*
    from the internet by its path: ``/api/v1/%62roker/…`` (the same route once decoded)
    would slip past them, so it is a 404 here, even with a broker token; so is /metrics."""
    h = (await callers.token(Role.ADMIN, Scope.BROKER)).headers
    assert (await client.get("/api/v1/broker/psk-file", headers=h)).status_code == 200
    for path in (
        "/api/v1/%62roker/psk-file",
        "/api/v1/broker%2Fpsk-file",
        "/api/%761/broker/psk-file",
    ):
        r = await client.get(path, headers=h)
        assert r.status_code == 404, path
        assert r.headers["content-type"].endswith("json"), path
    # nor /metrics (no authentication), which the ALB keeps from the public the same way
    assert (await client.get("/metrics/")).status_code == 200
    for path in ("/%6Detrics/", "/%6detrics/", "/metric%73/"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].endswith("json"), path


async def test_a_registration_outside_the_networks_is_not_a_node(container: Container) -> None:
    """A row written before mqtt.node_networks was narrowed (or by a server configured with
    other networks) is not linked to: the servers check the address again as they read."""
    registry = container.node_registry
    now = registry.clock()
    async with container.db.session() as s:
        repo = NodeRepo(s)
        for name, host in (("old", "203.0.113.7"), ("meta", "169.254.169.254"), ("ok", "10.0.0.1")):
            await repo.register(name, host, 1883, now, live_since=now, limit=100)
    assert [str(n) for n in await registry.live()] == ["ok=10.0.0.1:1883"]
