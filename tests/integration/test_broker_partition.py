"""The broker tier of independent nodes (``mqtt.nodes``, docs/scaling.md): three Mosquitto
nodes behind nginx's TCP proxy, two ``edgefleet serve`` instances on PostgreSQL that share
the nodes by lease, 300 simulated gateways (the issue's figure).

Each connect costs one presence write and one property request in all, events are stored
once, a request answered through a node another instance consumes still gets its answer; a
group task reaches each gateway once although a node is killed (SIGKILL) in its middle: the
node's gateways come back through the others and finish it, those that do not are marked
offline after the grace (and finish it when they come back); an instance
killed (SIGKILL): its leases move within 15 s and what its nodes queued meanwhile is not
lost.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from edgefleet.brokers import mosquitto
from edgefleet.db.tables import BrokerLease, Device
from edgefleet.settings import MQTTSettings
from edgefleet.simulator.gateway import Behaviour, VirtualGateway
from tests.brokers import RunningMosquitto, free_port, start_mosquitto
from tests.gateways import PROPS
from tests.pgserver import PostgresServer
from tests.processes import STREAM_MODULE, edgefleet_cli, eventually, fresh_database, nginx_binary

SECRET = "broker-nodes-test-secret-key-not-for-production"
PASSWORD = "broker-nodes-server-password"
N = 300
GRACE = 5
PROPERTIES = ("get", "/system/properties")


@dataclass
class Instance:
    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Tier:
    nodes: dict[str, RunningMosquitto]
    instances: list[Instance]
    gateway_port: int
    database_url: str

    def reload_keys(self, psks: list[tuple[str, str]]) -> None:
        for node in self.nodes.values():
            mosquitto.write_all(node.files, node.mqtt, PASSWORD, psks)
            assert mosquitto.reload(node.files)

    def diagnosis(self) -> str:
        return "\n".join(
            f"--- {i.name}\n{i.log.read_text()[-3000:]}" for i in self.instances if i.log.exists()
        )


@pytest.fixture
def database_url(pg_server: PostgresServer) -> Iterator[str]:
    with fresh_database(pg_server, "edgefleet_nodes") as url:
        yield url


def _ready(instance: Instance) -> bool:
    assert instance.proc is not None
    assert instance.proc.poll() is None, instance.log.read_text()[-3000:]
    try:
        return httpx.get(instance.url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _wait(check: object, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.2)


@pytest.fixture
def tier(tmp_path: Path, database_url: str) -> Iterator[Tier]:
    if not STREAM_MODULE.exists():
        nginx_binary(stream=True)  # fails, saying what to install
    procs: list[subprocess.Popen[bytes]] = []
    nodes: dict[str, RunningMosquitto] = {}
    dirs: list[Path] = []
    try:
        for name in ("m1", "m2", "m3"):
            mqtt = MQTTSettings(
                gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port()
            )
            # not under tmp_path: a broker started as root drops to the mosquitto user
            directory = Path(tempfile.mkdtemp(prefix=f"edgefleet-{name}-"))
            dirs.append(directory)
            files = mosquitto.MosquittoFiles(directory)
            mosquitto.write_all(files, mqtt, PASSWORD, [])
            nodes[name] = start_mosquitto(files, mqtt, PASSWORD)
        lb = free_port()
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        prefix.chmod(0o777)
        upstream = "".join(
            f"server 127.0.0.1:{n.mqtt.gateway_port} max_fails=1 fail_timeout=30s; "
            for n in nodes.values()
        )
        (prefix / "nginx.conf").write_text(
            f"""
