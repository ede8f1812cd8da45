"""The gateway agent against the server's real broker (embedded Mosquitto, TLS-PSK).

Requests go through the server's relay, events are watched by a second client on the server
listener, downloads come from a real HTTP server, and a SIGTERM goes to a real process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edgefleet.agent import config as cfg
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.core import Agent
from edgefleet.bootstrap import Container
from edgefleet.protocol.psk import psk_client_context
from tests.gateways import Events, eventually, register
from tests.unit.test_agent_support import TOKEN, FileServer, serve_files


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serve_files() as server:
        yield server


def config_for(live: Container, uuid: str, psk: str, tmp_path: Path, **extra: Any) -> AgentConfig:
    doc: dict[str, Any] = {
        "remoteHost": "127.0.0.1",
        "remotePort": live.settings.mqtt.gateway_port,
        "deviceUUID": uuid,
        "psk": psk,
        "keepalive": 30,
        "dataDir": str(tmp_path / "agent-data"),
        "rebootCommand": ["sh", "-c", f"echo rebooted >> {tmp_path / 'reboots'}"],
        "properties": {"modelName": "UC-8112-LX-CG"},
        "configScopes": {"system": [str(tmp_path / "etc")]},
    }
    doc.update(extra)
    return AgentConfig.model_validate(doc)


async def start(agent: Agent) -> asyncio.Task[None]:
    task = asyncio.create_task(agent.run())
    done, _ = await asyncio.wait(
        [task, asyncio.create_task(agent.connected.wait())],
        timeout=15,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if task in done:
        task.result()
    assert agent.connected.is_set(), "the agent did not connect"
    return task


async def finish(agent: Agent, task: asyncio.Task[None]) -> None:
    agent.stop()
    await asyncio.wait_for(task, 15)


async def status_of(live: Container, uuid: str) -> str:
    return str((await live.fleet.get_device(uuid)).device.connection_status)


async def test_the_agent_answers_requests_from_the_server(live: Container, tmp_path: Path) -> None:
    [(uuid, psk)] = await register(live, 1)
    agent = Agent(config_for(live, uuid, psk, tmp_path))
    task = await start(agent)
    relay = live.messaging.relay

    r = await relay.request(uuid, "get", "/system/properties", wait=10)
    assert r.code == 200 and r.task_id and r.sign == ["edgefleet-agent"]
    assert isinstance(r.id, int) and r.resource == "/system/properties" and r.method == "get"
    assert r.data["modelName"] == "UC-8112-LX-CG"
    assert r.data["hostName"] == os.uname().nodename and r.data["uptime"] > 0
    assert r.data["macAddress"].count(":") == 5

    r = await relay.request(uuid, "get", "/system/properties/hostName", wait=10)
    assert r.code == 200 and r.data == os.uname().nodename
    r = await relay.request(uuid, "get", "/system/status?fields=uptimeSec,memoryUsage", wait=10)
    assert r.code == 200 and set(r.data) == {"uptimeSec", "memoryUsage"}
    r = await relay.request(uuid, "get", "/no/such/resource", wait=10)
    assert r.code == 404 and r.data == {"message": "Resource not found"}

    async def properties_cached() -> bool:  # the server asked for them when it came online
        view = await live.fleet.get_device(uuid)
        return view.device.model_name == "UC-8112-LX-CG"

    await eventually(properties_cached)
    assert await status_of(live, uuid) == "online"
    await finish(agent, task)


async def test_reboot_runs_the_command_after_the_answer_and_a_task_runs_once(
    live: Container, tmp_path: Path
) -> None:
    [(uuid, psk)] = await register(live, 1)
    agent = Agent(config_for(live, uuid, psk, tmp_path))
    task = await start(agent)
    relay = live.messaging.relay
    reboots = tmp_path / "reboots"

    first = await relay.request(
        uuid, "post", "/system/reboot", {"delay": 0.5}, wait=10, task_id="reboot-1"
    )
    assert first.code == 200 and first.data == {"delay": 0.5}

    async def rebooted() -> bool:
        return reboots.exists()

    await eventually(rebooted)
    again = await relay.request(
        uuid, "post", "/system/reboot", {"delay": 0.5}, wait=10, task_id="reboot-1"
    )
    assert again == first  # the stored answer, not a second run
    await agent.background.idle()
    assert reboots.read_text().splitlines() == ["rebooted"]
    assert agent.executed[("post", "/system/reboot")] == 1
    await finish(agent, task)

    # a restarted agent remembers the task too
    agent = Agent(config_for(live, uuid, psk, tmp_path))
    task = await start(agent)
    third = await relay.request(
        uuid, "post", "/system/reboot", {"delay": 0.5}, wait=10, task_id="reboot-1"
    )
    assert third == first
    await agent.background.idle()
    assert reboots.read_text().splitlines() == ["rebooted"]
    assert agent.executed[("post", "/system/reboot")] == 0
    await finish(agent, task)


async def test_firmware_is_downloaded_verified_and_reported(
    live: Container, tmp_path: Path, file_server: FileServer, events: Events
) -> None:
    [(uuid, psk)] = await register(live, 1)
    installed = tmp_path / "installed"
    agent = Agent(
        config_for(
            live,
            uuid,
            psk,
            tmp_path,
            firmwareInstallCommand=["cp", "{file}", str(installed)],
        )
    )
    task = await start(agent)
    relay = live.messaging.relay
    image = os.urandom(300_000)
    file_server.files["fw-1.2.3.img"] = image
    good = {
        "url": file_server.url("fw-1.2.3.img"),
        "headers": {"mx-api-token": TOKEN},
        "size": len(image),
        "sha256": hashlib.sha256(image).hexdigest(),
    }

    data = {"delay": 0, "file": good, "version": "1.2.3"}
    r = await relay.request(uuid, "post", "/system/firmware", data, wait=10)
    assert r.code == 200 and r.data["status"] == "accepted"

    async def reported() -> bool:
        return len(events.final(uuid)) == 1

    await eventually(reported)
    [final] = events.final(uuid)
    assert final["code"] == "FW_UPGRADE_SUCCESS" and final["sha256"] == good["sha256"]
    assert final["version"] == "1.2.3"
    assert installed.read_bytes() == image
    progress = [d["progress"] for d in events.firmware(uuid) if "progress" in d]
    assert progress[0] == 0 and progress[-1] == 100 and progress == sorted(progress)
    assert ("GET", "/files/fw-1.2.3.img", TOKEN) in file_server.requests
    # then the reboot (rebootAfterFirmware), after rebootDelay
    busy = await relay.request(uuid, "post", "/system/firmware", data, wait=10)
    assert busy.code == 409  # until the upgrade's reboot has run
    await agent.background.idle()
    assert (tmp_path / "reboots").read_text().splitlines() == ["rebooted"]
    assert [e.data for u, e in events.items if e.resource == "/system/reboot"] == [
        {"code": "REBOOTING"}
    ]

    bad = dict(good, sha256="0" * 64)
    r = await relay.request(uuid, "post", "/system/firmware", {"file": bad}, wait=10)
    assert r.code == 200

    async def failed() -> bool:
        return len(events.final(uuid)) == 2

    await eventually(failed)
    last = events.final(uuid)[-1]
    assert last["code"] == "FW_UPGRADE_FAIL" and "sha256 mismatch" in last["reason"]
    await finish(agent, task)


async def test_a_reboot_or_an_upgrade_not_yet_started_is_cancelled(
    live: Container, tmp_path: Path, file_server: FileServer, events: Events
) -> None:
    [(uuid, psk)] = await register(live, 1)
    agent = Agent(config_for(live, uuid, psk, tmp_path))
    task = await start(agent)
    relay = live.messaging.relay
    r = await relay.request(uuid, "post", "/system/reboot", {"delay": 30}, wait=10, task_id="rb")
    assert r.code == 200
    file_server.files["fw.img"] = b"image"
    ref = {"url": file_server.url("fw.img"), "headers": {"mx-api-token": TOKEN}}
    r = await relay.request(
        uuid, "post", "/system/firmware", {"delay": 30, "file": ref}, wait=10, task_id="fw"
    )
    assert r.code == 200
    for task_id in ("rb", "fw"):
        r = await relay.request(uuid, "delete", f"/system/tasks/{task_id}", wait=10)
        assert r.code == 200 and r.data == {"cancelled": True, "task_id": task_id}
    assert agent.background.running == 0
    r = await relay.request(uuid, "delete", "/system/tasks/rb", wait=10)
    assert r.code == 409 and r.data == {"message": "already finished"}
    r = await relay.request(uuid, "delete", "/system/tasks/unknown", wait=10)
    assert r.code == 404
    # both may start again at once: nothing is left pending
    r = await relay.request(uuid, "post", "/system/reboot", {"delay": 30}, wait=10)
    assert r.code == 200
    await finish(agent, task)
    assert not (tmp_path / "reboots").exists() and events.firmware(uuid) == []
    assert file_server.requests == []


async def test_stopping_the_agent_takes_the_device_offline(live: Container, tmp_path: Path) -> None:
    [(uuid, psk)] = await register(live, 1)
    agent = Agent(config_for(live, uuid, psk, tmp_path))
    task = await start(agent)

    async def online() -> bool:
        return await status_of(live, uuid) == "online"

    await eventually(online)
    await finish(agent, task)  # what SIGTERM does: "0" retained, then DISCONNECT
    assert task.done() and task.exception() is None

    async def offline() -> bool:
        return await status_of(live, uuid) == "offline"

    await eventually(offline)


async def test_the_agent_process_configures_runs_and_exits_on_sigterm(
    live: Container, tmp_path: Path
) -> None:
    [(uuid, psk)] = await register(live, 1)
    path = tmp_path / "agent.json"
    env = {**os.environ, "EDGEFLEET_AGENT_CONFIG": str(path)}
    mqtt_port = str(live.settings.mqtt.gateway_port)
    configure = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "edgefleet.agent.main", "configure"),
        *("--host", "127.0.0.1", "--port", mqtt_port, "--uuid", uuid, "--psk", psk),
        *("--data-dir", str(tmp_path / "data"), "--reboot-command", "true"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(configure.communicate(), 30)
    assert configure.returncode == 0, err.decode()
    assert cfg.is_private(path) and json.loads(path.read_text())["deviceUUID"] == uuid

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "edgefleet.agent.main", "run"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def online() -> bool:
            return await status_of(live, uuid) == "online"

        await eventually(online, 30)
        r = await live.messaging.relay.request(uuid, "get", "/system/properties/hostName", wait=10)
        assert r.code == 200 and r.data == os.uname().nodename
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert psk not in err.decode()  # the key is never logged

    async def offline() -> bool:
        return await status_of(live, uuid) == "offline"

    await eventually(offline)


async def test_the_agent_reconnects_when_its_session_is_taken_over(
    live: Container, tmp_path: Path
) -> None:
    [(uuid, psk)] = await register(live, 1)
    agent = Agent(config_for(live, uuid, psk, tmp_path))
    task = await start(agent)
    assert agent.connections == 1
    # the same client id connecting again makes the broker drop the agent's session
    async with aiomqtt.Client(
        "127.0.0.1",
        live.settings.mqtt.gateway_port,
        identifier=uuid,
        tls_context=psk_client_context(uuid, psk),
    ):
        pass

    async def reconnected() -> bool:
        return agent.connections >= 2 and agent.connected.is_set()

    await eventually(reconnected)
    r = await live.messaging.relay.request(uuid, "get", "/system/properties/uptime", wait=10)
    assert r.code == 200 and r.data > 0
    await finish(agent, task)
