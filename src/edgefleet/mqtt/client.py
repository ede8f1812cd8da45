"""The server's connection to the broker: one supervised aiomqtt client.

aiomqtt 2.x does not reconnect by itself; ``BrokerLink.run`` does, with jittered exponential
backoff, and re-subscribes each time. Messages are handed to one callback, one at a time per
connection (MQTT keeps per-topic order). Publishing while disconnected raises
``TransportError`` at once rather than queueing without bound.

Inbound QoS 1 messages are acknowledged by hand: each comes with a ``Receipt``; the PUBACK
goes out when the handler returns, or, if the handler ``defer``-red it (an event waiting to be
stored), when whoever took it settles it. PUBACKs leave in the order the messages came (MQTT
asks it of QoS 1). The session is persistent, so what was not acknowledged when the
connection dropped, or the server died, is delivered again (with ``dup`` set); a receipt of a
dead connection acknowledges nothing (its packet ids mean nothing to the next one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from edgefleet.errors import TransportError

log = logging.getLogger(__name__)

MAX_INFLIGHT = 1000
"""QoS 1 publishes awaiting their PUBACK at once (paho's default, 20, serialises a storm)."""
MAX_QUEUED = 20_000
"""Publishes paho holds beyond the in-flight window before refusing more."""


class Receipt:
    """One inbound message's delivery: acknowledged once settled (QoS 0: nothing to do)."""

    __slots__ = ("_window", "deferred", "dup", "mid", "settled")

    def __init__(self, window: AckWindow | None, mid: int, dup: bool) -> None:
        self._window = window
        self.mid = mid
        self.dup = dup
        self.deferred = False
        self.settled = window is None

    def defer(self) -> None:
        """Someone else settles this receipt later (when what it carried is stored)."""
        self.deferred = True

    def settle(self) -> None:
        if not self.settled:
            self.settled = True
            if self._window is not None:
                self._window.flush()


class AckWindow:
    """The unacknowledged QoS 1 messages of one connection, in arrival order."""

    def __init__(self, ack: Callable[[int], Any]) -> None:
        self._ack = ack
        self._pending: deque[Receipt] = deque()
        self.alive = True

    def receipt(self, mid: int, dup: bool) -> Receipt:
        r = Receipt(self, mid, dup)
        self._pending.append(r)
        return r

    def flush(self) -> None:
        pending = self._pending
        while pending and pending[0].settled:
            r = pending.popleft()
            if self.alive:
                self._ack(r.mid)

    def close(self) -> None:
        """The connection is gone: acknowledge nothing more."""
        self.alive = False
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)


class _AckingClient(aiomqtt.Client):
    """aiomqtt's client with paho's manual acknowledgement on, each message's ``dup`` flag
    kept (aiomqtt's Message has none) until the consumer takes the message, and Nagle's
    algorithm off on its socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client.manual_ack_set(True)
        self.dups: dict[int, bool] = {}

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.qos:
            self.dups[message.mid] = bool(message.dup)
        super()._on_message(client, userdata, message)

    def ack(self, mid: int) -> None:
        self._client.ack(mid, 1)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Before CONNECT goes out. With Nagle on, a small packet (a request's PUBLISH) waits
        # behind an earlier unacknowledged one (the PUBACK of the last response) until the
        # broker's delayed ACK comes, up to 40 ms on Linux: every deviceTasks call paid it.
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super()._on_socket_open(client, userdata, sock)


Handler = Callable[[str, bytes, bool, Receipt], Awaitable[None]]
"""``(topic, payload, retained, receipt)``: the message is acknowledged when the handler
returns, unless it called ``receipt.defer()``."""


class BrokerLink:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        client_id: str,
        clean_session: bool = False,
        subscriptions: Sequence[str],
        handler: Handler,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        keepalive: int = 30,
        max_backoff: float = 30.0,
        publish_timeout: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.client_id = client_id
        self.clean_session = clean_session
        self.subscriptions = list(subscriptions)
        self.handler = handler
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.keepalive = keepalive
        self.max_backoff = max_backoff
        self.publish_timeout = publish_timeout
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.connects = 0
        self.window: AckWindow | None = None
        """The current connection's unacknowledged messages."""

    async def run(self) -> None:
        """Stay connected until cancelled."""
        delay = 0.5
        while True:
            connects = self.connects
            try:
                await self._session()
                delay = 0.5
            except aiomqtt.MqttError as exc:
                if self.connects > connects:
                    delay = 0.5  # it was connected: a lost connection starts the backoff afresh
                log.warning(
                    "broker %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay
                )
            finally:
                was_connected = self._client is not None
                self.connected.clear()
                self._client = None
                if was_connected and self.on_disconnect is not None:
                    self.on_disconnect()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            delay = min(delay * 2, self.max_backoff)

    async def _session(self) -> None:
        async with _AckingClient(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            keepalive=self.keepalive,
            clean_session=self.clean_session,
            max_queued_outgoing_messages=MAX_QUEUED,
            max_inflight_messages=MAX_INFLIGHT,
        ) as client:
            # thousands of requests in flight are normal here (a reconciliation, a task to a
            # whole group), not a sign of trouble worth a warning each
            client.pending_calls_threshold = MAX_QUEUED
            for sub in list(self.subscriptions):
                await client.subscribe(sub, qos=1)
            self._client = client
            self.connects += 1
            self.connected.set()
            log.info("connected to broker %s:%d as %s", self.host, self.port, self.client_id)
            if self.on_connect is not None:
                self.on_connect()
            window = AckWindow(client.ack)
            self.window = window
            try:
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    if message.qos:
                        receipt = window.receipt(message.mid, client.dups.pop(message.mid, False))
                    else:
                        receipt = Receipt(None, 0, False)
                    try:
                        await self.handler(message.topic.value, payload, message.retain, receipt)
                    except Exception:  # a handler bug must not drop the connection
                        log.exception("handler failed on %s", message.topic.value)
                        receipt.deferred = False
                    if not receipt.deferred:
                        receipt.settle()
            finally:
                window.close()

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

    async def subscribe(self, topic: str) -> None:
        """Add a subscription, now (when its SUBACK is back) and at every reconnection."""
        if topic not in self.subscriptions:
            self.subscriptions.append(topic)
        client = self._client
        if client is None:
            raise TransportError("not connected to the broker")
        try:
            await client.subscribe(topic, qos=1, timeout=self.publish_timeout)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscription to {topic} failed: {exc}") from exc

    async def unsubscribe(self, topic: str) -> None:
        """Drop a subscription (best effort: a lost connection has dropped it already when
        the session is clean)."""
        if topic in self.subscriptions:
            self.subscriptions.remove(topic)
        client = self._client
        if client is None:
            return
        try:
            await client.unsubscribe(topic, timeout=self.publish_timeout)
        except aiomqtt.MqttError as exc:
            log.info("unsubscription from %s failed: %s", topic, exc)

    async def wait_connected(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), seconds)
        except TimeoutError as exc:
            raise TransportError(f"no broker connection within {seconds} s") from exc
