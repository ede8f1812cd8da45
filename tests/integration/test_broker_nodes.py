"""The Mosquitto node tier (issue 20): three independent Mosquittos, each run by
``edgefleet broker-node --run`` in a process of its own on ports of its own, following a real
server (the app over HTTP, on PostgreSQL) with a broker-scope token and no database.

Gateways are registered and deleted over REST; their keys reach every node within seconds; a
deleted gateway is disconnected and refused on every node; a gateway's key cannot pose as
another gateway, nor reach another gateway's topics, on any node; and a node keeps serving
the keys it has while the server is unreachable, across a restart of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx
import pytest
import typer
from prometheus_client import REGISTRY
from pydantic import SecretStr
from typer.testing import CliRunner

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.brokers.node import KICKER, BrokerNode, NodeConfig
from edgefleet.cli.node import broker_node
from edgefleet.db.engine import Database
from edgefleet.domain.auth import Role, Scope
from edgefleet.protocol.psk import psk_client_context
from edgefleet.protocol.topics import Channel, topic
from edgefleet.services.keys import SYNC_ANSWERS
from edgefleet.settings import MQTTSettings, Settings
from tests.brokers import free_port, require, start_mosquitto
from tests.conftest import Callers
from tests.httpserver import bound_socket, serving
from tests.processes import eventually

# paho does not close a socket whose TLS-PSK handshake was refused (it is collected with a
# ResourceWarning): expected here, where refusals are what is checked.
pytestmark = [
    pytest.mark.postgresql_only,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

SERVER_PASSWORD = "broker-node-test-server-password"
SERVER_USER = "edgefleet-server"


@dataclass
class Node:
    name: str
    directory: Path
    gateway_port: int
    server_port: int
    log: Path
    hashed: bool = False
    """Given the server's password as a mosquitto_passwd hash (--server-passwd-file)."""
    proc: subprocess.Popen[bytes] | None = None
    options: tuple[str, ...] = ()
    """More options of broker-node (--name, --advertise)."""

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def broker_log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text() if path.exists() else ""


