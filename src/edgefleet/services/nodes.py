"""Broker-node leases: which server instance consumes each broker node's inbound stream.

With several independent broker nodes (``mqtt.nodes``), each node's stream (statuses,
answers, events) is consumed by exactly one instance at a time, so presence, properties,
results and events are handled once. The right to consume is a lease row in the database
(``broker_leases``, db/repos/nodes.py):

- every ``interval`` seconds an instance says it is alive (``server_instances``), renews its
  leases for ``ttl`` seconds, and takes free or expired ones, at most its fair share,
  ``ceil(nodes / live instances)`` (live: heard from within ``ttl``); one over its share it
  gives back, one a round, so a new instance gets its part;
- an instance that could not renew within its leases' life (the database unreachable, the
  process stalled) drops them at once (closes its consumers) before anyone may take them:
  it counts the life from *before* its renewal was sent, less a ``margin`` for clock skew;
- on a clean stop it gives its leases back, so they move at once; a dead instance's leases
  move when they expire (``ttl``).

What holding a lease means (opening the node's consumer link) is the owner's: ``gained`` and
``lost`` are awaited as leases come and go.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from prometheus_client import Gauge

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.nodes import NodeRepo
from edgefleet.domain.nodes import BrokerNode, fair_share, parse_node
from edgefleet.errors import ConflictError, EdgefleetError, ValidationError

log = logging.getLogger(__name__)

HELD = Gauge("edgefleet_broker_leases_held", "Broker-node leases this instance holds")
SHARED_ID = Gauge(
    "edgefleet_instance_id_shared",
    "1 while another server process heartbeats under this instance's id (a misconfiguration)",
)

Change = Callable[[str], Awaitable[None]]
FORGET_AFTER = timedelta(hours=1)
"""An instance not heard from for this long is dropped from ``server_instances``."""


class NodeLeases:
    """This instance's leases on broker nodes (``nodes()``: the nodes known now)."""

    def __init__(
        self,
        db: Database,
        instance: str,
        nodes: Callable[[], Sequence[str]],
        *,
        gained: Change,
        lost: Change,
        ttl: float = 10.0,
        interval: float = 3.0,
        margin: float = 1.0,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.instance = instance
        self.nodes = nodes
        self.gained = gained
        self.lost = lost
        self.ttl = ttl
        self.interval = interval
        self.margin = margin
        self.clock = clock
        self.held: set[str] = set()
        self.valid_until = 0.0
        """Loop time until which the leases held are surely this instance's."""
        self.changed = asyncio.Event()
        """Set at each change of ``held`` (tests wait on it)."""
        self.beat: datetime | None = None
        """The last heartbeat this process wrote (None: unknown, e.g. a round cut short)."""
        self.id_shared = False
        """Another process beats under this instance id (a misconfiguration)."""

    async def tick(self) -> None:
        """One round: heartbeat, renew, balance, take."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        now = self.clock()
        expires = now + timedelta(seconds=self.ttl)
        known = sorted(set(self.nodes()))
        previous, self.beat = self.beat, None
        async with self.db.session() as s:
            repo = NodeRepo(s)
            shared = await repo.heartbeat(self.instance, now, previous)
            live = await repo.live_instances(now - timedelta(seconds=self.ttl))
            kept = await repo.renew(self.instance, sorted(self.held), expires)
            await repo.forget_instances_before(now - FORGET_AFTER)
        self.beat = now
        self.valid_until = started + self.ttl - self.margin
        if previous is not None and shared != self.id_shared:
            self.id_shared = shared
            SHARED_ID.set(int(shared))
            if shared:
                log.error(
                    "another server process uses this instance id (%s): both renew the same "
                    "leases and their MQTT client ids collide; give each instance its own "
                    "EDGEFLEET_MQTT__CLIENT_ID (or host name)",
                    self.instance,
                )
        for node in sorted(self.held - kept):
            log.warning("broker node %s: lease lost to another instance", node)
            await self._drop(node)
        give_back = sorted(n for n in self.held if n not in known)
        share = fair_share(len(known), live)
        extra = len(self.held) - len(give_back) - share
        if extra > 0:  # one a round: the others have time to take it
            give_back.append(sorted(self.held - set(give_back))[-1])
        if give_back:
            for node in give_back:
                log.info("broker node %s: lease given back (share %d)", node, share)
                await self._drop(node)
            async with self.db.session() as s:
                await NodeRepo(s).release(self.instance, give_back)
        if len(self.held) >= share:
            return
        async with self.db.session() as s:
            leases = await NodeRepo(s).leases()
        free = [n for n in known if n not in self.held and (n not in leases or leases[n][1] < now)]
        for node in free[: share - len(self.held)]:
            async with self.db.session() as s:
                taken = await NodeRepo(s).take(self.instance, node, now, expires)
            if taken:
                log.info("broker node %s: lease taken", node)
                self.held.add(node)
                HELD.set(len(self.held))
                self.changed.set()
                await self.gained(node)

    async def _drop(self, node: str) -> None:
        self.held.discard(node)
        HELD.set(len(self.held))
        self.changed.set()
        await self.lost(node)

    async def drop_all(self) -> None:
        """Stop consuming every node held (the leases may not be ours any more)."""
        for node in sorted(self.held):
            await self._drop(node)

    async def run(self) -> None:
        """Keep the leases until cancelled; on cancellation they are given back."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                budget = self.valid_until - loop.time() if self.held else self.ttl
                try:
                    await asyncio.wait_for(self.tick(), max(0.1, budget))
                except (EdgefleetError, TimeoutError) as exc:
                    reason = exc.message if isinstance(exc, EdgefleetError) else "timed out"
                    log.warning("broker leases not renewed: %s", reason)
                if self.held and loop.time() >= self.valid_until:
                    log.warning("broker leases expired unrenewed: consumers closed")
                    await self.drop_all()
                wait = self.interval
                if self.held:
                    wait = min(wait, max(0.0, self.valid_until - loop.time()))
                await asyncio.sleep(wait)
        finally:
            await asyncio.shield(self.release())

    async def release(self) -> None:
        """Close the consumers, give the leases back and leave (a clean stop)."""
        await self.drop_all()
        try:
            async with self.db.session() as s:
                repo = NodeRepo(s)
                await repo.release(self.instance)
                await repo.forget_instance(self.instance)
        except EdgefleetError as exc:
            log.warning("broker leases not given back (they expire): %s", exc.message)


REGISTRATION_TTL = timedelta(seconds=30)
"""A registered node not heard from for this long is no longer a node (a node registers at
every key sync, every 5 s by default)."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class NodeRegistry:
    """Broker nodes that register themselves (``mqtt.node_registration``).

    Whoever holds the broker token (every broker node) may register, so what a registration
    may point the servers at is bounded (docs/scaling.md): an IP address in ``networks``
    (never link-local, multicast or unspecified), at most ``limit`` live nodes, and a name
    a live node holds keeps its address until it is withdrawn or expires."""

    def __init__(
        self,
        db: Database,
        *,
        networks: Sequence[Network] = (),
        limit: int = 100,
        ttl: timedelta = REGISTRATION_TTL,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.networks = list(networks)
        self.limit = limit
        self.ttl = ttl
        self.clock = clock

    def check_address(self, host: str) -> None:
        """``ValidationError`` unless ``host`` is an IP address a node may register."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValidationError(
                f"{host!r}: a node registers an IP address, not a host name"
            ) from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
            raise ValidationError(f"{host}: a link-local, multicast or reserved address")
        if not any(ip in net for net in self.networks if net.version == ip.version):
            raise ValidationError(
                f"{host} is outside the networks nodes may register in (mqtt.node_networks)"
            )

    async def register(self, name: str, address: str) -> BrokerNode:
        """Record that node ``name`` is up at ``address`` (``host:port``): ``ValidationError``
        for a name or an address that is not one or not allowed; ``ConflictError`` for a
        name a live node holds at another address, or one node over ``limit``."""
        try:
            node = parse_node(f"{name}={address}")
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        if len(node.name) > 63 or len(node.host) > 255:
            raise ValidationError("a node's name is at most 63 characters, its host 255")
        self.check_address(node.host)
        now = self.clock()
        async with self.db.session() as s:
            repo = NodeRepo(s)
            outcome = await repo.register(
                node.name, node.host, node.port, now, live_since=now - self.ttl, limit=self.limit
            )
        if outcome == "taken":
            raise ConflictError(
                f"node {node.name} is registered at another address; it moves once withdrawn "
                f"or after {int(self.ttl.total_seconds())} s unheard"
            )
        if outcome == "full":
            raise ConflictError(
                f"{self.limit} nodes are registered already (mqtt.max_registered_nodes)"
            )
        return node

    async def withdraw(self, name: str) -> bool:
        async with self.db.session() as s:
            return await NodeRepo(s).withdraw(name)

    async def live(self) -> list[BrokerNode]:
        """The nodes registered within ``ttl`` at an address allowed now; older registrations
        are forgotten."""
        now = self.clock()
        async with self.db.session() as s:
            repo = NodeRepo(s)
            await repo.forget_registered_before(now - FORGET_AFTER)
            rows = await repo.registered(now - self.ttl)
        nodes = []
        for name, host, port in rows:
            try:  # written before these networks were set, or by a server with others
                self.check_address(host)
            except ValidationError as exc:
                log.warning("registered broker node %s ignored: %s", name, exc.message)
                continue
            nodes.append(BrokerNode(name, host, port))
        return nodes
