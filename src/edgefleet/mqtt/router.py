"""Inbound MQTT → services. A bad topic or payload is counted and logged with its reason and
dropped (acknowledged, so the broker does not deliver it again); nothing a gateway sends ever
raises out of here or stops the consumer.

What one gateway may cost is bounded: its messages pass a rate limit (``GatewayRate``: the
excess is dropped, counted, and raises one alarm per period), a retained message on its
``client`` topic is cleared from the broker instead of being stored again at every
re-subscription, and warnings about it reach the log a few a minute (``GatewayLog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from prometheus_client import Counter

from edgefleet.domain.events import rate_limited_event
from edgefleet.errors import EdgefleetError, MessageError
from edgefleet.mqtt.client import Receipt
from edgefleet.mqtt.limits import GatewayLog, GatewayRate
from edgefleet.mqtt.relay import GatewayRelay
from edgefleet.protocol import topics
from edgefleet.protocol.messages import EventMessage, ResponseMessage, decode_client, decode_status
from edgefleet.services.events import EventService
from edgefleet.services.presence import PresenceMonitor, PresenceService

log = logging.getLogger(__name__)

INBOUND = Counter(
    "edgefleet_mqtt_messages_total",
    "MQTT messages received",
    ["channel", "outcome"],  # accepted | rejected | ignored | failed (a bug, logged)
)
REJECTED = Counter(
    "edgefleet_mqtt_rejected_total",
    "MQTT messages refused, by reason",
    # messages.REASONS, topics.BAD_TOPIC, RATE_LIMITED, RETAINED
    ["channel", "reason"],
)
RATE_LIMITED = "rate_limited"
"""Over its gateway's rate: dropped (a status still moves presence; see ``__call__``)."""
RETAINED = "retained"
"""A retained message on a gateway's ``client`` topic: cleared, not stored (again)."""

PROPERTIES_TIMEOUT = 30.0


class TaskSink(Protocol):
    """What the task engine wants to hear of gateways (see services/engine/)."""

    def response(self, device_uuid: str, message: ResponseMessage) -> None: ...
    def event(self, device_uuid: str, message: EventMessage) -> None: ...
    def online(self, device_uuid: str) -> None: ...
    def properties(self, device_uuid: str, properties: dict[str, Any]) -> None: ...