@dataclass
class Tier:
    url: str
    secrets: Path
    api: httpx.AsyncClient
    nodes: list[Node] = field(default_factory=list)
    stop_server: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def start(self, node: Node) -> None:
        command = [
            *(sys.executable, "-m", "edgefleet.cli.main", "broker-node", "--run"),
            *("--server-url", self.url, "--dir", str(node.directory)),
            *("--token-file", str(self.secrets / "broker.token")),
            *(
                ("--server-passwd-file", str(self.secrets / "server.passwd"))
                if node.hashed
                else ("--server-password-file", str(self.secrets / "server.password"))
            ),
            *("--gateway-host", "127.0.0.1", "--gateway-port", str(node.gateway_port)),
            *("--server-host", "127.0.0.1", "--server-port", str(node.server_port)),
            *("--sync-seconds", "0.3", "--full-seconds", "1"),
            *node.options,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        with node.log.open("ab") as out:
            node.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def diagnosis(self) -> str:
        return "\n".join(
            f"--- {n.name}\n{n.output()[-3000:]}\n{n.broker_log()[-2000:]}" for n in self.nodes
        )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.fixture
def base() -> Iterator[Path]:
    """Not under tmp_path: its parents are private to root, and Mosquitto started as root
    drops to the mosquitto user, who must reach its directory."""
    path = Path(tempfile.mkdtemp(prefix="edgefleet-nodes-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_passwd(base: Path) -> Path:
    """The server user's hash, made where the password is (here: by the test) with
    mosquitto_passwd, for a node given --server-passwd-file: that node never sees the password."""
    secrets = base / "secrets"
    secrets.mkdir(mode=0o700)
    path = secrets / "server.passwd"
    path.write_text(f"{SERVER_USER}:{SERVER_PASSWORD}\n")
    subprocess.run([require("mosquitto_passwd"), "-U", str(path)], check=True)
    return path


@pytest.fixture
async def tier(container: Container, base: Path, server_passwd: Path) -> AsyncIterator[Tier]:
    require("mosquitto")
    callers = Callers(container)
    broker = await callers.token(Role.ADMIN, Scope.BROKER)
    writer = await callers.token(Role.OPERATOR, Scope.READ_WRITE)
    secrets = server_passwd.parent
    (secrets / "broker.token").write_text(broker.headers["mx-api-token"] + "\n")
    (secrets / "server.password").write_text(SERVER_PASSWORD + "\n")
    stack = contextlib.AsyncExitStack()
    sock = bound_socket()
    url = await stack.enter_async_context(serving(create_app(container), sock))
    async with httpx.AsyncClient(base_url=url, headers=writer.headers, timeout=30) as api:
        t = Tier(url, secrets, api, stop_server=stack)
        t.nodes = [
            Node(f"n{i}", base / f"n{i}", free_port(), free_port(), base / f"n{i}.out", i == 3)
            for i in (1, 2, 3)
        ]
        try:
            for node in t.nodes:
                t.start(node)
            for node in t.nodes:

                async def serves(n: Node = node) -> bool:
                    assert n.proc is not None and n.proc.poll() is None, t.diagnosis()
                    return await server_connects(n)

                await eventually(serves, f"{node.name} accepts the server", 30)
            yield t
        finally:
            # in threads: the server the nodes may be talking to runs on this event loop
            codes = await asyncio.gather(
                *(asyncio.to_thread(_stop, n.proc) for n in t.nodes if n.proc is not None)
            )
            await stack.aclose()
            sock.close()
        assert codes == [0, 0, 0], t.diagnosis()  # SIGTERM: Mosquitto stopped, clean exit


def server_client(node: Node, identifier: str = "") -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        node.server_port,
        username=SERVER_USER,
        password=SERVER_PASSWORD,
        identifier=identifier or None,
        timeout=5,
    )


def gateway_client(
    node: Node, uuid: str, psk: str, identifier: str | None = None
) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        node.gateway_port,
        identifier=uuid if identifier is None else identifier,
        tls_context=psk_client_context(uuid, psk),
        timeout=5,
    )


async def server_connects(node: Node) -> bool:
    try:
        async with server_client(node):
            return True
    except aiomqtt.MqttError:
        return False


async def connects(node: Node, uuid: str, psk: str) -> bool:
    try:
        async with gateway_client(node, uuid, psk):
            return True
    except aiomqtt.MqttError:
        return False


async def register(api: httpx.AsyncClient, name: str, mac: str) -> tuple[str, str]:
    r = await api.post("/api/v1/devices", json={"displayName": name, "mac": mac})
    assert r.status_code == 200, r.text
    return r.json()["uuid"], r.json()["psk"]


async def on_every_node(tier: Tier, uuid: str, psk: str, expected: bool) -> bool:
    results = await asyncio.gather(*(connects(n, uuid, psk) for n in tier.nodes))
    return all(r is expected for r in results)


def _answers(kind: str) -> float:
    """The server's count of key-sync answers of ``kind`` (this process's registry)."""
    value = REGISTRY.get_sample_value(f"{SYNC_ANSWERS._name}_total", {"answer": kind})
    return value or 0.0


async def test_keys_reach_every_node_and_a_deleted_gateway_is_closed_and_refused_on_all(
    tier: Tier,
) -> None:
    a = await register(tier.api, "a", "0090e8000001")
    await eventually(lambda: on_every_node(tier, *a, True), "a connects on every node", 15)
    # nothing changes: the nodes keep asking (the changes since their cursor, and the whole
    # file by its ETag now and then: 304), but neither rewrite nor reload
    reloads = [n.broker_log().count("Reloading config.") for n in tier.nodes]
    asked, unchanged = _answers("changes"), _answers("unchanged")

    async def asked_again() -> bool:
        return _answers("changes") >= asked + 3 * len(tier.nodes) and _answers(
            "unchanged"
        ) >= unchanged + len(tier.nodes)

    await eventually(asked_again, "the nodes asked for changes and checked the ETag", 15)
    assert [n.broker_log().count("Reloading config.") for n in tier.nodes] == reloads
    for n in tier.nodes:
        assert (n.directory / "psk.txt").read_text() == f"{a[0]}:{a[1]}\n"
        assert (n.directory / "psk.txt").stat().st_mode & 0o077 == 0

    # a gateway that stays connected to every node while it is deleted
    held: list[aiomqtt.Client] = []
    async with contextlib.AsyncExitStack() as stack:
        for n in tier.nodes:
            held.append(await stack.enter_async_context(gateway_client(n, *a)))
        r = await tier.api.delete(f"/api/v1/devices/{a[0]}")
        assert r.status_code in (200, 204), r.text

        async def closed(client: aiomqtt.Client) -> None:
            with pytest.raises(aiomqtt.MqttError):
                async for _ in client.messages:
                    pass

        # Mosquitto re-reads its keys but keeps the sessions it has: the node closes them
        await asyncio.wait_for(asyncio.gather(*(closed(c) for c in held)), 15)
    await eventually(lambda: on_every_node(tier, *a, False), "a is refused everywhere", 15)
    for n in tier.nodes:
        assert (n.directory / "psk.txt").read_text() == ""

        async def kicked(n: Node = n) -> bool:
            return f"closed the session of gateway {a[0]}" in n.output()

        await eventually(kicked, f"{n.name} says it closed a's session", 10)
        # taken over once, by the node's own user on the server listener
        takeover = re.findall(
            rf"Client {a[0]} already connected, closing old connection\.\n"
            rf"\d+: New client connected from \S+ as {a[0]} \(.*u'([^']+)'\)",
            n.broker_log(),
        )
        assert takeover == [KICKER], tier.diagnosis()
    # no secret in what the nodes logged
    token = (tier.secrets / "broker.token").read_text().strip()
    for n in tier.nodes:
        for secret in (token, SERVER_PASSWORD, a[1]):
            assert secret not in n.output()
        assert SERVER_PASSWORD not in (n.directory / "passwd").read_text()


async def test_a_gateways_key_cannot_pose_as_another_gateway_nor_use_its_topics_on_any_node(
    tier: Tier,
) -> None:
    a = await register(tier.api, "a", "0090e8000001")
    b = await register(tier.api, "b", "0090e8000002")

    async def both_everywhere() -> bool:
        return await on_every_node(tier, *a, True) and await on_every_node(tier, *b, True)

    await eventually(both_everywhere, "a and b connect on every node", 15)
    ua, ub = a[0], b[0]
    for node in tier.nodes:
        async with (
            server_client(node) as server,
            gateway_client(node, *b) as gb,
            # A's key with B's client id: the broker names the session after A's identity
            gateway_client(node, *a, identifier=ub) as ga,
        ):
            await server.subscribe("$ThingsPro/devices/+/client", qos=1)
            await gb.subscribe(topic(ub, Channel.SERVER), qos=1)
            await ga.subscribe(topic(ub, Channel.SERVER), qos=1)  # B's requests: denied
            await ga.subscribe(topic(ua, Channel.SERVER), qos=1)
            # A forges B's answer, then says something on its own topic
            await ga.publish(topic(ub, Channel.CLIENT), b"forged", qos=1)
            await ga.publish(topic(ua, Channel.CLIENT), b"own", qos=1)
            heard = await asyncio.wait_for(anext(aiter(server.messages)), 10)
            assert (str(heard.topic), heard.payload) == (topic(ua, Channel.CLIENT), b"own")
            # the server asks B, then A: B gets its request, A only its own
            await server.publish(topic(ub, Channel.SERVER), b"for b", qos=1)
            await server.publish(topic(ua, Channel.SERVER), b"for a", qos=1)
            got_b = await asyncio.wait_for(anext(aiter(gb.messages)), 10)
            assert got_b.payload == b"for b"  # B was not kicked by A's use of its id
            got_a = await asyncio.wait_for(anext(aiter(ga.messages)), 10)
            assert (str(got_a.topic), got_a.payload) == (topic(ua, Channel.SERVER), b"for a")
        log = node.broker_log()
        assert f"as {ua} (" in log and f"Client {ub} already connected" not in log


async def test_a_node_keeps_serving_its_last_keys_while_the_server_is_unreachable(
    tier: Tier,
) -> None:
    a = await register(tier.api, "a", "0090e8000001")
    await eventually(lambda: on_every_node(tier, *a, True), "a connects on every node", 15)
    await tier.stop_server.aclose()  # the server goes away

    async def noticed() -> bool:
        return all("cannot reach the server" in n.output() for n in tier.nodes)

    await eventually(noticed, "every node says it cannot reach the server", 15)
    assert await on_every_node(tier, *a, True)
    # the node's Mosquitto dies: the node starts another, which serves the same keys
    dying = tier.nodes[1]
    pid = int((dying.directory / "mosquitto.pid").read_text())
    os.kill(pid, signal.SIGKILL)

    async def restarted_broker() -> bool:
        if "Mosquitto exited with -9" not in dying.output():
            return False
        return await connects(dying, *a)

    await eventually(restarted_broker, "the node restarts its Mosquitto", 30)
    # a node restarted meanwhile starts from the store it wrote last
    restarted = tier.nodes[0]
    assert restarted.proc is not None
    assert await asyncio.to_thread(_stop, restarted.proc) == 0
    tier.start(restarted)
    await eventually(lambda: connects(restarted, *a), "the restarted node serves a", 30)
    assert "kept from the last run" in restarted.output()
    assert all(n.proc is not None and n.proc.poll() is None for n in tier.nodes)


async def test_mosquittos_log_is_rotated_and_reopened_past_its_size(base: Path) -> None:
    mqtt = MQTTSettings(gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port())
    config = NodeConfig(
        server_url="http://127.0.0.1:9",
        token="unused",
        directory=base / "node",
        mqtt=mqtt,
        server_password=SERVER_PASSWORD,
        log_max_bytes=1,
    )
    node = BrokerNode(config)
    node.write_config()
    broker = start_mosquitto(node.files, mqtt, SERVER_PASSWORD)  # as a node without --run
    try:

        async def started() -> bool:
            return _has_content(node.files.log)

        await eventually(started, "Mosquitto logs its start", 10)
        assert node.rotate_log()
        old = node.files.log.with_name("mosquitto.log.1")
        assert "mosquitto version" in old.read_text()

        async def reopened() -> bool:  # SIGHUP: Mosquitto opens a new log and writes to it
            return node.files.log.exists()

        await eventually(reopened, "Mosquitto opens a new log", 10)
        async with aiomqtt.Client(
            "127.0.0.1", mqtt.server_port, username=SERVER_USER, password=SERVER_PASSWORD
        ):
            pass

        async def written() -> bool:
            return "New client connected" in node.files.log.read_text()

        await eventually(written, "the new log is written to", 10)
    finally:
        broker.stop()


def _has_content(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


@pytest.mark.parametrize("given", [(), ("password", "passwd")])
def test_the_node_takes_the_servers_credential_once(
    base: Path, server_passwd: Path, given: tuple[str, ...]
) -> None:
    (base / "token").write_text("t\n")
    (base / "password").write_text("p\n")
    args = ["--server-url", "http://127.0.0.1:9", "--token-file", str(base / "token")]
    args += ["--dir", str(base / "node")]
    if "password" in given:
        args += ["--server-password-file", str(base / "password")]
    if "passwd" in given:
        args += ["--server-passwd-file", str(server_passwd)]
    app = typer.Typer()
    app.command()(broker_node)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # rich's error box
    assert "give the server's MQTT credential once" in said
    assert not (base / "node").exists()


# --- the systemd unit ------------------------------------------------------------------------

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "edgefleet-broker-node.service"


def _exec_start() -> list[str]:
    text = UNIT.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_systemd_unit_runs_broker_node_with_options_it_has() -> None:
    app = typer.Typer()
    app.command()(broker_node)
    options = {o for p in typer.main.get_command(app).params for o in p.opts}
    argv = _exec_start()
    assert argv[:3] == ["/opt/edgefleet/bin/edgefleet", "broker-node", "--run"]
    used = {a for a in argv if a.startswith("--")}
    assert used <= options, used - options
    required = {"--server-url", "--token-file", "--server-passwd-file"}
    assert required <= used


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / UNIT.name
    edgefleet = Path(sys.executable).parent / "edgefleet"
    unit.write_text(UNIT.read_text().replace("/opt/edgefleet/bin/edgefleet", str(edgefleet)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


async def test_a_node_follows_the_server_with_its_provisioned_broker_token(
    settings: Settings, database: Database, base: Path, server_passwd: Path
) -> None:
    """The Helm chart's setup: no token created; the server's EDGEFLEET_BROKER_TOKEN is the
    node's --token-file, the server's MQTT password its --server-password-file."""
    require("mosquitto")
    token = secrets.token_urlsafe(32)
    container = build(settings.model_copy(update={"broker_token": SecretStr(token)}), db=database)
    writer = await Callers(container).token(Role.OPERATOR, Scope.READ_WRITE)
    files = server_passwd.parent
    (files / "broker.token").write_text(token + "\n")
    (files / "server.password").write_text(SERVER_PASSWORD + "\n")
    sock = bound_socket()
    async with (
        serving(create_app(container), sock) as url,
        httpx.AsyncClient(base_url=url, headers=writer.headers, timeout=30) as api,
    ):
        tier = Tier(url, files, api)
        node = Node("n1", base / "n1", free_port(), free_port(), base / "n1.out")
        tier.nodes = [node]
        tier.start(node)
        try:
            await eventually(lambda: server_connects(node), "n1 accepts the server", 30)
            a = await register(api, "a", "0090e8000001")
            await eventually(lambda: connects(node, *a), "a connects through n1", 15)
        finally:
            assert node.proc is not None
            code = await asyncio.to_thread(_stop, node.proc)
    sock.close()
    assert code == 0, tier.diagnosis()
    assert token not in node.output()


async def test_a_node_that_registers_itself_is_consumed_and_its_withdrawal_is_followed(
    settings: Settings, database: Database, base: Path, server_passwd: Path
) -> None:
    """The AWS setup: the servers list no node (mqtt.node_registration); a node run with
    --name and --advertise registers at every key sync, the server links to it and consumes
    it (a gateway connecting through it is online, on that node); the node stopped
    (SIGTERM) withdraws, the server drops it, and after the grace its gateways still held
    online there are offline."""
    require("mosquitto")
    token = secrets.token_urlsafe(32)
    mqtt = MQTTSettings(
        embedded=False,
        node_registration=True,
        server_username=SERVER_USER,
        server_password=SecretStr(SERVER_PASSWORD),
        node_grace_seconds=1,
    )
    update = {"broker_token": SecretStr(token), "mqtt": mqtt}
    container = build(settings.model_copy(update=update), db=database)
    writer = await Callers(container).token(Role.OPERATOR, Scope.READ_WRITE)
    files = server_passwd.parent
    (files / "broker.token").write_text(token + "\n")
    (files / "server.password").write_text(SERVER_PASSWORD + "\n")
    nodes = container.messaging.nodes
    assert nodes is not None and nodes.names == []
    sock = bound_socket()
    await container.start_messaging()
    try:
        async with (
            serving(create_app(container), sock) as url,
            httpx.AsyncClient(base_url=url, headers=writer.headers, timeout=30) as api,
        ):
            tier = Tier(url, files, api)
            server_port = free_port()
            node = Node("n1", base / "n1", free_port(), server_port, base / "n1.out")
            node.options = ("--name", "edge-a", "--advertise", f"127.0.0.1:{server_port}")
            tier.nodes = [node]
            tier.start(node)
            try:

                async def consumed() -> bool:
                    return nodes.consumed == ["edge-a"] and nodes.consumers_up.is_set()

                try:
                    await eventually(consumed, "the registered node consumed", 40)
                except AssertionError:
                    raise AssertionError(
                        f"{nodes.names} {nodes.consumed} {nodes.consumers_up.is_set()}\n"
                        + tier.diagnosis()
                    ) from None
                uuid, psk = await register(api, "a", "0090e8000001")
                await eventually(lambda: connects(node, uuid, psk), "a connects", 15)
                async with gateway_client(node, uuid, psk) as gw:
                    await gw.publish(topic(uuid, Channel.STATUS), b"1", qos=1)

                    async def online() -> bool:
                        r = await api.get(f"/api/v1/devices/{uuid}")
                        return bool(r.json()["connection"]["status"] == "online")

                    await eventually(online, "a online through the registered node", 15)
                    assert await container.fleet.presence(uuid) == ("online", "edge-a")
            finally:
                assert node.proc is not None
                code = await asyncio.to_thread(_stop, node.proc)
            assert code == 0, tier.diagnosis()

            async def dropped() -> bool:
                return nodes.names == []

            await eventually(dropped, "the withdrawn node dropped", 15)

            async def offline() -> bool:
                r = await api.get(f"/api/v1/devices/{uuid}")
                return bool(r.json()["connection"]["status"] == "offline")

            await eventually(offline, "its gateway offline after the grace", 20)
    finally:
        await container.stop_messaging()
        sock.close()
    assert token not in node.output()
