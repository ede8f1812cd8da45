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

from edgefleet.domain.devices import ConnectionStatus
from edgefleet.domain.events import rate_limited_event, status_event
from edgefleet.errors import EdgefleetError, MessageError
from edgefleet.mqtt import topics
from edgefleet.mqtt.client import Receipt
from edgefleet.mqtt.limits import GatewayLog, GatewayRate
from edgefleet.mqtt.messages import EventMessage, ResponseMessage, decode_client, decode_status
from edgefleet.mqtt.relay import GatewayRelay
from edgefleet.services.events import EventService
from edgefleet.services.presence import PresenceService
from edgefleet.workers import Worker, Workers

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
PROBES = Counter(
    "edgefleet_presence_probes_total",
    "Gateways probed for presence",
    ["reason", "outcome"],  # reconcile | sweep | heal; answered | silent | unjudged
)

PROPERTIES_TIMEOUT = 30.0
SWEEP_IN_FLIGHT = 500
"""Probes of one sweep waiting for their answers at once."""
HEAL_GATHER = 0.5
"""Seconds the heal waits after a first candidate, so a burst costs one status query."""
HEAL_RETRY = 60.0
"""A gateway probed by the heal in vain is not probed again by it for this long."""
ANSWERED, SILENT, UNJUDGED = "answered", "silent", "unjudged"


class TaskSink(Protocol):
    """What the task engine wants to hear of gateways (see services/engine/)."""

    def response(self, device_uuid: str, message: ResponseMessage) -> None: ...
    def event(self, device_uuid: str, message: EventMessage) -> None: ...
    def online(self, device_uuid: str) -> None: ...
    def properties(self, device_uuid: str, properties: dict[str, Any]) -> None: ...