load_module {STREAM_MODULE};
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
stream {{
  upstream gateways {{ {upstream} }}
  proxy_connect_timeout 1s;
  server {{ listen 127.0.0.1:{lb}; proxy_pass gateways; }}
}}
"""
        )
        procs.append(
            subprocess.Popen(
                [
                    *(nginx_binary(stream=True), "-p", str(prefix)),
                    *("-c", str(prefix / "nginx.conf"), "-g", "daemon off;"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        base |= {
            "EDGEFLEET_DATABASE_URL": database_url,
            "EDGEFLEET_SECRET_KEY": SECRET,
            "EDGEFLEET_STORAGE__URL": f"file://{tmp_path / 'files'}",
            "EDGEFLEET_MQTT__EMBEDDED": "false",
            "EDGEFLEET_MQTT__SERVER_PASSWORD": PASSWORD,
            "EDGEFLEET_MQTT__NODES": ",".join(
                f"{name}=127.0.0.1:{n.mqtt.server_port}" for name, n in nodes.items()
            ),
            "EDGEFLEET_MQTT__NODE_GRACE_SECONDS": str(GRACE),
            "EDGEFLEET_MQTT__GATEWAY_HOST": "127.0.0.1",
            "EDGEFLEET_MQTT__GATEWAY_PORT": str(lb),
            "EDGEFLEET_LOG_LEVEL": "INFO",
        }
        instances = []
        for name in ("a", "b"):
            port = free_port()
            env = base | {
                "EDGEFLEET_DATA_DIR": str(tmp_path / name),
                "EDGEFLEET_HTTP__PORT": str(port),
                "EDGEFLEET_MQTT__CLIENT_ID": f"edgefleet-{name}",
            }
            instances.append(Instance(name, port, env, tmp_path / f"{name}.log"))
        for inst in instances:
            inst.proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli.main", "serve"],
                env=inst.env,
                stdout=inst.log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            procs.append(inst.proc)
            # one after the other: the first makes the admin account
            _wait(lambda inst=inst: _ready(inst), f"instance {inst.name} ready")
        yield Tier(nodes, instances, lb, database_url)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for node in nodes.values():
            if node.proc.poll() is None:
                node.stop()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


async def _metric(url: str, name: str, labels: dict[str, str]) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url + "/metrics/")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def _status_writes(t: Tier) -> float:
    return sum(
        [
            await _metric(i.url, "edgefleet_presence_rows_written_total", {"kind": "status"})
            for i in t.instances
            if i.proc is not None and i.proc.poll() is None
        ]
    )


# A gateway registered a moment ago is refused by the nodes until they reloaded its key, and
# paho does not close a socket whose handshake failed (a ResourceWarning). Expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_two_instances_share_three_nodes_and_survive_the_death_of_each(
    tier: Tier,
) -> None:
    a, b = tier.instances
    edgefleet_cli(
        a.env, "users", "create", "ops@example.com", "--role", "operator",
        "--password-stdin", stdin="broker nodes test password\n",
    )  # fmt: skip
    token = edgefleet_cli(
        a.env, "tokens", "create", "--user", "ops@example.com", "--scope", "read/write"
    )
    engine = create_async_engine(tier.database_url)

    async def leases() -> dict[str, str]:
        async with engine.connect() as conn:
            rows = await conn.execute(select(BrokerLease.node, BrokerLease.holder))
            return {n: h for n, h in rows}

    async def nodes_of() -> dict[str, str | None]:
        async with engine.connect() as conn:
            rows = await conn.execute(select(Device.uuid, Device.broker_node))
            return {u: n for u, n in rows}

    async def balanced() -> bool:
        held = await leases()
        per = sorted(list(held.values()).count(h) for h in ("edgefleet-a", "edgefleet-b"))
        return len(held) == 3 and per == [1, 2]

    h = {"mx-api-token": token}
    gws: list[VirtualGateway] = []
    runs: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(base_url=a.url, headers=h, timeout=60) as api:
        try:
            await eventually(balanced, "the three leases shared 2 + 1", 40)
            creds = []
            for i in range(N):
                r = await api.post(
                    "/api/v1/devices", json={"displayName": f"g{i}", "mac": f"0090e830{i:04x}"}
                )
                assert r.status_code == 200, r.text
                creds.append((r.json()["uuid"], r.json()["psk"]))
            uuids = [u for u, _ in creds]
            tier.reload_keys(creds)
            writes_before = await _status_writes(tier)
            gws = [
                # answers take 2 s: a node can die between a request and its answer
                VirtualGateway(
                    u,
                    k,
                    "127.0.0.1",
                    tier.gateway_port,
                    dict(PROPS),
                    behaviour=Behaviour(latency=2),
                )
                for u, k in creds
            ]
            runs = [asyncio.create_task(g.serve()) for g in gws]

            async def online() -> set[str]:
                r = await api.get("/api/v1/devices", params={"q": "status = online", "limit": 1000})
                return {d["uuid"] for d in r.json()["data"]}

            async def all_online() -> bool:
                return await online() == set(uuids)

            await eventually(all_online, "every gateway online")
            placed = await nodes_of()
            spread = {n: [u for u in uuids if placed[u] == n] for n in tier.nodes}
            assert all(spread.values()), f"a node has no gateway: {spread}"

            async def properties_read() -> bool:
                return all(g.executed[PROPERTIES] >= 1 for g in gws)

            await eventually(properties_read, "properties read from every gateway")
            await asyncio.sleep(2)  # a second request would have come by now
            # each connect: one property request, one status write, one online event, in all
            assert [g.sessions for g in gws] == [1] * N
            assert [g.executed[PROPERTIES] for g in gws] == [1] * N
            assert await _status_writes(tier) - writes_before == N
            r = await api.get("/api/v1/events", params={"type": "device_online", "limit": 1000})
            assert sorted(e["deviceUUID"] for e in r.json()["data"]) == sorted(uuids)

            # a request through either instance reaches a gateway on a node the other consumes
            held = await leases()
            for inst in (a, b):
                mine = {n for n, holder in held.items() if holder == f"edgefleet-{inst.name}"}
                other = next(u for u in uuids if placed[u] not in mine)
                body = {"method": "get", "resource": "/system/properties/modelName"}
                async with httpx.AsyncClient(base_url=inst.url, headers=h, timeout=30) as direct:
                    r = await direct.post(
                        "/api/v1/deviceTasks", json={"deviceUUID": other, "payload": body}
                    )
                assert r.status_code == 200, r.text
                assert r.json()["code"] == 200

            # a group task reaches each gateway once, although a node is killed (SIGKILL) in
            # its middle: the node's gateways come back through the others and finish it;
            # those that do not come back are offline after the grace
            received = [g.requests for g in gws]
            r = await api.post("/api/v1/groups", json={"name": "plant"})
            group = r.json()["id"]
            r = await api.post(f"/api/v1/groups/{group}/devices", json=uuids)
            assert r.status_code == 200, r.text
            r = await api.post(
                "/api/v1/groupTasks",
                json={"groupId": group, "payload": {"method": "get", "resource": "/system/status"}},
            )
            assert r.status_code == 200, r.text

            async def all_received() -> bool:
                return all(g.requests > n for g, n in zip(gws, received, strict=True))

            await eventually(all_received, "every gateway got the task's request", 30)
            victim = max(spread, key=lambda n: len(spread[n]))
            on_victim = [i for i, u in enumerate(uuids) if placed[u] == victim]
            cut_off = on_victim[: max(1, len(on_victim) // 3)]
            stranded = {uuids[i] for i in cut_off}
            moved = {uuids[i] for i in on_victim} - stranded
            for i in cut_off:  # gone with no word (their wills die with the node)
                runs[i].cancel()
            await asyncio.gather(*(runs[i] for i in cut_off), return_exceptions=True)
            node_killed = datetime.now(UTC)
            tier.nodes[victim].proc.send_signal(signal.SIGKILL)
            tier.nodes[victim].proc.wait()

            def unequal_reads() -> dict[str, tuple[int, int]]:
                """Gateways whose property reads are not one per connection."""
                reads = {g.uuid: (g.executed[PROPERTIES], g.sessions) for g in gws}
                return {u: v for u, v in reads.items() if v[0] != v[1]}

            async def reads_caught_up() -> bool:
                return not unequal_reads()

            async def settled() -> bool:
                return await online() == set(uuids) - stranded

            await eventually(settled, "moved gateways online, the stranded offline", 60)
            placed = await nodes_of()
            assert [u for u in moved if placed[u] == victim] == []
            sessions = {g.uuid: g.sessions for g in gws}
            assert {u: n for u, n in sessions.items() if n != (2 if u in moved else 1)} == {}
            # each reconnection: one property request (answered 2 s later)
            await eventually(reads_caught_up, "properties read after each reconnection", 30)
            await asyncio.sleep(2)  # a second request would have come by now
            assert unequal_reads() == {}
            r = await api.get("/api/v1/events", params={"type": "device_offline", "limit": 1000})
            offline = r.json()["data"]
            assert sorted(e["deviceUUID"] for e in offline) == sorted(stranded)
            # not before the grace
            grace_over = node_killed + timedelta(seconds=GRACE)
            assert all(datetime.fromisoformat(e["at"]) >= grace_over for e in offline), offline
            for i in cut_off:  # back, through the load balancer, to a live node
                runs[i] = asyncio.create_task(gws[i].serve())
            states: dict[str, str] = {}

            async def task_done() -> bool:
                r = await api.get(f"/api/v1/groups/{group}")
                states.clear()
                states.update({t["deviceUUID"]: t["state"] for t in r.json()["tasks"]})
                return len(states) == N and all(
                    s in ("SUCCESS", "FAILURE") for s in states.values()
                )

            await eventually(task_done, "group task done", 90)
            assert set(states.values()) == {"SUCCESS"}, states
            assert [g.executed[("get", "/system/status")] for g in gws] == [1] * N
            assert await online() == set(uuids)
            await eventually(reads_caught_up, "properties read after each reconnection", 30)
            assert unequal_reads() == {}

            # kill -9 an instance that consumes a live node: its leases move to the other
            # within 15 s, and what its nodes received meanwhile reaches the other
            held = await leases()
            alive = [n for n in tier.nodes if n != victim]
            dying, survivor = (b, a) if any(held[n] == "edgefleet-b" for n in alive) else (a, b)
            orphaned = {n for n in alive if held[n] == f"edgefleet-{dying.name}"}
            leaving = next(
                i for i, u in enumerate(uuids) if placed[u] in orphaned and u not in stranded
            )
            assert dying.proc is not None
            dying.proc.send_signal(signal.SIGKILL)
            dying.proc.wait()
            killed = time.monotonic()
            await gws[leaving].go_offline()  # queued in the node's session for its consumer

            async def moved_over() -> bool:
                held = await leases()
                return all(held.get(n) == f"edgefleet-{survivor.name}" for n in alive)

            await eventually(moved_over, f"every live node's lease with {survivor.name}", 20)
            assert time.monotonic() - killed <= 15
            gone = uuids[leaving]
            async with httpx.AsyncClient(base_url=survivor.url, headers=h, timeout=60) as api2:

                async def left() -> bool:
                    r = await api2.get(
                        "/api/v1/events", params={"type": "device_offline", "limit": 1000}
                    )
                    return gone in {e["deviceUUID"] for e in r.json()["data"]}

                await eventually(left, "the status sent while no one consumed, recorded", 30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{tier.diagnosis()}") from None
        finally:
            for t in runs:
                t.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            await engine.dispose()
