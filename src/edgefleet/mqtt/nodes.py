"""The server's links to a tier of independent broker nodes (``mqtt.nodes``, docs/scaling.md).

Per node, every instance keeps a **publishing link** (client id ``<instance>-p-<node>``, clean
session): requests to the gateways on that node leave through it, and a requester that waits
for one gateway's answer subscribes there to that gateway's ``client`` topic for the wait
(ref-counted per gateway), unless this instance consumes the node itself.

Per node it holds the lease of (services/nodes.py), an instance keeps the node's **consumer
link**: client id ``edgefleet-node-<node>``, the same whichever instance holds the lease, with
a persistent session, subscribed to every gateway's ``client`` and ``status`` topics. So the
instance that takes a lease over takes the node's session and what it queued (the broker
closes an older connection with the same id).

A consumer link down for longer than ``grace`` seconds (counted from the lease's taking when
it never came up) is a dead node: ``dead(node)`` is called once, until it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from edgefleet.domain.nodes import BrokerNode, dns_node_name, parse_address
from edgefleet.errors import MessageError, TransportError
from edgefleet.mqtt.client import BrokerLink, Handler, Receipt
from edgefleet.protocol import topics
from edgefleet.workers import Worker, Workers

log = logging.getLogger(__name__)

NodeHandler = Callable[[str], Handler]
"""A node's name → the handler of what its consumer link receives."""

DNS_INTERVAL = 30.0
REGISTERED_INTERVAL = 2.0
"""How often the registered nodes are read (one indexed query)."""
GRACE_CHECK = 1.0


@dataclass
class _Consumer:
    link: BrokerLink
    worker: Worker
    down_since: float | None
    """Loop time the link went down (or the lease was taken); None while it is up."""
    declared: bool = False
    """Its death was declared (``dead`` called) and it has not come back since."""


@dataclass
class _Node:
    node: BrokerNode
    link: BrokerLink
    worker: Worker
    listeners: dict[str, int] = field(default_factory=dict)
    """Gateway uuid → requests waiting for its answer through this publishing link."""


