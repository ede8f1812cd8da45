"""One virtual gateway: a real MQTT client with its own PSK identity.

It connects as a ThingsPro gateway does (client id = uuid, retained will ``0``, ``1`` on
connect), answers requests on its ``server`` topic from a small resource table, and never
runs the same ``task_id`` twice (a redelivered request gets the first answer again).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from edgefleet.errors import MessageError
from edgefleet.mqtt import topics
from edgefleet.mqtt.messages import (
    EventMessage,
    RequestMessage,
    ResponseMessage,
    decode_request,
    encode,
)
from edgefleet.mqtt.psk import psk_client_context

log = logging.getLogger(__name__)

REMEMBERED_TASKS = 256


@dataclass
class Behaviour:
    latency: float = 0.0
    """Seconds before each answer."""
    failure_rate: float = 0.0
    """Share of requests answered with code 500."""
    flap_interval: float = 0.0
    """Mean seconds between dropped connections (0: never); the gateway then reconnects."""
    event_interval: float = 0.0
    """Mean seconds between unsolicited property events (0: none)."""


@dataclass
class VirtualGateway:
    uuid: str
    psk: str
    host: str
    port: int
    properties: dict[str, Any] = field(default_factory=dict)
    keepalive: int = 60
    behaviour: Behaviour = field(default_factory=Behaviour)
    use_tls: bool = True
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.connected = asyncio.Event()
        self.requests = 0
        self.sessions = 0
        """Connections established (announced with ``1``) so far."""
        self.executed: Counter[tuple[str, str]] = Counter()
        self.events = 0
        self.failures = 0
        self.flapped = False
        self._answers: OrderedDict[str, ResponseMessage] = OrderedDict()
        self._client: aiomqtt.Client | None = None
        self._started = time.monotonic()

    def _topic(self, channel: topics.Channel) -> str:
        return topics.topic(self.uuid, channel)

    async def run(self) -> None:
        """Connect, announce, and answer requests until cancelled or disconnected."""
        will = aiomqtt.Will(self._topic(topics.Channel.STATUS), b"0", qos=1, retain=True)
        async with aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.uuid,
            keepalive=self.keepalive,
            will=will,
            tls_context=psk_client_context(self.uuid, self.psk) if self.use_tls else None,
            clean_session=True,
        ) as client:
            self._client = client
            sock = client._client.socket()  # Nagle off, as the broker has it
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await client.subscribe(self._topic(topics.Channel.SERVER), qos=1)
            await client.publish(self._topic(topics.Channel.STATUS), b"1", qos=1)
            self.sessions += 1
            self.connected.set()
            try:
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    await self._answer(client, payload)
            finally:
                self.connected.clear()
                self._client = None

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Stay connected as a real gateway does: reconnect with jittered backoff, flap and
        emit events as ``behaviour`` says, until cancelled or ``stop`` is set."""
        stop = stop or asyncio.Event()
        delay = 1.0
        while not stop.is_set():
            sessions = self.sessions
            session = asyncio.create_task(self.run())
            extras = [asyncio.create_task(self._misbehave(stop))]
            try:
                await asyncio.wait([session, *extras], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in extras:
                    t.cancel()
            if not session.done():
                if stop.is_set():
                    await self.go_offline()
                session.cancel()
            try:
                await session
                delay = 1.0
            except aiomqtt.MqttError as exc:
                if not self.flapped:
                    self.failures += 1
                    log.debug("gateway %s: %s", self.uuid, exc)
            except asyncio.CancelledError:
                if not stop.is_set() and not self.flapped:
                    raise
            self.flapped = False
            if self.sessions > sessions:
                delay = 1.0  # it was connected: a lost connection starts the backoff afresh
            if not stop.is_set():
                await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))
                delay = min(delay * 2, 60.0)

    async def _misbehave(self, stop: asyncio.Event) -> None:
        """Ends when the session should end: ``stop`` set, or a flap is due."""
        b, loop = self.behaviour, asyncio.get_running_loop()
        await self.connected.wait()
        never = float("inf")
        flap_at = (
            loop.time() + self.rng.expovariate(1 / b.flap_interval) if b.flap_interval else never
        )
        event_at = (
            loop.time() + self.rng.expovariate(1 / b.event_interval) if b.event_interval else never
        )
        while True:
            wake = min(flap_at, event_at, loop.time() + 3600)
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, wake - loop.time()))
                return
            except TimeoutError:
                pass
            now = loop.time()
            if now >= flap_at:
                self.flapped = True
                self.crash()
                return
            if now >= event_at:
                event_at = now + self.rng.expovariate(1 / b.event_interval)
                value = round(self.rng.uniform(0, 100), 1)
                try:
                    await self.emit("put", "/system/properties/cpuUsage", value)
                except (aiomqtt.MqttError, RuntimeError):
                    return
                self.events += 1

    async def _answer(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            request = decode_request(payload)
        except MessageError as exc:
            log.warning("gateway %s: rejected request: %s", self.uuid, exc.message)
            return
        self.requests += 1
        response = self._answers.get(request.task_id)
        if response is None:
            if self.behaviour.latency:
                await asyncio.sleep(self.behaviour.latency)
            response = self.handle(request)
            self.executed[(request.method, request.resource)] += 1
            self._answers[request.task_id] = response
            if len(self._answers) > REMEMBERED_TASKS:
                self._answers.popitem(last=False)
        await client.publish(self._topic(topics.Channel.CLIENT), encode(response), qos=1)

    def handle(self, request: RequestMessage) -> ResponseMessage:
        code: int = 404
        data: Any = {"message": "Resource not found"}
        if self.rng.random() < self.behaviour.failure_rate:
            code, data = 500, {"message": "simulated failure"}
        elif request.method == "get" and request.resource == "/system/properties":
            code, data = 200, self.properties
        elif request.method == "get" and request.resource.startswith("/system/properties/"):
            key = request.resource.rsplit("/", 1)[1]
            if key in self.properties:
                code, data = 200, self.properties[key]
        elif request.method == "get" and request.resource.split("?")[0] == "/system/status":
            code, data = (
                200,
                {
                    "hostname": f"sim-{self.uuid[:8]}",
                    "version": self.properties.get("softwareVersion", ""),
                    "uptimeSec": int(time.monotonic() - self._started),
                    "cpuUsage": round(self.rng.uniform(1, 30), 1),
                    "memoryUsage": round(self.rng.uniform(20, 60), 1),
                },
            )
        elif request.method == "post" and request.resource == "/system/reboot":
            code, data = 200, {}
        return ResponseMessage(
            task_id=request.task_id,
            code=code,
            method=request.method,
            resource=request.resource,
            data=data,
            id=self.rng.randrange(655350),
            sign=["simulator"],
        )

    async def emit(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        """Publish an unsolicited event (e.g. ``put /system/properties/defaultRoute``)."""
        if self._client is None:
            raise RuntimeError("not connected")
        prefix = "/system/properties/"
        if method == "put" and resource.startswith(prefix):  # its own state changes first
            value = data["data"] if isinstance(data, dict) and set(data) == {"data"} else data
            self.properties[resource[len(prefix) :]] = value
        event = EventMessage(method=method, resource=resource, data=data, code=code)
        await self._client.publish(self._topic(topics.Channel.CLIENT), encode(event), qos=1)

    async def go_offline(self) -> None:
        """A clean shutdown: say ``0`` (retained), then disconnect."""
        if self._client is not None:
            await self._client.publish(self._topic(topics.Channel.STATUS), b"0", qos=1, retain=True)

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the will."""
        if self._client is not None:
            sock = self._client._client.socket()
            if isinstance(sock, socket.socket):
                sock.shutdown(socket.SHUT_RDWR)
