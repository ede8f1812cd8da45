"""The server's connection to the broker: one supervised aiomqtt client.

aiomqtt 2.x does not reconnect by itself; ``BrokerLink.run`` does, with jittered exponential
backoff, and re-subscribes each time. Messages are handed to one callback, one at a time per
connection (MQTT keeps per-topic order). Publishing while disconnected raises
``TransportError`` at once rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt

from edgefleet.errors import TransportError

log = logging.getLogger(__name__)

MAX_INFLIGHT = 1000
"""QoS 1 publishes awaiting their PUBACK at once (paho's default, 20, serialises a storm)."""
MAX_QUEUED = 20_000
"""Publishes paho holds beyond the in-flight window before refusing more."""

Handler = Callable[[str, bytes, bool], Awaitable[None]]
"""``(topic, payload, retained)``."""


class BrokerLink:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        client_id: str,
        subscriptions: Sequence[str],
        handler: Handler,
        on_connect: Callable[[], None] | None = None,
        keepalive: int = 30,
        max_backoff: float = 30.0,
        publish_timeout: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.handler = handler
        self.on_connect = on_connect
        self.keepalive = keepalive
        self.max_backoff = max_backoff
        self.publish_timeout = publish_timeout
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.connects = 0

    async def run(self) -> None:
        """Stay connected until cancelled."""
        delay = 0.5
        while True:
            try:
                await self._session()
                delay = 0.5
            except aiomqtt.MqttError as exc:
                log.warning(
                    "broker %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay
                )
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            delay = min(delay * 2, self.max_backoff)

    async def _session(self) -> None:
        async with aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            keepalive=self.keepalive,
            clean_session=False,
            max_queued_outgoing_messages=MAX_QUEUED,
            max_inflight_messages=MAX_INFLIGHT,
        ) as client:
            # thousands of requests in flight are normal here (a reconciliation, a task to a
            # whole group), not a sign of trouble worth a warning each
            client.pending_calls_threshold = MAX_QUEUED
            for sub in self.subscriptions:
                await client.subscribe(sub, qos=1)
            self._client = client
            self.connects += 1
            self.connected.set()
            log.info("connected to broker %s:%d as %s", self.host, self.port, self.client_id)
            if self.on_connect is not None:
                self.on_connect()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                try:
                    await self.handler(message.topic.value, payload, message.retain)
                except Exception:  # a handler bug must not drop the connection
                    log.exception("handler failed on %s", message.topic.value)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        client = self._client
        if client is None:
            raise TransportError("not connected to the broker")
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, timeout=self.publish_timeout
            )
        except aiomqtt.MqttError as exc:
            raise TransportError(f"publish to {topic} failed: {exc}") from exc

    async def wait_connected(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), seconds)
        except TimeoutError as exc:
            raise TransportError(f"no broker connection within {seconds} s") from exc
