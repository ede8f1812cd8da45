"""Presence and cached properties of gateways, from what they publish.

``PresenceMonitor`` holds the presence rules beyond what gateways publish: reconciliation
after a broker (re)connection, the sweep of silent gateways, the heal of gateways heard while
held offline, each by probing the gateway through the MQTT transport.

Status messages and property updates are queued and written in batches (one statement for
many gateways), so a reconnect storm of thousands of gateways costs a few transactions, not
thousands. Within a batch the last status of each gateway wins and its property updates are
folded in arrival order, which keeps MQTT's per-topic order. A database outage is waited
out; a gateway's row the database refuses (a NUL in a property on PostgreSQL) is set aside
and the rest of its batch written (services/batches.py), so nothing a gateway sends can stop
presence for the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Histogram

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.domain.devices import ConnectionStatus
from edgefleet.domain.events import status_event
from edgefleet.errors import EdgefleetError
from edgefleet.services.batches import BatchWriter
from edgefleet.services.events import EventService
from edgefleet.workers import Worker, Workers

log = logging.getLogger(__name__)

WRITTEN = Counter(
    "edgefleet_presence_rows_written_total",
    "Gateway rows written by the presence writer",
    ["kind"],  # status | properties
)
BATCH_SECONDS = Histogram(
    "edgefleet_presence_batch_seconds",
    "Time to write one presence batch",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

K = TypeVar("K")
V = TypeVar("V")

PROPERTIES = "/system/properties"


@dataclass
class _PendingProperties:
    whole: bool
    """True: ``values`` is the gateway's whole object; False: keys to set on the stored one."""
    values: dict[str, Any]


def _take(pending: dict[K, V], limit: int) -> dict[K, V]:
    """Remove and return up to ``limit`` of the oldest entries."""
    if len(pending) <= limit:
        batch = dict(pending)
        pending.clear()
        return batch
    keys = list(itertools.islice(pending, limit))
    return {k: pending.pop(k) for k in keys}


@dataclass(frozen=True)
class PropertyChange:
    device_uuid: str
    key: str | None
    """The property set, or None when the whole object was replaced."""
    value: Any


