"""Long-running requests on simulated gateways through the server's real broker: reboot,
firmware (downloaded from a real HTTP server), import, cancel, and at-least-once delivery.

Requests go through the server's relay; events are watched by a second client on the server
listener, as the server sees them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from edgefleet.bootstrap import Container
from edgefleet.simulator.gateway import Behaviour, VirtualGateway
from tests.gateways import PROPS, Events, eventually, register
from tests.unit.test_agent_support import TOKEN, FileServer, serve_files

IMAGE = os.urandom(300_000)
DIGEST = hashlib.sha256(IMAGE).hexdigest()
FAST = Behaviour(boot_seconds=1.5, reboot_delay=0.2, firmware_seconds=0.1)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serve_files() as server:
        server.files["fw-2.5.0.img"] = IMAGE
        server.files["config.tar.gz"] = b"not really a tar.gz"
        yield server


@pytest.fixture
async def stop() -> AsyncIterator[asyncio.Event]:
    """Set at teardown: every gateway served with it says offline and stops its jobs."""
    event = asyncio.Event()
    yield event
    event.set()


async def serve(
    live: Container, stop: asyncio.Event, behaviour: Behaviour = FAST
) -> tuple[VirtualGateway, asyncio.Task[None]]:
    """One registered gateway served (reconnecting, rebooting) until ``stop``, online."""
    [(uuid, psk)] = await register(live, 1)
    gw = VirtualGateway(
        uuid, psk, "127.0.0.1", live.settings.mqtt.gateway_port, dict(PROPS), behaviour=behaviour
    )
    task = asyncio.create_task(gw.serve(stop))
    await online(live, uuid)
    return gw, task


async def status_of(live: Container, uuid: str) -> str:
    return str((await live.fleet.get_device(uuid)).device.connection_status)


async def online(live: Container, uuid: str) -> None:
    async def check() -> bool:
        return await status_of(live, uuid) == "online"

    await eventually(check)


async def offline(live: Container, uuid: str) -> None:
    async def check() -> bool:
        return await status_of(live, uuid) == "offline"

    await eventually(check)


def firmware(file_server: FileServer, **file: Any) -> dict[str, Any]:
    ref = {
        "url": file_server.url("fw-2.5.0.img"),
        "headers": {"mx-api-token": TOKEN},
        "size": len(IMAGE),
        "sha256": DIGEST,
        **file,
    }
    return {"delay": 0, "file": ref, "version": "2.5.0"}


async def finish(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_a_reboot_takes_the_gateway_offline_and_it_comes_back(
    live: Container, events: Events, stop: asyncio.Event
) -> None:
    gw, task = await serve(live, stop)
    relay = live.messaging.relay
    r = await relay.request(gw.uuid, "post", "/system/reboot", wait=10)
    assert r.code == 200 and r.data == {}
    await offline(live, gw.uuid)  # the will: no DISCONNECT
    await online(live, gw.uuid)
    assert gw.reboots == 1 and gw.sessions == 2 and gw.failures == 0
    assert events.of(gw.uuid, "/system/reboot") == [(200, {"code": "REBOOTING"})]
    r = await relay.request(gw.uuid, "get", "/system/status", wait=10)
    assert r.code == 200 and r.data["uptimeSec"] < 5
    await finish(stop, task)
    assert not task.exception()


async def test_an_import_downloads_then_reboots(
    live: Container, file_server: FileServer, stop: asyncio.Event
) -> None:
    gw, task = await serve(live, stop)
    relay = live.messaging.relay
    ref = {"url": file_server.url("config.tar.gz"), "headers": {"mx-api-token": TOKEN}}
    r = await relay.request(gw.uuid, "put", "/system/import", {"file": ref}, wait=10)
    assert r.code == 400 and r.data == {"message": "scopes is required"}
    missing = {"url": file_server.url("nothing"), "headers": {"mx-api-token": TOKEN}}
    r = await relay.request(
        gw.uuid, "put", "/system/import", {"file": missing, "scopes": ["system"]}, wait=10
    )
    assert r.code == 400 and r.data == {"message": "download failed: HTTP 404"}
    assert gw.reboots == 0
    r = await relay.request(
        gw.uuid, "put", "/system/import", {"file": ref, "scopes": ["system"]}, wait=10
    )
    assert r.code == 200 and r.data["scopes"] == ["system"] and r.data["size"] == 19
    assert ("GET", "/files/config.tar.gz", TOKEN) in file_server.requests
    await offline(live, gw.uuid)
    await online(live, gw.uuid)
    assert gw.reboots == 1 and gw.sessions == 2
    await finish(stop, task)


async def test_firmware_is_downloaded_reported_and_the_gateway_returns_upgraded(
    live: Container, file_server: FileServer, events: Events, stop: asyncio.Event
) -> None:
    gw, task = await serve(live, stop)
    r = await live.messaging.relay.request(
        gw.uuid, "post", "/system/firmware", firmware(file_server), wait=10
    )
    assert r.code == 200 and r.data["status"] == "accepted"

    async def reported() -> bool:
        return len(events.firmware_results(gw.uuid)) == 1

    await eventually(reported)
    [(code, result)] = events.firmware_results(gw.uuid)
    assert code == 200
    assert result == {
        "code": "FW_UPGRADE_SUCCESS",
        "version": "2.5.0",
        "sha256": DIGEST,
        "size": len(IMAGE),
    }
    progress = events.progress(gw.uuid)
    assert progress[0] == 0 and progress[-1] == 100 and progress == sorted(progress)
    assert ("GET", "/files/fw-2.5.0.img", TOKEN) in file_server.requests

    async def upgraded() -> bool:  # back online, and the server asked for its properties
        device = (await live.fleet.get_device(gw.uuid)).device
        return device.properties.get("softwareVersion") == "2.5.0"

    await eventually(upgraded)
    assert await status_of(live, gw.uuid) == "online"
    assert gw.reboots == 1 and gw.sessions == 2 and gw.upgrades == 1
    await finish(stop, task)


async def test_a_sha256_mismatch_or_a_failed_install_fails_without_a_reboot(
    live: Container, file_server: FileServer, events: Events, stop: asyncio.Event
) -> None:
    gw, task = await serve(live, stop, Behaviour(boot_seconds=1.5, firmware_seconds=0.1))
    relay = live.messaging.relay
    bad = firmware(file_server, sha256="0" * 64)
    r = await relay.request(gw.uuid, "post", "/system/firmware", bad, wait=10)
    assert r.code == 200

    async def reported(n: int) -> bool:
        return len(events.firmware_results(gw.uuid)) == n

    await eventually(lambda: reported(1))
    [(code, result)] = events.firmware_results(gw.uuid)
    assert code == 500 and result["code"] == "FW_UPGRADE_FAIL"
    assert result["reason"].startswith("sha256 mismatch")
    gw.behaviour.firmware_failure_rate = 1.0  # now every install fails
    r = await relay.request(gw.uuid, "post", "/system/firmware", firmware(file_server), wait=10)
    assert r.code == 200
    await eventually(lambda: reported(2))
    code, result = events.firmware_results(gw.uuid)[-1]
    assert code == 500 and result == {
        "code": "FW_UPGRADE_FAIL",
        "reason": "simulated install failure",
    }

    async def ended() -> bool:  # the job is over: a reboot after its result would be in it
        return gw.jobs == {}

    await eventually(ended)
    assert gw.reboots == 0 and gw.sessions == 1 and gw.failed_upgrades == 2
    assert gw.properties["softwareVersion"] == PROPS["softwareVersion"]
    assert events.of(gw.uuid, "/system/reboot") == []
    await finish(stop, task)


async def test_a_running_firmware_job_is_cancelled_and_reports_nothing_more(
    live: Container, file_server: FileServer, events: Events, stop: asyncio.Event
) -> None:
    slow = Behaviour(boot_seconds=0.5, reboot_delay=30.0, firmware_seconds=30.0)
    gw, task = await serve(live, stop, slow)
    relay = live.messaging.relay
    r = await relay.request(
        gw.uuid, "post", "/system/firmware", firmware(file_server), wait=10, task_id="fw-1"
    )
    assert r.code == 200

    async def downloaded() -> bool:  # now "installing" for 30 s
        return 100 in events.progress(gw.uuid)

    await eventually(downloaded)
    r = await relay.request(gw.uuid, "delete", "/system/tasks/fw-1", wait=10, task_id="c-1")
    assert r.code == 200 and r.data == {"cancelled": True, "task_id": "fw-1"}
    assert gw.jobs == {} and gw.cancelled == 1
    # a redelivered cancel is answered from the cache; a new one finds the job over
    again = await relay.request(gw.uuid, "delete", "/system/tasks/fw-1", wait=10, task_id="c-1")
    assert again == r and gw.cancelled == 1
    r = await relay.request(gw.uuid, "delete", "/system/tasks/fw-1", wait=10)
    assert r.code == 409 and r.data == {"message": "already finished"}
    r = await relay.request(gw.uuid, "delete", "/system/tasks/nobody", wait=10)
    assert r.code == 404 and r.data["message"]

    # a reboot still in its delay is cancelled too
    r = await relay.request(gw.uuid, "post", "/system/reboot", wait=10, task_id="rb-1")
    assert r.code == 200
    r = await relay.request(gw.uuid, "delete", "/system/tasks/rb-1", wait=10)
    assert r.code == 200 and r.data == {"cancelled": True, "task_id": "rb-1"}

    await relay.request(gw.uuid, "get", "/system/properties", wait=10, task_id="after")
    await events.caught_up(gw.uuid, "after")  # what the gateway sent before is in
    assert events.firmware_results(gw.uuid) == [] and events.of(gw.uuid, "/system/reboot") == []
    assert gw.reboots == 0 and gw.sessions == 1 and gw.cancelled == 2
    assert gw.executed[("delete", "/system/tasks/fw-1")] == 2  # c-1 once, then the 409
    await finish(stop, task)


async def test_a_redelivered_firmware_request_runs_once(
    live: Container, file_server: FileServer, events: Events, stop: asyncio.Event
) -> None:
    gw, task = await serve(live, stop)
    relay = live.messaging.relay
    data = firmware(file_server)
    first = await relay.request(gw.uuid, "post", "/system/firmware", data, wait=10, task_id="fw")
    again = await relay.request(gw.uuid, "post", "/system/firmware", data, wait=10, task_id="fw")
    assert again == first and first.code == 200

    async def back() -> bool:
        return gw.sessions == 2 and gw.connected.is_set()

    await eventually(back)
    # after the reboot the gateway still knows the task: answered again, not run again
    third = await relay.request(gw.uuid, "post", "/system/firmware", data, wait=10, task_id="fw")
    assert third == first
    await relay.request(gw.uuid, "get", "/system/properties", wait=10, task_id="after")
    await events.caught_up(gw.uuid, "after")  # a second run's events would be in
    assert gw.executed[("post", "/system/firmware")] == 1 and gw.upgrades == 1
    assert len(events.firmware_results(gw.uuid)) == 1
    assert [r for r in file_server.requests if r[1] == "/files/fw-2.5.0.img"] == [
        ("GET", "/files/fw-2.5.0.img", TOKEN)
    ]
    r = await relay.request(gw.uuid, "delete", "/system/tasks/fw", wait=10)
    assert r.code == 409 and r.data == {"message": "already finished"}
    await finish(stop, task)
