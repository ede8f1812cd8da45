"""Inbound MQTT → services. A bad topic or payload is logged with its reason and dropped;
nothing here ever stops the consumer."""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib

from prometheus_client import Counter

from edgefleet.errors import EdgefleetError, MessageError
from edgefleet.mqtt import topics
from edgefleet.mqtt.messages import EventMessage, ResponseMessage, decode_client, decode_status
from edgefleet.mqtt.relay import GatewayRelay
from edgefleet.services.presence import PresenceService

log = logging.getLogger(__name__)

INBOUND = Counter("edgefleet_mqtt_messages_total", "MQTT messages received", ["channel", "outcome"])

PROPERTIES_TIMEOUT = 30.0


class InboundRouter:
    """Routes each message by channel; on every ``1`` it refreshes the gateway's properties."""

    def __init__(
        self, presence: PresenceService, relay: GatewayRelay, *, refresh_limit: int = 200
    ) -> None:
        self.presence = presence
        self.relay = relay
        self._refreshing: set[asyncio.Task[None]] = set()
        self._refresh_slots = asyncio.Semaphore(refresh_limit)
        self._refresh_ids: dict[str, str] = {}

    async def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            device_uuid, channel = topics.parse(topic)
            if channel is topics.Channel.STATUS:
                online = decode_status(payload)
                self.presence.apply_status(device_uuid, online)
                if online and not retained:
                    self._refresh(device_uuid)
            elif channel is topics.Channel.CLIENT:
                await self._client_message(device_uuid, payload)
            else:
                INBOUND.labels(channel.value, "ignored").inc()
                return
        except MessageError as exc:
            INBOUND.labels("unknown", "rejected").inc()
            log.warning("rejected MQTT message on %s: %s", topic, exc.message)
            return
        INBOUND.labels(channel.value, "accepted").inc()

    async def _client_message(self, device_uuid: str, payload: bytes) -> None:
        message = decode_client(payload)
        if isinstance(message, ResponseMessage):
            if self._refresh_ids.pop(message.task_id, None) == device_uuid:
                # written here, in arrival order, so a later property event is not overwritten
                if message.code == 200 and isinstance(message.data, dict):
                    await self.presence.replace_properties(device_uuid, message.data)
                else:
                    log.info("properties of %s: gateway answered %s", device_uuid, message.code)
            if not self.relay.resolve(device_uuid, message):
                log.debug("response %s from %s: nobody waits here", message.task_id, device_uuid)
            return
        assert isinstance(message, EventMessage)
        await self.presence.apply_property_event(
            device_uuid, message.method, message.resource, message.data
        )

    def _refresh(self, device_uuid: str) -> None:
        task = asyncio.create_task(
            self._refresh_properties(device_uuid), name=f"properties:{device_uuid}"
        )
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh_properties(self, device_uuid: str) -> None:
        task_id = str(uuidlib.uuid4())
        self._refresh_ids[task_id] = device_uuid
        async with self._refresh_slots:
            try:
                await self.relay.request(
                    device_uuid,
                    "get",
                    "/system/properties",
                    wait=PROPERTIES_TIMEOUT,
                    task_id=task_id,
                )
            except EdgefleetError as exc:
                log.info("properties of %s not refreshed: %s", device_uuid, exc.message)
            finally:
                self._refresh_ids.pop(task_id, None)
