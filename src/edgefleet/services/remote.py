"""One request relayed to one gateway and its answer returned: ThingsPro's ``deviceTasks``."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from edgefleet.domain.devices import ConnectionStatus
from edgefleet.errors import DeviceOfflineError
from edgefleet.protocol.messages import ResponseMessage
from edgefleet.services.fleet import FleetService

DEFAULT_WAIT = 30.0
"""Seconds a ``deviceTasks`` call waits for the gateway (Sanji's own default TTL is 10-120 s)."""


PROPERTIES = "/system/properties"


class Requester(Protocol):
    """Sends one request to a gateway and waits for its answer (mqtt/relay.py
    ``GatewayRelay.request``); ``GatewayTimeoutError`` on silence."""

    def request(
        self,
        device_uuid: str,
        method: str,
        resource: str,
        data: Any = None,
        *,
        wait: float,
        node: str | None = None,
    ) -> Awaitable[ResponseMessage]: ...


class PropertiesReader(Protocol):
    """Relays a read of a gateway's properties and stores the answer (mqtt/router.py)."""

    def __call__(
        self,
        device_uuid: str,
        method: str,
        resource: str,
        data: Any = None,
        *,
        wait: float,
        node: str | None = None,
    ) -> Awaitable[ResponseMessage]: ...


class RemoteService:
    def __init__(
        self,
        fleet: FleetService,
        relay: Requester,
        *,
        read_properties: PropertiesReader | None = None,
    ) -> None:
        self.fleet = fleet
        self.relay = relay
        self.read_properties = read_properties
        """``GET /system/properties`` goes through it, so its answer is stored too."""

    async def request(
        self,
        device_uuid: str,
        method: str,
        resource: str,
        data: Any = None,
        *,
        wait: float = DEFAULT_WAIT,
    ) -> dict[str, Any]:
        """The gateway's response message as it sent it, with ``taskID`` beside ``task_id``.

        An unknown device raises ``DeviceNotFoundError``, one not online
        ``DeviceOfflineError`` (nothing is sent), silence ``GatewayTimeoutError``.
        """
        # the status (and broker node) alone: a device and its tags cost a query and ORM
        # loading more
        status, node = await self.fleet.presence(device_uuid)
        if status != ConnectionStatus.ONLINE.value:
            raise DeviceOfflineError(device_uuid)
        whole_read = method.lower() == "get" and resource.split("?", 1)[0].rstrip("/") == PROPERTIES
        if whole_read and self.read_properties is not None:
            response = await self.read_properties(
                device_uuid, method, resource, data, wait=wait, node=node
            )
        else:
            response = await self.relay.request(
                device_uuid, method, resource, data, wait=wait, node=node
            )
        body = response.model_dump(mode="json")
        body["taskID"] = response.task_id  # the spec's spelling; the 2017 server sent task_id
        return body