class NodeLinks:
    def __init__(
        self,
        *,
        instance: str,
        username: str,
        password: str,
        workers: Workers,
        consume: NodeHandler,
        answers: Handler,
        dead: Callable[[str], Awaitable[None]],
        on_consumer_connect: Callable[[], None] | None = None,
        grace: float = 30.0,
        dns: str = "",
        registered: Callable[[], Awaitable[list[BrokerNode]]] | None = None,
    ) -> None:
        self.instance = instance
        self.username, self.password = username, password
        self.workers = workers
        self.consume = consume
        self.answers = answers
        self.dead = dead
        self.on_consumer_connect = on_consumer_connect
        self.grace = grace
        self.dns = dns
        self.registered = registered
        self._configured: list[BrokerNode] = []
        self._found: list[BrokerNode] = []
        self._registered: list[BrokerNode] = []
        self._nodes: dict[str, _Node] = {}
        self._consumers: dict[str, _Consumer] = {}
        self.heard: dict[str, str] = {}
        """Gateway uuid → the node its latest message came through (on a consumer here)."""
        self.consumers_up = asyncio.Event()
        """Set while every consumer link held here is connected (the presence monitor
        judges a silence only then)."""
        self.consumers_up.set()
        self.resolved = asyncio.Event()
        """Set once DNS has answered (``dns``)."""

    # --- the nodes ------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return sorted(self._nodes)

    def configure(self, nodes: Sequence[BrokerNode]) -> None:
        """The nodes listed by configuration (their publishing links start with ``start``)."""
        self._configured = list(nodes)

    def start(self) -> None:
        """Open a publishing link to every known node, and look up DNS if configured."""
        self._apply()
        if self.dns:
            self.workers.start("broker-nodes-dns", self._resolve_loop)
        if self.registered is not None:
            self.workers.start("broker-nodes-registered", self._registered_loop)
        self.workers.start("broker-node-grace", self._grace_loop)

    def _apply(self) -> None:
        # a name listed by configuration wins over the same name found or registered
        wanted = {n.name: n for n in [*self._registered, *self._found, *self._configured]}
        for name in sorted(set(self._nodes) - set(wanted)):
            node = self._nodes.pop(name)
            log.info("broker node %s gone from the list", name)
            self.workers.start(f"broker-publish-stop:{name}", node.worker.stop, forever=False)
            if name in self._consumers:  # its lease goes back at the next round
                self.workers.start(
                    f"broker-node-gone:{name}",
                    functools.partial(self._gone, name),
                    forever=False,
                    replace=True,
                )
        for name, spec in sorted(wanted.items()):
            if name in self._nodes and self._nodes[name].node == spec:
                continue
            old = self._nodes.pop(name, None)
            if old is not None:
                self.workers.start(f"broker-publish-stop:{name}", old.worker.stop, forever=False)
            link = BrokerLink(
                host=spec.host,
                port=spec.port,
                username=self.username,
                password=self.password,
                client_id=f"{self.instance}-p-{name}",
                clean_session=True,
                subscriptions=[],
                handler=self.answers,
            )
            worker = self.workers.start(f"broker-publish:{name}", link.run, replace=True)
            self._nodes[name] = _Node(spec, link, worker)

    async def _resolve_loop(self) -> None:
        host, port = parse_address(self.dns)
        loop = asyncio.get_running_loop()
        while True:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("broker nodes: %s not resolved: %s", host, exc)
            else:
                addresses = sorted({str(info[4][0]) for info in infos})
                self._found = [BrokerNode(dns_node_name(a), a, port) for a in addresses]
                self._apply()
                self.resolved.set()
            await asyncio.sleep(DNS_INTERVAL)

    async def _gone(self, name: str) -> None:
        """A node this instance consumed left the list (withdrawn, no longer registered,
        removed from DNS): after the grace, the gateways still held online on it are taken
        for offline, unless it came back meanwhile (no one else consumes a node no longer
        listed)."""
        await asyncio.sleep(self.grace)
        if name not in self._nodes:
            log.warning(
                "broker node %s: gone for %g s, its gateways are taken for offline",
                name,
                self.grace,
            )
            await self.dead(name)

    async def _registered_loop(self) -> None:
        """Follow the nodes that register themselves (``mqtt.node_registration``): a node
        that registers is linked within ``REGISTERED_INTERVAL``, one that withdrew or stopped
        registering is dropped (its gateways, if they do not reconnect elsewhere, go offline
        after the grace, as for a node that dies)."""
        assert self.registered is not None
        while True:
            nodes = await self.registered()
            if nodes != self._registered:
                log.info("registered broker nodes: %s", ", ".join(map(str, nodes)) or "none")
                self._registered = nodes
                self._apply()
            self.resolved.set()
            await asyncio.sleep(REGISTERED_INTERVAL)

    def connected(self) -> bool:
        """At least one publishing link is up (readiness)."""
        return any(n.link.connected.is_set() for n in self._nodes.values())

    def link(self, node: str) -> BrokerLink:
        return self._nodes[node].link

    # --- publishing -----------------------------------------------------------------------

    def targets(self, device_uuid: str, node: str | None) -> list[str]:
        """The nodes to send a gateway's request to: its node if known here and reachable,
        else the one it was last heard through (if reachable), else every node (it is on
        one at most): a node that is down is stale news, its gateways are moving."""
        for candidate in (node, self.heard.get(device_uuid)):
            if candidate is not None and candidate in self._nodes:
                if self._nodes[candidate].link.connected.is_set():
                    return [candidate]
        return self.names

    async def publish(self, node: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
        target = self._nodes.get(node)
        if target is None:
            raise TransportError(f"no broker node {node}")
        await target.link.publish(topic, payload, retain=retain)

    @contextlib.asynccontextmanager
    async def listening(self, device_uuid: str, nodes: Sequence[str]) -> AsyncIterator[None]:
        """Hear ``device_uuid``'s answers through the publishing links of ``nodes`` meanwhile
        (those whose stream this instance consumes need nothing more)."""
        topic = topics.topic(device_uuid, topics.Channel.CLIENT)
        joined: list[_Node] = []
        try:
            for name in nodes:
                if name in self._consumers or name not in self._nodes:
                    continue
                node = self._nodes[name]
                count = node.listeners.get(device_uuid, 0)
                node.listeners[device_uuid] = count + 1
                joined.append(node)
                if count == 0:
                    await node.link.subscribe(topic)
            yield
        finally:
            for node in joined:
                count = node.listeners.get(device_uuid, 1) - 1
                if count > 0:
                    node.listeners[device_uuid] = count
                    continue
                node.listeners.pop(device_uuid, None)
                await node.link.unsubscribe(topic)

    # --- consuming (the leases held) ------------------------------------------------------

    @property
    def consumed(self) -> list[str]:
        return sorted(self._consumers)

    async def gained(self, name: str) -> None:
        """This instance holds ``name``'s lease: consume its stream."""
        spec = self._nodes.get(name)
        if spec is None or name in self._consumers:
            return
        handler = self.consume(name)

        async def heard(topic: str, payload: bytes, retained: bool, receipt: Receipt) -> None:
            if not retained:
                with contextlib.suppress(MessageError):
                    self.heard[topics.parse(topic)[0]] = name
            await handler(topic, payload, retained, receipt)

        loop = asyncio.get_running_loop()
        link = BrokerLink(
            host=spec.node.host,
            port=spec.node.port,
            username=self.username,
            password=self.password,
            client_id=f"edgefleet-node-{name}",
            clean_session=False,
            subscriptions=topics.server_subscriptions(),
            handler=heard,
            on_connect=lambda: self._up(name),
            on_disconnect=lambda: self._down(name),
        )
        worker = self.workers.start(f"broker-node:{name}", link.run, replace=True)
        self._consumers[name] = _Consumer(link, worker, loop.time())
        self._update_up()

    async def lost(self, name: str) -> None:
        """This instance no longer holds ``name``'s lease: stop consuming it at once."""
        consumer = self._consumers.pop(name, None)
        if consumer is not None:
            await consumer.worker.stop()
        self._update_up()

    def _up(self, name: str) -> None:
        consumer = self._consumers.get(name)
        if consumer is not None:
            if consumer.declared:
                log.info("broker node %s is back", name)
            consumer.down_since, consumer.declared = None, False
        self._update_up()
        if self.on_consumer_connect is not None:
            self.on_consumer_connect()

    def _down(self, name: str) -> None:
        consumer = self._consumers.get(name)
        if consumer is not None and consumer.down_since is None:
            consumer.down_since = asyncio.get_running_loop().time()
        self._update_up()

    def _update_up(self) -> None:
        if all(c.link.connected.is_set() for c in self._consumers.values()):
            self.consumers_up.set()
        else:
            self.consumers_up.clear()

    async def _grace_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(GRACE_CHECK)
            now = loop.time()
            for name, consumer in list(self._consumers.items()):
                down = consumer.down_since
                if consumer.declared or down is None or now - down < self.grace:
                    continue
                consumer.declared = True
                log.warning(
                    "broker node %s: down for %g s, its gateways are taken for offline",
                    name,
                    now - down,
                )
                await self.dead(name)
