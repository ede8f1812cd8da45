"""Helpers for tests that run gateways against the server's broker (see the ``live`` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from edgefleet.bootstrap import Container
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.protocol import topics
from edgefleet.protocol.messages import EventMessage, decode_client
from edgefleet.services.fleet import Registration
from edgefleet.simulator.gateway import VirtualGateway

PROPS = {"modelName": "UC-8112-LX-CG", "softwareVersion": "2.4.1", "defaultRoute": "eth0"}


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    """Poll ``check`` every 0.1 s until it is true; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        await asyncio.sleep(0.1)


async def register(c: Container, n: int, prefix: str = "gw") -> list[tuple[str, str]]:
    """Register ``n`` devices; return their ``(uuid, psk)`` once the broker knows the keys."""
    out = []
    for i in range(n):
        view, psk = await c.fleet.register_device(
            Registration(display_name=f"{prefix}{i}", mac=f"0090e8{i:06x}")
        )
        out.append((view.device.uuid, psk))
    if c.messaging.broker is not None:
        await c.messaging.broker.reloaded()
    return out


async def count(c: Container, status: str) -> int:
    return (await c.fleet.list_devices(DeviceFilter(status=status), offset=0, limit=1)).total


def start(
    c: Container, creds: list[tuple[str, str]], **kwargs: object
) -> tuple[list[VirtualGateway], list[asyncio.Task[None]]]:
    """Run one virtual gateway per credential against the live broker's gateway port."""
    mqtt = c.settings.mqtt
    gws = [
        VirtualGateway(u, k, "127.0.0.1", mqtt.gateway_port, dict(PROPS), **kwargs)  # type: ignore[arg-type]
        for u, k in creds
    ]
    return gws, [asyncio.create_task(g.run()) for g in gws]


class Events:
    """Events (no task_id) from gateways, seen on the server listener as the server sees them
    (the ``events`` fixture)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, EventMessage]] = []
        self.answers: list[tuple[str, str]] = []
        """(uuid, task_id) of the answers that went by."""
        self.subscribed = asyncio.Event()

    async def watch(self, live: Container) -> None:
        mqtt = live.settings.mqtt
        async with aiomqtt.Client(
            mqtt.server_host,
            mqtt.server_port,
            username=mqtt.server_username,
            password=live.settings.mqtt_server_password(),
        ) as client:
            await client.subscribe(topics.all_devices(topics.Channel.CLIENT), qos=1)
            self.subscribed.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                decoded = decode_client(message.payload)
                uuid = topics.parse(message.topic.value)[0]
                if isinstance(decoded, EventMessage):
                    self.items.append((uuid, decoded))
                else:
                    self.answers.append((uuid, decoded.task_id))

    async def caught_up(self, uuid: str, task_id: str) -> None:
        """Wait until the answer to ``task_id`` from ``uuid`` went by: a gateway publishes on
        one topic, delivered in order, so every event it sent before that answer is here too."""

        async def seen() -> bool:
            return (uuid, task_id) in self.answers

        await eventually(seen)

    def of(self, uuid: str, resource: str) -> list[tuple[int | None, Any]]:
        return [(e.code, e.data) for u, e in self.items if u == uuid and e.resource == resource]

    def firmware_results(self, uuid: str) -> list[tuple[int | None, dict[str, Any]]]:
        return [(c, d) for c, d in self.of(uuid, "/system/firmware") if "code" in d]

    def progress(self, uuid: str) -> list[int]:
        """The percentages reported (all known here: the requests give the size)."""
        return [d["progress"] for _, d in self.of(uuid, "/system/firmware") if "progress" in d]

    def firmware(self, uuid: str) -> list[Any]:
        return [d for _, d in self.of(uuid, "/system/firmware")]

    def final(self, uuid: str) -> list[dict[str, Any]]:
        return [d for d in self.firmware(uuid) if isinstance(d, dict) and "code" in d]