class InboundRouter:
    """Routes each message by channel; on every ``1`` it refreshes the gateway's properties.

    What it hears of each gateway's presence goes to ``monitor`` (services/presence.py:
    reconciliation after a reconnection, the sweep, the heal), which probes gateways through
    ``probe``.
    """

    def __init__(
        self,
        presence: PresenceService,
        relay: GatewayRelay,
        *,
        rate: GatewayRate | None = None,
        alarm_period: float = 300.0,
        tasks: TaskSink | None = None,
        events: EventService | None = None,
        clear_retained: Callable[[str, str | None], Awaitable[None]] | None = None,
    ) -> None:
        """``tasks``: the task engine, told answers nobody waits for, events and properties.
        ``events``: where gateway events and status changes are stored (and their MQTT
        deliveries acknowledged once stored). ``clear_retained``: publish an empty retained
        message to a topic (through the broker node it came from, with broker nodes)."""
        self.presence = presence
        self.relay = relay
        self._refreshing: set[asyncio.Task[bool]] = set()
        self._refresh_ids: dict[str, str] = {}
        self.monitor: PresenceMonitor | None = None
        """Set by the composition root (the monitor probes through this router): the presence
        rules, told what gateways say."""
        self.tasks = tasks
        self.events = events
        self.clear_retained = clear_retained
        self.rate = rate if rate is not None else GatewayRate(0, 1)
        self.alarm_period = alarm_period
        self._alarmed: dict[str, float] = {}
        """Loop time of each gateway's latest rate-limit alarm."""
        self.gateway_log = GatewayLog(log)
        self._chores: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop refreshing (shutdown)."""
        tasks = [*self._refreshing, *self._chores]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.gateway_log.close()

    async def __call__(
        self,
        topic: str,
        payload: bytes,
        retained: bool,
        receipt: Receipt | None = None,
        node: str | None = None,
    ) -> None:
        """Handle one message; never raises (a bug is logged, counted ``failed``). ``node``:
        the broker node it came through (broker nodes only; recorded with the status)."""
        label, device_uuid = "unknown", ""
        try:
            device_uuid, channel = topics.parse(topic)
            label = channel.value
            if channel is topics.Channel.SERVER or not payload:
                # ours; or an empty message, MQTT's way of clearing a retained one (we send
                # those ourselves, below)
                INBOUND.labels(label, "ignored").inc()
                return
            if retained and channel is topics.Channel.CLIENT:
                self._clear(topic, node)
                raise MessageError(
                    "retained message on a client topic: cleared from the broker, not stored",
                    RETAINED,
                )
            if not retained:
                if self.monitor is not None:
                    self.monitor.heard(device_uuid)
                if not self.rate.allow(device_uuid):
                    self._over_rate(device_uuid, channel, payload, node)
                    raise MessageError(
                        f"over the gateway's rate of {self.rate.rate:g} messages/s", RATE_LIMITED
                    )
            if channel is topics.Channel.STATUS:
                await self._status(device_uuid, decode_status(payload), retained, receipt, node)
            else:
                await self._client_message(device_uuid, payload, receipt)
                if self.monitor is not None:
                    self.monitor.spoke(device_uuid)
        except MessageError as exc:
            INBOUND.labels(label, "rejected").inc()
            REJECTED.labels(label, exc.reason).inc()
            if exc.reason != RATE_LIMITED:  # those are told once per alarm (_over_rate)
                self.gateway_log.warning(
                    device_uuid, "rejected MQTT message on %s: %s", topic, exc.message
                )
            return
        except Exception:  # a bug: logged with its stack, counted, never raised
            INBOUND.labels(label, "failed").inc()
            self.gateway_log.error(
                device_uuid, "MQTT message on %s could not be handled", topic, exc_info=True
            )
            return
        INBOUND.labels(label, "accepted").inc()

    async def _status(
        self,
        device_uuid: str,
        online: bool,
        retained: bool,
        receipt: Receipt | None,
        node: str | None = None,
    ) -> None:
        if self.monitor is not None:
            self.monitor.status(device_uuid, online, retained, node)
        elif online or not retained:
            self.presence.apply_status(device_uuid, online, node)
        # a retained "0" may be stale: the reconciliation probes that gateway
        if not retained:
            if online:
                self._refresh(device_uuid, node)
                if self.tasks is not None:
                    self.tasks.online(device_uuid)
            if self.events is not None:
                await self.events.status(device_uuid, online, receipt)

    def _over_rate(
        self, device_uuid: str, channel: topics.Channel, payload: bytes, node: str | None
    ) -> None:
        """A message over the gateway's rate is dropped; a status still moves presence (the
        fleet's view must stay right, and that costs one folded row), without its event,
        properties refresh or task wake-up. One alarm (and one warning) per period."""
        if channel is topics.Channel.STATUS:
            with contextlib.suppress(MessageError):
                online = decode_status(payload)
                if self.monitor is not None:
                    self.monitor.limited_status(device_uuid, online, node)
                else:
                    self.presence.apply_status(device_uuid, online, node)
        now = asyncio.get_running_loop().time()
        last = self._alarmed.get(device_uuid)
        if last is not None and now - last < self.alarm_period:
            return
        self._alarmed[device_uuid] = now
        self.gateway_log.warning(
            device_uuid,
            "gateway %s sends more than %g messages/s (burst %d): the excess is dropped",
            device_uuid,
            self.rate.rate,
            self.rate.burst,
        )
        if self.events is not None:
            self.events.emit(
                rate_limited_event(
                    device_uuid, self.events.clock(), self.rate.rate, self.rate.burst
                )
            )

    def _clear(self, topic: str, node: str | None) -> None:
        """Publish an empty retained message to ``topic`` (in the background: the consumer
        must not wait for the broker's answer), on ``node`` if it came through one."""
        clear = self.clear_retained
        if clear is None:
            return

        async def run() -> None:
            try:
                await clear(topic, node)
            except EdgefleetError as exc:
                log.warning("retained message on %s not cleared: %s", topic, exc.message)

        # one publish, not a loop: no worker
        task = asyncio.create_task(run(), name=f"clear-retained:{topic}")  # noqa: TID251
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _client_message(
        self, device_uuid: str, payload: bytes, receipt: Receipt | None
    ) -> None:
        message = decode_client(payload)
        if isinstance(message, ResponseMessage):
            if not self._answer(device_uuid, message) and self.tasks is not None:
                self.tasks.response(device_uuid, message)  # a task's, or nobody's
            return
        assert isinstance(message, EventMessage)
        change = self.presence.apply_property_event(
            device_uuid, message.method, message.resource, message.data
        )
        if change is None and self.tasks is not None:
            self.tasks.event(device_uuid, message)
        if self.events is not None:
            await self.events.gateway_event(
                device_uuid,
                message.method,
                message.resource,
                message.code,
                message.data,
                event_id=message.event_id,
                payload=payload,
                receipt=receipt,
            )

    def _answer(self, device_uuid: str, message: ResponseMessage) -> bool:
        """A response to a request of this instance: stored as properties if it was a read
        of them, handed to its waiting request; False when none waits for it here."""
        if self._refresh_ids.pop(message.task_id, None) == device_uuid:
            # written here, in arrival order, so a later property event is not overwritten
            if message.code == 200 and isinstance(message.data, dict):
                self.presence.replace_properties(device_uuid, message.data)
                if self.tasks is not None:
                    self.tasks.properties(device_uuid, message.data)
            else:
                log.info("properties of %s: gateway answered %s", device_uuid, message.code)
        return self.relay.resolve(device_uuid, message)

    async def answers(
        self, topic: str, payload: bytes, retained: bool, receipt: Receipt | None = None
    ) -> None:
        """What a broker node's publishing link hears: the answers to this instance's own
        requests, heard there while they wait (the node's consumer handles everything else
        the gateway sends). Never raises."""
        try:
            device_uuid, channel = topics.parse(topic)
            if channel is not topics.Channel.CLIENT or retained or not payload:
                return
            message = decode_client(payload)
        except MessageError:
            return
        if isinstance(message, ResponseMessage):
            self._answer(device_uuid, message)

    def _refresh(self, device_uuid: str, node: str | None = None) -> None:
        # one request and its answer, not a loop: no worker
        task = asyncio.create_task(  # noqa: TID251
            self._refresh_properties(device_uuid, node=node), name=f"properties:{device_uuid}"
        )
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def read_properties(
        self,
        device_uuid: str,
        method: str,
        resource: str,
        data: Any = None,
        *,
        wait: float,
        node: str | None = None,
    ) -> ResponseMessage:
        """Relay ``GET /system/properties`` to a gateway and return its answer, which is also
        stored as the gateway's properties (in arrival order, as a refresh's is), so what a
        user reads is what the server holds."""
        task_id = str(uuidlib.uuid4())
        self._refresh_ids[task_id] = device_uuid
        try:
            return await self.relay.request(
                device_uuid, method, resource, data, wait=wait, task_id=task_id, node=node
            )
        finally:
            self._refresh_ids.pop(task_id, None)

    async def probe(self, device_uuid: str, wait: float) -> bool:
        """Ask a gateway for its properties (stored when the answer arrives); True if it
        answered within ``wait`` seconds (the presence monitor's probe)."""
        return await self._refresh_properties(device_uuid, wait, quiet=True)

    async def _refresh_properties(
        self,
        device_uuid: str,
        wait: float = PROPERTIES_TIMEOUT,
        *,
        quiet: bool = False,
        node: str | None = None,
    ) -> bool:
        """Ask a gateway for its properties (cached when the answer arrives); True if it
        answered at all. ``quiet``: a silence is the caller's to report."""
        task_id = str(uuidlib.uuid4())
        self._refresh_ids[task_id] = device_uuid
        try:
            await self.relay.request(
                device_uuid, "get", "/system/properties", wait=wait, task_id=task_id, node=node
            )
            return True
        except EdgefleetError as exc:
            if not quiet:
                log.info("properties of %s not refreshed: %s", device_uuid, exc.message)
            return False
        finally:
            self._refresh_ids.pop(task_id, None)
