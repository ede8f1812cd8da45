"""What comes back from gateways, recorded against their executions.

Responses, result events, ``1`` statuses and properties are queued by the MQTT router and
written in batches, in arrival order, by one task (``run``). Every instance receives every
message; the first to lock an execution records it, the others find it finished. What the
database refuses (a NUL in a failure reason on PostgreSQL) is set aside alone, the rest of
its batch recorded (services/batches.py).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Histogram

from edgefleet.clock import Clock
from edgefleet.db.engine import Database
from edgefleet.db.repos.tasks import HistoryRow, TaskRepo
from edgefleet.db.tables import Task
from edgefleet.domain.tasks import (
    Completion,
    Outcome,
    TaskKind,
    TaskState,
    event_outcome,
    event_progress,
    response_outcome,
)
from edgefleet.protocol.messages import EventMessage, ResponseMessage
from edgefleet.services.batches import BatchWriter
from edgefleet.services.engine.attempts import Change, finish_attempt
from edgefleet.services.engine.observers import Observers

RESULT_BATCH = Histogram(
    "edgefleet_task_result_batch_seconds",
    "Time to record one batch of task results",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MAX_BATCH = 5000


@dataclass
class Item:
    kind: str  # response | event | online | properties
    device: str
    at: datetime
    message: ResponseMessage | EventMessage | None = None
    properties: dict[str, Any] | None = None


class ResultRecorder:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        observers: Observers,
        *,
        wake_dispatch: Callable[[], None],
        delay: float = 0.05,
    ) -> None:
        self.db = db
        self.clock = clock
        self.observers = observers
        self.delay = delay
        self._wake_dispatch = wake_dispatch
        self._items: list[Item] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._batches = BatchWriter(db, "task-results")

    def queue(self, item: Item) -> None:
        self._items.append(item)
        self._idle.clear()
        self._wake.set()

    async def drained(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        """Record queued results in batches until cancelled. An outage is waited out with
        the batch in hand; an item the database refuses (a gateway's text it cannot store)
        is set aside and the rest of its batch recorded."""
        if self._items:  # queued before a start or a restart
            self._wake.set()
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay)
            self._wake.clear()
            items, self._items = self._items[:MAX_BATCH], self._items[MAX_BATCH:]
            await self._batches.write(items, self._record_batch, _describe)
            if self._items:
                self._wake.set()
            else:
                self._idle.set()

    async def _record_batch(self, items: Sequence[Item]) -> None:
        with RESULT_BATCH.time():
            await self._record(items)

    async def _record(self, items: Sequence[Item]) -> None:
        message_ids = [
            i.message.task_id
            for i in items
            if i.kind == "response" and isinstance(i.message, ResponseMessage)
        ]
        devices = [i.device for i in items if i.kind != "response"]
        history: list[HistoryRow] = []
        relays: set[int] = set()
        async with self.db.session() as s:
            repo = TaskRepo(s)
            await repo.begin_write()
            found = await repo.running_by_message(message_ids)
            waiting = await repo.running_on(devices)
            s.expunge_all()  # changed below, written in bulk: not by the unit of work
            by_message = {e.message_id: Change(e, t) for e, t in found}
            by_device: dict[str, list[Change]] = defaultdict(list)
            seen: dict[int, Change] = {c.row.id: c for c in by_message.values()}
            for e, t in waiting:
                c = seen.setdefault(e.id, Change(e, t))
                by_device[e.device_uuid].append(c)
            for item in items:
                if item.kind == "response":
                    assert isinstance(item.message, ResponseMessage)
                    got = by_message.get(item.message.task_id)
                    if got is None or got.row.device_uuid != item.device:
                        continue
                    if got.row.state != TaskState.RUNNING.value:
                        continue
                    _on_response(got, item, history)
                    if got.row.state == TaskState.RUNNING.value:  # acknowledged, awaits more
                        by_device[item.device].append(got)
                else:
                    for c in by_device.get(item.device, []):
                        if c.row.state != TaskState.RUNNING.value:
                            continue
                        if c.row.acked_at is not None:
                            _on_sign(c, item, history)
                        elif item.kind == "online":
                            _on_reconnect(c, item, history)
            woke = any(c.row.state == TaskState.PENDING.value for c in seen.values())
            changes = [{"id": c.row.id, **c.values} for c in seen.values() if c.values]
            for c in seen.values():
                if c.task.kind == TaskKind.RELAY.value and c.row.state not in (
                    TaskState.RUNNING.value,
                    TaskState.PENDING.value,
                ):
                    relays.add(c.task.id)
            await repo.save(changes)
            await repo.add_history(history)
            await repo.finish_relays(sorted(relays), self.clock())
        self.observers.announce(history)
        if woke:
            self._wake_dispatch()


def _on_response(c: Change, item: Item, history: list[HistoryRow]) -> None:
    assert isinstance(item.message, ResponseMessage)
    m = item.message
    body = m.model_dump(mode="json")
    now = item.at
    if c.row.sent_at is None:  # answered before the dispatcher marked it sent
        c.set(sent_at=now)
    if not response_outcome(m.code):
        finish_attempt(c, Outcome(False, f"gateway answered {m.code}", m.code, body), now, history)
    elif c.task.completion == Completion.RESPONSE.value:
        finish_attempt(c, Outcome(True, f"gateway answered {m.code}", m.code, body), now, history)
    else:
        wait = c.task.completion_seconds
        c.set(
            acked_at=now,
            due_at=now + timedelta(seconds=wait),
            code=m.code,
            result=body,
            detail=f"accepted: waiting for the gateway to {_awaits(c.task)}",
            updated_at=now,
        )
        history.append(HistoryRow(c.row.id, now, TaskState.RUNNING.value, "accepted", m.code))


def _awaits(task: Task) -> str:
    if task.completion == Completion.FIRMWARE.value:
        return "report its upgrade"
    return "come back online"


def _on_reconnect(c: Change, item: Item, history: list[HistoryRow]) -> None:
    """A gateway that (re)connected after its request went out may never have got it
    (gateways keep no session): send it again, same ``task_id``, so it runs at most once."""
    row = c.row
    if row.sent_at is None or row.sent_at >= item.at:
        return
    c.set(
        state=TaskState.PENDING.value,
        attempts=row.attempts - 1,
        due_at=item.at,
        sent_at=None,
        updated_at=item.at,
    )
    history.append(
        HistoryRow(row.id, item.at, TaskState.PENDING.value, "gateway reconnected: resend")
    )


def _on_sign(c: Change, item: Item, history: list[HistoryRow]) -> None:
    """A later sign of the gateway: an event, its return online, its properties."""
    row, task = c.row, c.task
    assert row.acked_at is not None
    if item.at < row.acked_at:
        return
    if item.kind == "event":
        assert isinstance(item.message, EventMessage)
        m = item.message
        if m.resource.split("?", 1)[0] != task.payload.get("resource"):
            return
        progress = event_progress(m.data)
        if progress is not None:
            c.set(progress=progress, updated_at=item.at)
            return
        outcome = event_outcome(m.code, m.data)
        if outcome is not None and task.completion == Completion.FIRMWARE.value:
            finish_attempt(c, outcome, item.at, history)
    elif item.kind == "online" and task.completion == Completion.REBOOT.value:
        finish_attempt(c, Outcome(True, "back online"), item.at, history)
    elif item.kind == "properties" and task.completion == Completion.FIRMWARE.value:
        expected = expected_version(task)
        got = (item.properties or {}).get("softwareVersion")
        if expected and got == expected:
            finish_attempt(c, Outcome(True, f"back online with {got}"), item.at, history)


def _describe(item: Item) -> str:
    if isinstance(item.message, ResponseMessage):
        return f"response {item.message.task_id} of {item.device}"
    if isinstance(item.message, EventMessage):
        return f"event {item.message.resource} of {item.device}"
    return f"{item.kind} of {item.device}"


def expected_version(task: Task) -> str | None:
    """The version a firmware task installs, when it says (``data.version`` or the
    catalogue's, copied into ``meta.version``)."""
    data = task.payload.get("data")
    if isinstance(data, dict) and isinstance(data.get("version"), str):
        return str(data["version"])
    v = (task.meta or {}).get("version")
    return str(v) if isinstance(v, str) else None
