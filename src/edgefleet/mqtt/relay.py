"""Request → response over MQTT: publish to a gateway, wait for the reply with that task_id.

With one broker, every server instance receives every response (plain subscriptions); each
resolves only the requests it is waiting for. A second copy of a response (QoS 1
redelivery) finds nothing waiting and is dropped.

With broker nodes (mqtt/nodes.py), a request goes to the gateway's node (every node when it
is not known: the gateway is on one at most), and a requester that waits hears the answer
through that node's publishing link while it waits (the node's consumer, maybe another
instance, receives it too, finds nothing waiting and passes it to the task engine, which
knows no such task).
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from edgefleet.errors import GatewayTimeoutError, TransportError, ValidationError
from edgefleet.protocol import topics
from edgefleet.protocol.messages import MAX_MESSAGE_BYTES, RequestMessage, ResponseMessage, encode

if TYPE_CHECKING:
    from edgefleet.mqtt.nodes import NodeLinks

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]


def _encode(message: RequestMessage) -> bytes:
    """The request's payload; refused when a gateway would refuse it for its size (and the
    broker would close the server's own connection for a packet past its limit)."""
    payload = encode(message)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ValidationError(
            f"the request is {len(payload)} bytes; a gateway takes at most {MAX_MESSAGE_BYTES}"
        )
    return payload


class GatewayRelay:
    """``publish_limit`` bounds publishes awaiting the broker's PUBACK at once; a request
    waiting for its gateway's answer holds nothing but its entry here."""

    def __init__(
        self, publish: Publish, *, publish_limit: int = 500, nodes: NodeLinks | None = None
    ) -> None:
        self._publish = publish
        self.nodes = nodes
        """Set with broker nodes: requests go to a gateway's node through it."""
        self._publish_slots = asyncio.Semaphore(publish_limit)
        self._pending: dict[str, tuple[str, asyncio.Future[ResponseMessage]]] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def request(
        self,
        device_uuid: str,
        method: str,
        resource: str,
        data: Any = None,
        *,
        wait: float = 30.0,
        task_id: str | None = None,
        node: str | None = None,
    ) -> ResponseMessage:
        """Send one request to a gateway and return its response (``GatewayTimeoutError``).
        ``node``: the broker node the gateway is on, if known (broker nodes only)."""
        task_id = task_id or str(uuidlib.uuid4())
        payload = _encode(
            RequestMessage(method=method.lower(), resource=resource, data=data, task_id=task_id)
        )
        future: asyncio.Future[ResponseMessage] = asyncio.get_running_loop().create_future()
        self._pending[task_id] = (device_uuid, future)
        topic = topics.topic(device_uuid, topics.Channel.SERVER)
        try:
            if self.nodes is None:
                async with self._publish_slots:
                    await self._publish(topic, payload)
                return await asyncio.wait_for(future, wait)
            targets = self.nodes.targets(device_uuid, node)
            async with self.nodes.listening(device_uuid, targets):
                await self._publish_to(targets, topic, payload)
                return await asyncio.wait_for(future, wait)
        except TimeoutError as exc:
            raise GatewayTimeoutError(device_uuid, wait) from exc
        finally:
            self._pending.pop(task_id, None)

    async def send(
        self,
        device_uuid: str,
        method: str,
        resource: str,
        data: Any,
        task_id: str,
        node: str | None = None,
    ) -> None:
        """Publish one request and return once the broker has it; whoever records results
        (the task engine) deals with the answer. ``node`` as for ``request``."""
        payload = _encode(
            RequestMessage(method=method.lower(), resource=resource, data=data, task_id=task_id)
        )
        topic = topics.topic(device_uuid, topics.Channel.SERVER)
        if self.nodes is None:
            async with self._publish_slots:
                await self._publish(topic, payload)
            return
        await self._publish_to(self.nodes.targets(device_uuid, node), topic, payload)

    async def _publish_to(self, targets: list[str], topic: str, payload: bytes) -> None:
        """Publish to each of these nodes; fine if one took it (the gateway is on one)."""
        assert self.nodes is not None
        nodes = self.nodes
        if not targets:
            raise TransportError("no broker node is known")

        async def one(node: str) -> None:
            async with self._publish_slots:
                await nodes.publish(node, topic, payload)

        results = await asyncio.gather(*(one(n) for n in targets), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            raise errors[0]

    def resolve(self, device_uuid: str, response: ResponseMessage) -> bool:
        """Hand a response to its waiting request; False when none waits for it here."""
        waiting = self._pending.get(response.task_id)
        if waiting is None:
            return False
        owner, future = waiting
        if owner != device_uuid:
            log.warning(
                "response for task %s came from %s, not %s: ignored",
                response.task_id,
                device_uuid,
                owner,
            )
            return False
        if not future.done():
            future.set_result(response)
        return True
