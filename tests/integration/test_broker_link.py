"""The server's broker link against a real Mosquitto: its reconnection backoff."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from edgefleet.brokers import mosquitto
from edgefleet.mqtt import client as mqtt_client
from edgefleet.mqtt.client import BrokerLink
from edgefleet.settings import MQTTSettings
from tests.brokers import free_port, start_mosquitto


async def _ignore(*_: object) -> None:
    return None


def _link_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The link's own records (not another logger's that the capture also holds)."""
    return [r for r in caplog.records if r.name == mqtt_client.__name__]


async def test_a_lost_connection_starts_the_backoff_afresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failed attempts double the delay; once connected, a lost connection retries after
    0.5 s again instead of carrying the doubled delay on (before: 8 s here, 30 s later on)."""
    mqtt = MQTTSettings(gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port())
    directory = Path(tempfile.mkdtemp(prefix="edgefleet-link-"))
    files = mosquitto.MosquittoFiles(directory)
    password = "server-password-for-tests"
    mosquitto.write_all(files, mqtt, password, [])
    link = BrokerLink(
        host="127.0.0.1",
        port=mqtt.server_port,
        username=mqtt.server_username,
        password=password,
        client_id="edgefleet-link-test",
        subscriptions=["$ThingsPro/devices/+/status"],
        handler=_ignore,
        max_backoff=30,
    )
    caplog.set_level(logging.WARNING, logger=mqtt_client.__name__)
    run = asyncio.create_task(link.run())
    broker = None
    try:
        await asyncio.sleep(3)  # no broker yet: 0.5, 1, 2 s
        delays = [r.getMessage().rsplit("retrying in ", 1)[1] for r in _link_records(caplog)]
        assert delays[:3] == ["0.5 s", "1.0 s", "2.0 s"], delays
        broker = start_mosquitto(files, mqtt, password)
        await asyncio.wait_for(link.connected.wait(), 15)
        caplog.clear()
        broker.stop()
        broker = None
        for _ in range(100):
            if _link_records(caplog):
                break
            await asyncio.sleep(0.05)
        assert _link_records(caplog), "the lost connection was not logged"
        assert _link_records(caplog)[0].getMessage().endswith("retrying in 0.5 s")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        if broker is not None:
            broker.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_link_sends_without_nagle_delay_when_connected() -> None:
    """TCP_NODELAY on the server's broker socket: with Nagle's algorithm on, a request's
    PUBLISH waited behind the previous response's PUBACK for the broker's delayed ACK (40 ms
    on Linux), and every deviceTasks round trip paid it."""
    mqtt = MQTTSettings(gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port())
    directory = Path(tempfile.mkdtemp(prefix="edgefleet-link-"))
    files = mosquitto.MosquittoFiles(directory)
    password = "server-password-for-tests"
    mosquitto.write_all(files, mqtt, password, [])
    broker = start_mosquitto(files, mqtt, password)
    link = BrokerLink(
        host="127.0.0.1",
        port=mqtt.server_port,
        username=mqtt.server_username,
        password=password,
        client_id="edgefleet-link-test",
        subscriptions=["$ThingsPro/devices/+/status"],
        handler=_ignore,
    )
    run = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 15)
        assert link._client is not None
        sock = link._client._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        broker.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("clean_session", [False, True])
async def test_clean_session_decides_whether_the_broker_holds_messages_while_away(
    clean_session: bool,
) -> None:
    """mqtt.clean_session: false, the broker keeps the session of an id that disconnects and
    hands over what arrived meanwhile; true (pods and instances whose id dies with them), it
    keeps nothing, so no session of a replaced pod is left behind on the broker."""
    mqtt = MQTTSettings(gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port())
    directory = Path(tempfile.mkdtemp(prefix="edgefleet-link-"))
    files = mosquitto.MosquittoFiles(directory)
    password = "server-password-for-tests"
    mosquitto.write_all(files, mqtt, password, [])
    topic = "$ThingsPro/devices/{}/status"
    received: list[bytes] = []
    after = asyncio.Event()

    async def keep(_topic: str, payload: bytes, *_: object) -> None:
        received.append(payload)
        if payload == b"after":
            after.set()

    def link(client_id: str, clean: bool) -> BrokerLink:
        return BrokerLink(
            host="127.0.0.1",
            port=mqtt.server_port,
            username=mqtt.server_username,
            password=password,
            client_id=client_id,
            clean_session=clean,
            subscriptions=[topic.format("+")],
            handler=keep,
        )

    async def up(lk: BrokerLink) -> asyncio.Task[None]:
        task = asyncio.create_task(lk.run())
        await asyncio.wait_for(lk.connected.wait(), 15)
        return task

    async def down(task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    broker = start_mosquitto(files, mqtt, password)
    tasks: list[asyncio.Task[None]] = []
    try:
        publisher = link("edgefleet-publisher", True)
        publisher.subscriptions = []
        tasks.append(await up(publisher))
        server = await up(link("edgefleet-pod-a", clean_session))
        await down(server)
        await publisher.publish(topic.format("u1"), b"while-away", qos=1)
        tasks.append(await up(link("edgefleet-pod-a", clean_session)))
        await publisher.publish(topic.format("u1"), b"after", qos=1)
        await asyncio.wait_for(after.wait(), 15)
        # a resumed session delivers what it queued first, before anything newer
        assert received == ([b"after"] if clean_session else [b"while-away", b"after"])
    finally:
        for task in tasks:
            await down(task)
        broker.stop()
        shutil.rmtree(directory, ignore_errors=True)
