"""The event service's write path: events in, batches out, nothing acknowledged unstored.

Gateway events (and status changes) come from the MQTT consumer with a *receipt*: the
broker's delivery, acknowledged (PUBACK) only once the event is committed. They wait in a
bounded queue; when it is full the consumer waits too, stops reading, and the broker keeps
the rest (backpressure instead of loss). Events the server makes itself (registrations, task
changes) never wait: they go to an unbounded side list, as they are bounded by what the
server does.

One writer task takes batches (up to ``batch_size``, gathered for ``batch_delay``), stores
them in one transaction with the *hooks* (webhook deliveries are queued there, offline
alarms cleared), then settles the receipts and tells the *listeners* (live stream, webhook
dispatcher) what was stored. A database outage is waited out with the batch in hand; a
batch the database refuses for its content is split until the refused events stand alone,
and those are logged and dropped (services/batches.py), so one bad event cannot stop the
stream.

De-duplication: every event has a ``key`` under a unique index. Gateways that send an
``event_id`` (edgefleet's agent and simulator) are de-duplicated exactly; id-less events of
ThingsPro gateways get a server-made key (a batch written twice is stored once) and, when
the broker redelivers one (``dup``), the recent id-less events of the same gateway are
remembered in memory to recognise it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter as Tally
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.events import EventRepo
from edgefleet.db.repos.tasks import HistoryRow, TaskRepo
from edgefleet.db.tables import Task
from edgefleet.domain.events import (
    AUTO_CLEARED_BY,
    SYSTEM_ACTOR,
    EventType,
    NewEvent,
    Severity,
    StoredEvent,
    classify_gateway_event,
    gateway_key,
    new_key,
    status_event,
)
from edgefleet.domain.tasks import TaskState
from edgefleet.errors import StorageError
from edgefleet.services.batches import BatchWriter
from edgefleet.services.retention import delete_in_batches, every
from edgefleet.settings import EventSettings

if TYPE_CHECKING:
    from edgefleet.services.fleet import CredentialChange

log = logging.getLogger(__name__)

STORED = Counter("edgefleet_events_stored_total", "Events stored", ["type"])
DUPLICATES = Counter("edgefleet_events_duplicates_total", "Events recognised as stored before")
DROPPED = Counter("edgefleet_events_dropped_total", "Events the database refused (logged)")
QUEUED = Gauge("edgefleet_events_queued", "Events waiting to be written")
BATCH_SECONDS = Histogram(
    "edgefleet_events_batch_seconds",
    "Time to store one batch of events",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LAG_SECONDS = Histogram(
    "edgefleet_events_lag_seconds",
    "From the arrival of each batch's oldest event to the batch's commit",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)

Hook = Callable[[AsyncSession, list[StoredEvent]], Awaitable[None]]
"""Runs inside the transaction that stores a batch (with the events actually stored)."""
Listener = Callable[[list[StoredEvent]], None]
"""Told, after the commit, what a batch stored; must not block."""

RECENT_IDLESS = 50_000
"""Id-less gateway events remembered to recognise a redelivery."""


class Receipt(Protocol):
    """A broker delivery of one inbound message (see mqtt/client.py)."""

    @property
    def dup(self) -> bool:
        """The broker says it may have delivered this message before."""
        ...

    def defer(self) -> None:
        """Taken: it is settled later, not when the MQTT handler returns."""
        ...

    def settle(self) -> None:
        """The message is handled: the broker may forget it."""
        ...


@dataclass
class _Item:
    event: NewEvent
    receipt: Receipt | None
    arrived: float


class EventService:
    def __init__(
        self,
        db: Database,
        settings: EventSettings,
        clock: Clock = utcnow,
        *,
        hooks: Sequence[Hook] = (),
        listeners: Sequence[Listener] = (),
    ) -> None:
        """``hooks`` run in each batch's transaction, after the service's own (an alarm's
        clearing); ``listeners`` are told each committed batch (the live event feed adds
        itself with ``add_listener``)."""
        self.db = db
        self.settings = settings
        self.clock = clock
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(settings.queue_size)
        self._side: deque[_Item] = deque()
        self._side_ready = asyncio.Event()
        self._hooks: list[Hook] = [self._clear_alarms, *hooks]
        self._listeners: list[Listener] = list(listeners)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._in_hand = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stored = 0
        self.duplicates = 0
        self._batches = BatchWriter(db, "event-writer", first_delay=0.25, max_delay=5.0)

    # --- wiring -----------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- in ---------------------------------------------------------------------------------

    async def submit(self, event: NewEvent, receipt: Receipt | None = None) -> None:
        """Queue an event from the broker; waits while the queue is full (backpressure). Its
        receipt is settled once the event is stored."""
        if receipt is not None:
            receipt.defer()
        self._idle.clear()
        await self._queue.put(_Item(event, receipt, asyncio.get_running_loop().time()))

    def emit(self, event: NewEvent) -> None:
        """Queue an event the server made; never waits."""
        self._idle.clear()
        self._side.append(_Item(event, None, asyncio.get_running_loop().time()))
        self._side_ready.set()

    async def gateway_event(
        self,
        device_uuid: str,
        method: str,
        resource: str,
        code: int | None,
        data: object,
        *,
        event_id: str | None,
        payload: bytes,
        receipt: Receipt | None = None,
    ) -> None:
        """A message a gateway sent on its ``client`` topic without a ``task_id``."""
        if event_id:
            key = gateway_key(device_uuid, event_id)
        else:
            digest = hashlib.blake2b(payload, digest_size=16, person=b"edgefleet-event")
            digest.update(device_uuid.encode())
            fingerprint = digest.hexdigest()
            if receipt is not None and receipt.dup and fingerprint in self._recent:
                self.duplicates += 1
                DUPLICATES.inc()
                return
            self._remember(fingerprint)
            key = new_key()
        kind, severity, summary = classify_gateway_event(method, resource, code, data)
        event = NewEvent(
            kind,
            self.clock(),
            device_uuid,
            resource,
            summary,
            {"method": method, "code": code, "data": data},
            severity,
            key,
        )
        await self.submit(event, receipt)

    async def status(self, device_uuid: str, online: bool, receipt: Receipt | None = None) -> None:
        """A gateway said ``1`` or its will said ``0``."""
        await self.submit(status_event(device_uuid, online, self.clock()), receipt)

    def _remember(self, fingerprint: str) -> None:
        recent = self._recent
        recent[fingerprint] = None
        recent.move_to_end(fingerprint)
        while len(recent) > RECENT_IDLESS:
            recent.popitem(last=False)

    # --- out --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            items = await self._next_batch()
            self._in_hand = len(items)
            try:
                stored = await self._store([i.event for i in items])
            finally:
                self._in_hand = 0
            if items:
                oldest = min(i.arrived for i in items)
                LAG_SECONDS.observe(asyncio.get_running_loop().time() - oldest)
            for item in items:
                if item.receipt is not None:
                    item.receipt.settle()
            self.stored += len(stored)
            self.duplicates += len(items) - len(stored)
            if len(items) > len(stored):
                DUPLICATES.inc(len(items) - len(stored))
            for kind, n in Tally(e.type for e in stored).items():
                STORED.labels(kind).inc(n)
            for listener in self._listeners:
                try:
                    listener(stored)
                except Exception:  # a listener's bug must not stop the writer
                    log.exception("event listener failed")
            QUEUED.set(self._queue.qsize() + len(self._side))
            if self._queue.empty() and not self._side:
                self._idle.set()

    async def _next_batch(self) -> list[_Item]:
        if self._queue.empty() and not self._side:
            getter = asyncio.ensure_future(self._queue.get())
            side = asyncio.ensure_future(self._side_ready.wait())
            try:
                await asyncio.wait({getter, side}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                side.cancel()
                if not getter.done():
                    getter.cancel()
            first = [getter.result()] if getter.done() and not getter.cancelled() else []
        else:
            first = []
        if self.settings.batch_delay:
            await asyncio.sleep(self.settings.batch_delay)
        items = first
        limit = self.settings.batch_size
        while self._side and len(items) < limit:
            items.append(self._side.popleft())
        if not self._side:
            self._side_ready.clear()
        while len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return items

    async def _store(self, events: list[NewEvent]) -> list[StoredEvent]:
        """Store one batch: waits out an outage; sets aside (and logs) what the database
        refuses, splitting the batch to find it."""
        parts = await self._batches.write(events, self._write_timed, _describe, on_reject=_dropped)
        return [e for part in parts for e in part]

    async def _write_timed(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        with BATCH_SECONDS.time():
            return await self._write(events)

    async def _write(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        async with self.db.session() as s:
            stored = await EventRepo(s).insert(events)
            for hook in self._hooks:
                await hook(s, stored)
        return stored

    async def _clear_alarms(self, s: AsyncSession, stored: list[StoredEvent]) -> None:
        """A gateway that came back clears its open ``device_offline`` alarms, unless it went
        offline again later in the same batch (then only the alarms before its return)."""
        for clearing, cleared in AUTO_CLEARED_BY.items():
            last: dict[str, tuple[str, int]] = {}
            for e in stored:
                if e.device_uuid and e.type in (clearing.value, cleared.value):
                    last[e.device_uuid] = (e.type, e.id)
            if not last:
                continue
            back = sorted(u for u, (t, _) in last.items() if t == clearing.value)
            repo = EventRepo(s)
            now = self.clock()
            if back:
                await repo.clear_alarms(back, cleared.value, by=SYSTEM_ACTOR, at=now)
            for e in stored:  # returned, then left again within this batch: rare
                if (
                    e.type == clearing.value
                    and e.device_uuid
                    and last[e.device_uuid][0] == cleared.value
                ):
                    await repo.clear_alarms(
                        [e.device_uuid], cleared.value, by=SYSTEM_ACTOR, at=now, before_id=e.id
                    )

    async def flush(self) -> None:
        """Store what is queued now, without a running writer (a CLI command's events)."""
        while not (self._queue.empty() and not self._side):
            items = list(self._side)
            self._side.clear()
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            stored = await self._store([i.event for i in items])
            for item in items:
                if item.receipt is not None:
                    item.receipt.settle()
            self.stored += len(stored)

    async def drained(self) -> None:
        """Wait until everything queued so far is stored (tests, shutdown)."""
        while not (self._queue.empty() and not self._side and self._in_hand == 0):
            self._idle.clear()
            await self._idle.wait()

    # --- retention --------------------------------------------------------------------------

    async def purge(self, batch: int = 5000) -> int:
        """Delete events past the retention age, ``batch`` at a time (short transactions);
        open alarms stay. Returns how many were deleted."""
        days = self.settings.retention_days
        if not days:
            return 0
        cutoff = self.clock() - timedelta(days=days)

        async def delete(s: AsyncSession, limit: int) -> int:
            return await EventRepo(s).delete_older_than(cutoff, limit)

        total = await delete_in_batches(self.db, delete, batch)
        if total:
            log.info("events: %d older than %s days deleted", total, days)
        return total

    async def run_retention(self) -> None:
        """Purge now and every ``retention_interval_seconds`` until cancelled."""
        await every(self.settings.retention_interval_seconds, self.purge, "events")


def _describe(event: NewEvent) -> str:
    return f"event {event.type.value} {event.resource} of {event.device_uuid or 'the server'}"


def _dropped(_event: NewEvent) -> None:
    DROPPED.inc()


class TaskEvents:
    """Turns the task engine's committed changes into events: ``job_update`` when a
    gateway's execution ends (SUCCESS, FAILURE, REVOKED), ``task_update`` when a task's own
    state changes (a FAILURE or ABORTED task is a ``major`` alarm).

    Told after the engine's commit; the executions' gateways and tasks are looked up in one
    query per batch, off the engine's path. A crash between the two loses those events
    (the executions keep their own history)."""

    def __init__(self, db: Database, events: EventService) -> None:
        self.db = db
        self.events = events
        self._pending: set[asyncio.Task[None]] = set()

    def history(self, rows: Sequence[HistoryRow]) -> None:
        ended = [r for r in rows if r.state in _ENDED]
        if ended:
            # one query for one batch, not a loop: no worker
            task = asyncio.create_task(self._executions(ended), name="job-events")  # noqa: TID251
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _executions(self, rows: list[HistoryRow]) -> None:
        try:
            async with self.db.session() as s:
                found = await TaskRepo(s).execution_subjects([r.execution_id for r in rows])
        except StorageError as exc:
            log.warning("%d job events lost: %s", len(rows), exc.message)
            return
        for r in rows:
            subject = found.get(r.execution_id)
            if subject is None:
                continue  # its device (and so the execution) was deleted meanwhile
            execution_uuid, device_uuid, task = subject
            self.events.emit(
                NewEvent(
                    type=EventType.JOB_UPDATE,
                    at=r.at,
                    device_uuid=device_uuid,
                    resource=f"/tasks/{task.uuid}",
                    text=f"{task.kind} task {task.name or task.uuid}: {r.state}"
                    + (f" ({r.detail})" if r.detail else ""),
                    data={
                        "taskUUID": task.uuid,
                        "taskId": task.id,
                        "kind": task.kind,
                        "executionUUID": execution_uuid,
                        "state": r.state,
                        "code": r.code,
                        "detail": r.detail,
                    },
                )
            )

    def task(self, task: Task) -> None:
        state = task.state
        self.events.emit(
            NewEvent(
                type=EventType.TASK_UPDATE,
                at=self.events.clock(),
                resource=f"/tasks/{task.uuid}",
                text=f"{task.kind} task {task.name or task.uuid}: {state}"
                + (f" ({task.detail})" if task.detail else ""),
                data={
                    "taskUUID": task.uuid,
                    "taskId": task.id,
                    "kind": task.kind,
                    "state": state,
                    "groupId": task.group_id,
                    "detail": task.detail,
                },
                severity=Severity.MAJOR if state in _ALARMING else None,
            )
        )

    def devices(self, change: CredentialChange) -> None:
        """Registered and deleted gateways (the fleet service's credential listener)."""
        now = self.events.clock()
        deleted = change.deleted
        for uuid in change.registered:
            self.events.emit(
                NewEvent(EventType.DEVICE_REGISTERED, now, uuid, "/devices", "registered")
            )
        for uuid in deleted:
            self.events.emit(NewEvent(EventType.DEVICE_DELETED, now, uuid, "/devices", "deleted"))

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)


_ENDED = frozenset({TaskState.SUCCESS.value, TaskState.FAILURE.value, TaskState.REVOKED.value})
_ALARMING = frozenset({TaskState.FAILURE.value, TaskState.ABORTED.value})