class PresenceService:
    """Queues statuses and property updates and writes them in batches, from one task.

    One writer keeps each gateway's updates in arrival order and never has two of its own
    transactions waiting on each other's rows; rows are written in uuid order, so several
    server instances lock them in the same order too.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock = utcnow,
        *,
        batch_size: int = 5000,
        batch_delay: float = 0.05,
        properties_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.properties_interval = properties_interval
        """Property updates are written at most this often (statuses at every batch): a
        gateway's changes within it fold into one row write."""
        self._statuses: dict[str, tuple[bool, str | None]] = {}
        """Each gateway's latest status, and the broker node it came through (or None)."""
        self._properties: dict[str, _PendingProperties] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0
        self.properties_written = 0
        self._batches = BatchWriter(db, "presence-writer")

    def apply_status(self, device_uuid: str, online: bool, node: str | None = None) -> None:
        """Record a status message; written by ``run`` shortly after (the latest wins).
        ``node``: the broker node it came through, written with it (broker nodes only)."""
        self._statuses.pop(device_uuid, None)
        self._statuses[device_uuid] = (online, node)
        self._pending()

    def replace_properties(self, device_uuid: str, properties: dict[str, Any]) -> None:
        """Record a gateway's whole properties object (its answer to ``GET
        /system/properties``); written shortly after."""
        self._properties[device_uuid] = _PendingProperties(True, dict(properties))
        self._pending()

    def apply_property_event(
        self, device_uuid: str, method: str, resource: str, data: Any
    ) -> PropertyChange | None:
        """``PUT /system/properties/<key>`` or ``/system/properties`` events update the cache."""
        if method not in ("put", "post") or not resource.startswith(PROPERTIES):
            return None
        rest = resource[len(PROPERTIES) :].split("?", 1)[0].strip("/")
        if not rest:
            if not isinstance(data, dict):
                return None
            patch = data
            key = None
        else:
            key = rest.split("/", 1)[0]
            # the gateway's own REST body is {"data": value}; events carry the value itself
            value = data["data"] if isinstance(data, dict) and set(data) == {"data"} else data
            patch = {key: value}
        pending = self._properties.setdefault(device_uuid, _PendingProperties(False, {}))
        pending.values.update(patch)
        self._pending()
        return PropertyChange(device_uuid, key, patch if key is None else patch[key])

    def _pending(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    async def run(self) -> None:
        """Write what is queued in batches until cancelled; a database outage is retried."""
        loop = asyncio.get_running_loop()
        properties_due = 0.0
        if self._statuses or self._properties:  # queued before a start or a restart
            self._wakeup.set()
        while True:
            if self._properties and not self._statuses:
                # only properties wait: until a status comes or they are due
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wakeup.wait(), max(0.0, properties_due - loop.time())
                    )
            else:
                await self._wakeup.wait()
            await asyncio.sleep(self.batch_delay)  # let a batch gather
            self._wakeup.clear()
            statuses = _take(self._statuses, self.batch_size)
            if statuses:
                await self._batches.write(
                    sorted(statuses.items()), self._write_statuses, _describe_status
                )
            if self._properties and (
                loop.time() >= properties_due or len(self._properties) >= self.batch_size
            ):
                properties = _take(self._properties, self.batch_size)
                await self._batches.write(
                    sorted(properties.items()), self._write_properties, _describe_properties
                )
                properties_due = loop.time() + self.properties_interval
            if self._statuses:
                self._wakeup.set()
            elif not self._properties:
                self._idle.set()

    async def _write_statuses(self, batch: Sequence[tuple[str, tuple[bool, str | None]]]) -> None:
        """``(uuid, (online, node))`` pairs in uuid order."""
        rows = [
            (uuid, (ConnectionStatus.ONLINE if online else ConnectionStatus.OFFLINE).value)
            for uuid, (online, node) in batch
            if node is None
        ]
        on_nodes = [
            (uuid, (ConnectionStatus.ONLINE if online else ConnectionStatus.OFFLINE).value, node)
            for uuid, (online, node) in batch
            if node is not None
        ]
        with BATCH_SECONDS.labels("status").time():
            async with self.db.session() as s:
                repo = DeviceRepo(s)
                await repo.set_statuses(rows, self.clock())
                await repo.set_statuses_on_nodes(
                    on_nodes, self.clock(), online=ConnectionStatus.ONLINE.value
                )
        self.written += len(batch)
        WRITTEN.labels("status").inc(len(batch))

    async def _write_properties(self, batch: Sequence[tuple[str, _PendingProperties]]) -> None:
        """``(uuid, pending)`` pairs in uuid order."""
        with BATCH_SECONDS.labels("properties").time():
            rows = await self._store_properties(batch)
        self.properties_written += len(rows)
        WRITTEN.labels("properties").inc(len(rows))

    async def _store_properties(
        self, batch: Sequence[tuple[str, _PendingProperties]]
    ) -> list[tuple[str, dict[str, Any]]]:
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            patch_only = [u for u, p in batch if not p.whole]
            current = await repo.properties_of(patch_only) if patch_only else {}
            rows: list[tuple[str, dict[str, Any]]] = []
            for uuid, pending in batch:
                if pending.whole:
                    rows.append((uuid, pending.values))
                elif uuid in current:  # an unknown device has nothing to update
                    rows.append((uuid, {**current[uuid], **pending.values}))
            await repo.set_many_properties(rows, self.clock())
        return rows

    async def statuses_of(self, device_uuids: Sequence[str]) -> dict[str, str]:
        """The stored connection status of each of these gateways that exists."""
        async with self.db.session() as s:
            return await DeviceRepo(s).statuses_of(device_uuids)

    async def online_uuids(self, nodes: Sequence[str] | None = None) -> list[str]:
        """Gateways the database holds online (``nodes``: of these broker nodes only)."""
        async with self.db.session() as s:
            return await DeviceRepo(s).uuids_with_status(ConnectionStatus.ONLINE.value, nodes)

    async def node_lost(self, node: str) -> list[str]:
        """A broker node died: every gateway still held online on it is set offline (once
        what is queued is written: a ``1`` through another node has moved it there); their
        uuids."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained(), 10)
        async with self.db.session() as s:
            lost = await DeviceRepo(s).offline_on_node(
                node, ConnectionStatus.OFFLINE.value, self.clock()
            )
        self.written += len(lost)
        WRITTEN.labels("status").inc(len(lost))
        return lost

    async def drained(self) -> None:
        """Wait until every queued status is written (tests, shutdown)."""
        await self._idle.wait()


def _describe_status(item: tuple[str, tuple[bool, str | None]]) -> str:
    return f"status {'online' if item[1][0] else 'offline'} of {item[0]}"


def _describe_properties(item: tuple[str, _PendingProperties]) -> str:
    return f"properties of {item[0]}"


PROBES = Counter(
    "edgefleet_presence_probes_total",
    "Gateways probed for presence",
    ["reason", "outcome"],  # reconcile | sweep | heal; answered | silent | unjudged
)
SWEEP_IN_FLIGHT = 500
RECONCILE_IN_FLIGHT = 5000
"""Probes at once after a (re)connection to the broker: all of a large fleet believed online
at once (69,868 after a restart, none connected) burst the link's queue and lost the link,
which started the reconciliation again; 5,000 settle 70,000 silent gateways in about 14
probe timeouts."""
"""Probes of one sweep waiting for their answers at once."""
HEAL_GATHER = 0.5
"""Seconds the heal waits after a first candidate, so a burst costs one status query."""
HEAL_RETRY = 60.0
"""A gateway probed by the heal in vain is not probed again by it for this long."""
ANSWERED, SILENT, UNJUDGED = "answered", "silent", "unjudged"


class Probe(Protocol):
    """Asks a gateway for its properties (the answer is stored as they are); True if it
    answered within ``wait`` seconds (mqtt/router.py ``InboundRouter.probe``)."""

    def __call__(self, device_uuid: str, wait: float) -> Awaitable[bool]: ...


class OnlineSink(Protocol):
    """Told when a gateway is back online (the task engine, services/engine/)."""

    def online(self, device_uuid: str) -> None: ...


class PresenceMonitor:
    """The presence rules: what the server believes of a gateway's connection, beyond the
    statuses it publishes (the inbound router tells it what it hears; the writes go through
    ``PresenceService``).

    Presence after a (re)connection to the broker is reconciled, because the broker's state
    can disagree with the database: a broker restart publishes no wills, and a retained ``0``
    can be stale (a gateway that reconnected and did not retain its ``1``). So a retained
    ``0`` is not believed at once. After a (re)connection the monitor waits ``grace`` seconds,
    then until the reconnect storm has settled (gateways said ``1`` and then none for
    ``quiet`` seconds; ``settle_max`` when none says anything, as after a restart of the
    server alone, when connected gateways have no reason to), and probes every gateway the
    database holds online but that has not said ``1`` since with ``GET /system/properties``:
    an answer keeps it online, silence (``probe_timeout``) marks it offline. Waiting for the
    storm first sends the probes to the few gateways that did not come back, not to
    thousands still reconnecting.

    Some brokers publish no wills at all for the clients of a cluster node that died, while
    the server's own connection, on another node, never drops. So every ``sweep_interval``
    seconds (0: never) the monitor also probes the gateways the database holds online that it
    has not heard from (any live message) for that long, at most ``SWEEP_IN_FLIGHT`` at once,
    with the same verdicts. A silence is judged only if the broker link stayed up throughout.

    Presence also **heals**: a gateway that publishes a live response or event while the
    database holds it offline (a stale will, a probe that timed out, a write set aside) is
    probed the same way, and brought back online (status, ``device_online`` event, the task
    engine told) when it answers. Candidates are those this process has not seen online
    (``1``, an answered probe, or the database saying so); they are checked in bursts with
    one status query, and one that does not answer is left alone for ``HEAL_RETRY`` seconds.

    The sweep, the heal and each reconciliation are workers of ``workers``.
    """

    def __init__(
        self,
        presence: PresenceService,
        probe: Probe,
        *,
        grace: float = 3.0,
        quiet: float = 2.0,
        settle_max: float = 30.0,
        probe_timeout: float = 10.0,
        sweep_interval: float = 0.0,
        heal: bool = True,
        workers: Workers | None = None,
        tasks: OnlineSink | None = None,
        events: EventService | None = None,
    ) -> None:
        """``tasks``: the task engine, told each gateway found online. ``events``: where the
        status changes found are stored."""
        self.presence = presence
        self.probe = probe
        self.grace = grace
        self.quiet = quiet
        self.settle_max = settle_max
        self.probe_timeout = probe_timeout
        self.sweep_interval = sweep_interval
        self.heal_enabled = heal
        self.workers = workers if workers is not None else Workers()
        self._last_online: float | None = None
        """Loop time of the latest ``1`` since the last connection to the broker."""
        self._said_online: set[str] = set()
        """Gateways that said ``1`` since the last connection to the broker."""
        self._heard: dict[str, float] = {}
        """Loop time of the latest live (not retained) message from each gateway."""
        self._connections = 0
        self._reconciler: Worker | None = None
        self._present: set[str] = set()
        """Gateways this process knows to be online: no heal needed."""
        self._heal_pending: set[str] = set()
        self._heal_tried: dict[str, float] = {}
        """Loop time each gateway was last probed by the heal."""
        self._heal_wake = asyncio.Event()
        self._said_offline: dict[str, float] = {}
        """Loop time of each gateway's latest live ``0``."""
        self.healed = 0
        self.reconciled = asyncio.Event()
        self.tasks = tasks
        self.events = events
        self.scope: Callable[[], Sequence[str]] | None = None
        """Set by the composition root with broker nodes: the nodes this instance consumes.
        The reconciliation and the sweep judge only the gateways held online on them."""
        self.link_up: asyncio.Event | None = None
        """Set by the composition root (the link tells this monitor it connected): the broker
        link's ``connected`` flag. A probe that times out while it is clear judges nothing
        (the request may never have left)."""

    # --- what the router hears ----------------------------------------------------------

    def connected(self) -> None:
        """The broker link (re)connected and subscribed: reconcile presence shortly."""
        self._said_online.clear()
        self._last_online = None
        self._connections += 1
        self.reconciled.clear()
        self._reconciler = self.workers.start(
            "presence-reconcile", self._reconcile, forever=False, replace=True
        )

    def heard(self, device_uuid: str) -> None:
        """A live (not retained) message came from this gateway."""
        self._heard[device_uuid] = asyncio.get_running_loop().time()

    def status(
        self, device_uuid: str, online: bool, retained: bool, node: str | None = None
    ) -> None:
        """A gateway published its status (through broker node ``node``, if any): presence
        moves (a retained ``0`` may be stale: the reconciliation probes that gateway
        instead)."""
        if online:
            self._said_online.add(device_uuid)
            self._last_online = asyncio.get_running_loop().time()
            self.presence.apply_status(device_uuid, True, node)
        elif not retained:
            self._said_online.discard(device_uuid)
            self.presence.apply_status(device_uuid, False, node)
        if not retained:
            self._live_status(device_uuid, online)

    def limited_status(self, device_uuid: str, online: bool, node: str | None = None) -> None:
        """A live status over its gateway's rate: presence still moves (the fleet's view must
        stay right), without counting as the end of a reconnect storm."""
        if online:
            self._said_online.add(device_uuid)
        else:
            self._said_online.discard(device_uuid)
        self._live_status(device_uuid, online)
        self.presence.apply_status(device_uuid, online, node)

    def spoke(self, device_uuid: str) -> None:
        """A live message (not a status) came from this gateway: have it checked unless it
        is known online, already queued, or was probed in vain a moment ago."""
        if not self.heal_enabled or device_uuid in self._present:
            return
        if device_uuid in self._heal_pending:
            return
        tried = self._heal_tried.get(device_uuid)
        now = asyncio.get_running_loop().time()
        if tried is not None and now - tried < HEAL_RETRY:
            return
        self._heal_pending.add(device_uuid)
        self._heal_wake.set()

    def _live_status(self, device_uuid: str, online: bool) -> None:
        """What the heal keeps of a live status: known online, or when it said ``0``."""
        if online:
            self._present.add(device_uuid)
        else:
            self._present.discard(device_uuid)
            self._said_offline[device_uuid] = asyncio.get_running_loop().time()

    async def _believed(self) -> list[str]:
        """The gateways held online that this instance judges (with broker nodes: those on
        the nodes it consumes)."""
        if self.scope is None:
            return await self.presence.online_uuids()
        return await self.presence.online_uuids(list(self.scope()))

    async def node_dead(self, node: str) -> None:
        """A broker node this instance consumes has been down past its grace: the gateways
        still held online on it go offline, each with its ``device_offline`` event (those
        that came back through another node have that node by now)."""
        lost = await self.presence.node_lost(node)
        if lost:
            log.warning("broker node %s is down: %d gateways marked offline", node, len(lost))
        for device_uuid in lost:
            self._present.discard(device_uuid)
            self._said_online.discard(device_uuid)
            if self.events is not None:
                self.events.emit(status_event(device_uuid, False, self.events.clock()))

    async def close(self) -> None:
        """Stop reconciling (shutdown)."""
        if self._reconciler is not None:
            await self._reconciler.stop()

    # --- reconcile, sweep, heal ---------------------------------------------------------

    async def _reconcile(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.grace)
        settled_by = loop.time() + self.settle_max
        while True:  # until `quiet` seconds after the latest "1" (once one came), or settled_by
            last = self._last_online
            wait = min(settled_by, last + self.quiet if last is not None else settled_by)
            if wait <= loop.time():
                break
            await asyncio.sleep(min(wait - loop.time(), self.quiet))
        try:
            await self.presence.drained()
            believed = await self._believed()
        except EdgefleetError as exc:
            log.warning("presence not reconciled: %s", exc.message)
            return
        doubtful = [u for u in believed if u not in self._said_online]
        if doubtful:
            log.info("presence: probing %d gateways after the broker connection", len(doubtful))
        await self._probe_all(doubtful, "reconcile", in_flight=RECONCILE_IN_FLIGHT)
        await self.presence.drained()
        self.reconciled.set()

    async def sweep(self) -> None:
        """Every ``sweep_interval`` seconds (0: return at once), probe the gateways the
        database holds online that have said nothing live for that long (one never heard
        counts from the start of the sweep). Skipped while a reconciliation runs, or while
        the broker link is down. Runs until cancelled."""
        if not self.sweep_interval:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(self.sweep_interval)
            if self._reconciler is not None and not self._reconciler.done():
                continue  # it probes the doubtful ones itself
            if self.link_up is not None and not self.link_up.is_set():
                continue
            # statuses queued now are written first; bounded, since a writer kept busy by
            # property events is rarely idle (and a gateway queued now was heard anyway)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_timeout):
                    await self.presence.drained()
            try:
                believed = await self._believed()
            except EdgefleetError as exc:
                log.warning("presence not swept: %s", exc.message)
                continue
            cutoff = loop.time() - self.sweep_interval
            quiet = [u for u in believed if self._heard.get(u, started) <= cutoff]
            if quiet:
                log.info(
                    "presence: probing %d gateways not heard from for %g s",
                    len(quiet),
                    self.sweep_interval,
                )
                await self._probe_all(quiet, "sweep", in_flight=SWEEP_IN_FLIGHT)

    async def _probe_all(self, device_uuids: list[str], reason: str, *, in_flight: int) -> None:
        """Probe gateways, at most ``in_flight`` at once; count and log the outcomes."""
        since, connections = asyncio.get_running_loop().time(), self._connections
        outcomes = dict.fromkeys((ANSWERED, SILENT, UNJUDGED), 0)
        pending = iter(device_uuids)

        async def prober() -> None:
            for device_uuid in pending:  # shared: each gateway is taken by one prober
                outcomes[await self._probe(device_uuid, since, connections)] += 1

        await asyncio.gather(*(prober() for _ in range(min(in_flight, len(device_uuids)))))
        for outcome, n in outcomes.items():
            PROBES.labels(reason, outcome).inc(n)
        if outcomes[SILENT]:
            log.info("presence: %d probed gateways did not answer: offline", outcomes[SILENT])

    async def _probe(self, device_uuid: str, since: float, connections: int) -> str:
        """Ask a gateway for its properties. ``answered`` (or heard from after ``since``);
        ``silent``: marked offline; ``unjudged``: the broker link was lost or renewed since
        ``connections``, so the silence proves nothing."""
        if self._heard_since(device_uuid, since):
            return ANSWERED  # it spoke while others were probed
        if connections != self._connections:
            return UNJUDGED
        answered = await self.probe(device_uuid, self.probe_timeout)
        if answered or self._heard_since(device_uuid, since):
            self._present.add(device_uuid)
            return ANSWERED
        if connections != self._connections or (
            self.link_up is not None and not self.link_up.is_set()
        ):
            return UNJUDGED
        self._present.discard(device_uuid)
        self.presence.apply_status(device_uuid, False)
        if self.events is not None:
            self.events.emit(status_event(device_uuid, False, self.events.clock()))
        return SILENT

    async def heal(self) -> None:
        """Probe the gateways that spoke while the database holds them offline, and bring
        back online those that answer. Runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._heal_wake.wait()
            await asyncio.sleep(HEAL_GATHER)
            self._heal_wake.clear()
            candidates, self._heal_pending = sorted(self._heal_pending), set()
            # the statuses queued before these messages are written first (bounded: a
            # writer kept busy by property events is rarely idle)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_timeout):
                    await self.presence.drained()
            try:
                stored = await self.presence.statuses_of(candidates)
            except EdgefleetError as exc:
                log.warning("presence not healed: %s", exc.message)
                continue
            offline = []
            for device_uuid, status in stored.items():
                if status == ConnectionStatus.ONLINE.value:
                    self._present.add(device_uuid)
                elif device_uuid not in self._present:  # unless it said "1" meanwhile
                    offline.append(device_uuid)
            if not offline:
                continue
            since = loop.time()
            for device_uuid in offline:
                self._heal_tried[device_uuid] = since
            log.info("presence: probing %d gateways heard while held offline", len(offline))
            answered = await asyncio.gather(
                *(self._heal(u, since) for u in offline[:SWEEP_IN_FLIGHT])
            )
            self._heal_pending.update(offline[SWEEP_IN_FLIGHT:])  # the rest next round
            if self._heal_pending:
                self._heal_wake.set()
            PROBES.labels("heal", ANSWERED).inc(sum(answered))
            PROBES.labels("heal", SILENT).inc(len(answered) - sum(answered))

    async def _heal(self, device_uuid: str, since: float) -> bool:
        """Probe one gateway held offline; True (and online again) if it answered and has
        not said ``0`` since the probe began."""
        if not await self.probe(device_uuid, self.probe_timeout):
            return False
        if self._said_offline.get(device_uuid, float("-inf")) >= since:
            return False  # it answered, then left: the "0" is the newer news
        if device_uuid in self._present:
            return True  # it said "1" meanwhile, which did all this
        self._present.add(device_uuid)
        self._heal_tried.pop(device_uuid, None)
        self.healed += 1
        log.info("presence: %s answered while held offline: online", device_uuid)
        self.presence.apply_status(device_uuid, True)
        if self.tasks is not None:
            self.tasks.online(device_uuid)
        if self.events is not None:
            self.events.emit(status_event(device_uuid, True, self.events.clock()))
        return True

    def _heard_since(self, device_uuid: str, since: float) -> bool:
        heard = self._heard.get(device_uuid)
        return heard is not None and heard >= since