class InboundRouter:
    """Routes each message by channel; on every ``1`` it refreshes the gateway's properties.

    Presence after a (re)connection to the broker is reconciled, because the broker's state
    can disagree with the database: a broker restart publishes no wills, and a retained ``0``
    can be stale (a gateway that reconnected and did not retain its ``1``). So a retained
    ``0`` is not believed at once. After a (re)connection the router waits ``grace`` seconds,
    then until the reconnect storm has settled (gateways said ``1`` and then none for
    ``quiet`` seconds; ``settle_max`` when none says anything, as after a restart of the
    server alone, when connected gateways have no reason to), and probes every gateway the
    database holds online but that has not said ``1`` since with ``GET /system/properties``:
    an answer keeps it online, silence (``probe_timeout``) marks it offline. Waiting for the
    storm first sends the probes to the few gateways that did not come back, not to
    thousands still reconnecting.

    Some brokers publish no wills at all for the clients of a cluster node that died, while
    the server's own connection, on another node, never drops. So every ``sweep_interval``
    seconds (0: never) the router also probes the gateways the database holds online that it
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
        relay: GatewayRelay,
        *,
        grace: float = 3.0,
        quiet: float = 2.0,
        settle_max: float = 30.0,
        probe_timeout: float = 10.0,
        sweep_interval: float = 0.0,
        rate: GatewayRate | None = None,
        alarm_period: float = 300.0,
        heal: bool = True,
        workers: Workers | None = None,
    ) -> None:
        self.presence = presence
        self.relay = relay
        self.grace = grace
        self.quiet = quiet
        self.settle_max = settle_max
        self.probe_timeout = probe_timeout
        self.sweep_interval = sweep_interval
        self.heal_enabled = heal
        self.workers = workers if workers is not None else Workers()
        self._refreshing: set[asyncio.Task[bool]] = set()
        self._refresh_ids: dict[str, str] = {}
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
        self.tasks: TaskSink | None = None
        """Set by the composition root once the task engine exists."""
        self.events: EventService | None = None
        """Set by the composition root: gateway events and status changes are stored there
        (and their MQTT deliveries acknowledged once stored)."""
        self.link_up: asyncio.Event | None = None
        """Set by the composition root: the broker link's ``connected`` flag. A probe that
        times out while it is clear judges nothing (the request may never have left)."""
        self.clear_retained: Callable[[str], Awaitable[None]] | None = None
        """Set by the composition root: publish an empty retained message to a topic."""
        self.rate = rate if rate is not None else GatewayRate(0, 1)
        self.alarm_period = alarm_period
        self._alarmed: dict[str, float] = {}
        """Loop time of each gateway's latest rate-limit alarm."""
        self.gateway_log = GatewayLog(log)
        self._chores: set[asyncio.Task[None]] = set()

    def connected(self) -> None:
        """The broker link (re)connected and subscribed: reconcile presence shortly."""
        self._said_online.clear()
        self._last_online = None
        self._connections += 1
        self.reconciled.clear()
        self._reconciler = self.workers.start(
            "presence-reconcile", self._reconcile, forever=False, replace=True
        )

    async def close(self) -> None:
        """Stop reconciling and refreshing (shutdown)."""
        if self._reconciler is not None:
            await self._reconciler.stop()
        tasks = [*self._refreshing, *self._chores]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.gateway_log.close()

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
            believed = await self.presence.online_uuids()
        except EdgefleetError as exc:
            log.warning("presence not reconciled: %s", exc.message)
            return
        doubtful = [u for u in believed if u not in self._said_online]
        if doubtful:
            log.info("presence: probing %d gateways after the broker connection", len(doubtful))
        await self._probe_all(doubtful, "reconcile", in_flight=len(doubtful))
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
                await asyncio.wait_for(self.presence.drained(), self.probe_timeout)
            try:
                believed = await self.presence.online_uuids()
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
        answered = await self._refresh_properties(device_uuid, wait=self.probe_timeout, quiet=True)
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

    def _heal_candidate(self, device_uuid: str, now: float) -> None:
        """A live message (not a status) came from this gateway: have it checked unless it
        is known online, already queued, or was probed in vain a moment ago."""
        if not self.heal_enabled or device_uuid in self._present:
            return
        if device_uuid in self._heal_pending:
            return
        tried = self._heal_tried.get(device_uuid)
        if tried is not None and now - tried < HEAL_RETRY:
            return
        self._heal_pending.add(device_uuid)
        self._heal_wake.set()

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
                await asyncio.wait_for(self.presence.drained(), self.probe_timeout)
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
        if not await self._refresh_properties(device_uuid, wait=self.probe_timeout, quiet=True):
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

    async def __call__(
        self, topic: str, payload: bytes, retained: bool, receipt: Receipt | None = None
    ) -> None:
        """Handle one message; never raises (a bug is logged, counted ``failed``)."""
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
                self._clear(topic)
                raise MessageError(
                    "retained message on a client topic: cleared from the broker, not stored",
                    RETAINED,
                )
            if not retained:
                self._heard[device_uuid] = asyncio.get_running_loop().time()
                if not self.rate.allow(device_uuid):
                    self._over_rate(device_uuid, channel, payload)
                    raise MessageError(
                        f"over the gateway's rate of {self.rate.rate:g} messages/s", RATE_LIMITED
                    )
            if channel is topics.Channel.STATUS:
                await self._status(device_uuid, decode_status(payload), retained, receipt)
            else:
                await self._client_message(device_uuid, payload, receipt)
                self._heal_candidate(device_uuid, asyncio.get_running_loop().time())
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
        self, device_uuid: str, online: bool, retained: bool, receipt: Receipt | None
    ) -> None:
        if online:
            self._said_online.add(device_uuid)
            self._last_online = asyncio.get_running_loop().time()
            self.presence.apply_status(device_uuid, True)
        elif not retained:
            self._said_online.discard(device_uuid)
            self.presence.apply_status(device_uuid, False)
        # a retained "0" may be stale: the reconciliation probes that gateway
        if not retained:
            self._live_status(device_uuid, online)
            if online:
                self._refresh(device_uuid)
                if self.tasks is not None:
                    self.tasks.online(device_uuid)
            if self.events is not None:
                await self.events.status(device_uuid, online, receipt)

    def _live_status(self, device_uuid: str, online: bool) -> None:
        """What the heal keeps of a live status: known online, or when it said ``0``."""
        if online:
            self._present.add(device_uuid)
        else:
            self._present.discard(device_uuid)
            self._said_offline[device_uuid] = asyncio.get_running_loop().time()

    def _over_rate(self, device_uuid: str, channel: topics.Channel, payload: bytes) -> None:
        """A message over the gateway's rate is dropped; a status still moves presence (the
        fleet's view must stay right, and that costs one folded row), without its event,
        properties refresh or task wake-up. One alarm (and one warning) per period."""
        if channel is topics.Channel.STATUS:
            with contextlib.suppress(MessageError):
                online = decode_status(payload)
                if online:
                    self._said_online.add(device_uuid)
                else:
                    self._said_online.discard(device_uuid)
                self._live_status(device_uuid, online)
                self.presence.apply_status(device_uuid, online)
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

    def _clear(self, topic: str) -> None:
        """Publish an empty retained message to ``topic`` (in the background: the consumer
        must not wait for the broker's answer)."""
        clear = self.clear_retained
        if clear is None:
            return

        async def run() -> None:
            try:
                await clear(topic)
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
            if self._refresh_ids.pop(message.task_id, None) == device_uuid:
                # written here, in arrival order, so a later property event is not overwritten
                if message.code == 200 and isinstance(message.data, dict):
                    self.presence.replace_properties(device_uuid, message.data)
                    if self.tasks is not None:
                        self.tasks.properties(device_uuid, message.data)
                else:
                    log.info("properties of %s: gateway answered %s", device_uuid, message.code)
            if not self.relay.resolve(device_uuid, message) and self.tasks is not None:
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

    def _refresh(self, device_uuid: str) -> None:
        # one request and its answer, not a loop: no worker
        task = asyncio.create_task(  # noqa: TID251
            self._refresh_properties(device_uuid), name=f"properties:{device_uuid}"
        )
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def read_properties(
        self, device_uuid: str, method: str, resource: str, data: Any = None, *, wait: float
    ) -> ResponseMessage:
        """Relay ``GET /system/properties`` to a gateway and return its answer, which is also
        stored as the gateway's properties (in arrival order, as a refresh's is), so what a
        user reads is what the server holds."""
        task_id = str(uuidlib.uuid4())
        self._refresh_ids[task_id] = device_uuid
        try:
            return await self.relay.request(
                device_uuid, method, resource, data, wait=wait, task_id=task_id
            )
        finally:
            self._refresh_ids.pop(task_id, None)

    async def _refresh_properties(
        self, device_uuid: str, wait: float = PROPERTIES_TIMEOUT, *, quiet: bool = False
    ) -> bool:
        """Ask a gateway for its properties (cached when the answer arrives); True if it
        answered at all. ``quiet``: a silence is the caller's to report."""
        task_id = str(uuidlib.uuid4())
        self._refresh_ids[task_id] = device_uuid
        try:
            await self.relay.request(
                device_uuid, "get", "/system/properties", wait=wait, task_id=task_id
            )
            return True
        except EdgefleetError as exc:
            if not quiet:
                log.info("properties of %s not refreshed: %s", device_uuid, exc.message)
            return False
        finally:
            self._refresh_ids.pop(task_id, None)
