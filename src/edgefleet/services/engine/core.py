"""The task engine: dispatches executions to gateways; what comes back is recorded by
``results.py`` and the round of housekeeping is ``housekeeping.py``.

Every server instance runs one. Instances share nothing but the database: each tick, or at
once when woken, the engine does its housekeeping (at most once a tick), then *claims* due
executions whose gateway is online (row locks, ``SKIP LOCKED``), publishes their requests
and marks them sent. A claim that never got its request out (the instance died) is claimed
again after ``lease`` seconds with the same ``message_id``, which the gateway de-duplicates:
an attempt runs at most once.

Its MQTT side is two callables (``send`` and ``cancel``: publish one request) and the
router's calls into ``response``/``event``/``online``/``properties``, so the engine runs
and is tested without a broker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from prometheus_client import Counter

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.tasks import Claimed, HistoryRow, TaskRepo
from edgefleet.db.tables import Task
from edgefleet.domain.tasks import TaskState, Window
from edgefleet.errors import EdgefleetError, StorageError
from edgefleet.protocol.messages import EventMessage, ResponseMessage
from edgefleet.services.engine.attempts import new_message_id
from edgefleet.services.engine.housekeeping import Housekeeping
from edgefleet.services.engine.observers import Observers
from edgefleet.services.engine.results import Item, ResultRecorder

log = logging.getLogger(__name__)

DISPATCHED = Counter("edgefleet_task_dispatched_total", "Requests sent for task executions")


class Send(Protocol):
    """Publishes one request (``node``: the broker node the gateway is on, if known)."""

    def __call__(
        self,
        device_uuid: str,
        method: str,
        resource: str,
        data: Any,
        task_id: str,
        /,
        node: str | None = None,
    ) -> Awaitable[None]: ...


Resolve = Callable[[Task], Awaitable[Any]]
"""The ``data`` to send for a task at dispatch time (fresh download URLs)."""

CANCEL_RESOURCE = "/system/tasks/{}"


class TaskEngine:
    def __init__(
        self,
        db: Database,
        send: Send,
        *,
        cancel: Send | None = None,
        resolve: Resolve | None = None,
        clock: Clock = utcnow,
        tick: float = 1.0,
        batch: int = 1000,
        lease: float = 30.0,
        result_delay: float = 0.05,
        instance: str = "",
        history_observers: Sequence[Callable[[Sequence[HistoryRow]], None]] = (),
        task_observers: Sequence[Callable[[Task], None]] = (),
    ) -> None:
        """``history_observers`` are told every committed batch of execution state changes,
        ``task_observers`` every committed change of a task's own state."""
        self.db = db
        self._send = send
        self._cancel = cancel or send
        self._resolve = resolve
        self.clock = clock
        self.tick = tick
        self.batch = batch
        self.lease = lease
        self.result_delay = result_delay
        self.instance = instance or f"{socket.gethostname()}-{uuidlib.uuid4().hex[:6]}"
        self._wake = asyncio.Event()
        self.dispatched = 0
        self._housekept = float("-inf")
        self._recovered = False
        self.observers = Observers()
        self.observers.history.extend(history_observers)
        self.observers.tasks.extend(task_observers)
        self.results = ResultRecorder(
            db, clock, self.observers, wake_dispatch=self._wake.set, delay=result_delay
        )
        self.housekeeping = Housekeeping(
            db, self.observers, abort=self.abort, wake_dispatch=self._wake.set, batch=batch
        )

    @property
    def history_observers(self) -> list[Callable[[Sequence[HistoryRow]], None]]:
        """Told every committed batch of execution state changes (the event service)."""
        return self.observers.history

    @property
    def task_observers(self) -> list[Callable[[Task], None]]:
        """Told every committed change of a task's own state."""
        return self.observers.tasks

    def task_changed(self, task: Task) -> None:
        """A task's own state changed (created, paused, resumed, rerun: the task service)."""
        self.observers.announce((), [task])

    # --- inbound (called by the MQTT router) ------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def response(self, device_uuid: str, message: ResponseMessage) -> None:
        self.results.queue(Item("response", device_uuid, self.clock(), message=message))

    def event(self, device_uuid: str, message: EventMessage) -> None:
        self.results.queue(Item("event", device_uuid, self.clock(), message=message))

    def online(self, device_uuid: str) -> None:
        self.results.queue(Item("online", device_uuid, self.clock()))
        # the presence writer stores the status within its batch delay: dispatch after it
        asyncio.get_running_loop().call_later(0.2, self._wake.set)

    def properties(self, device_uuid: str, properties: dict[str, Any]) -> None:
        self.results.queue(Item("properties", device_uuid, self.clock(), properties=properties))

    async def drained(self) -> None:
        """Every queued result recorded."""
        await self.results.drained()

    async def run_results(self) -> None:
        """Record what comes back until cancelled (a worker of its own: ``results.py``)."""
        await self.results.run()

    # --- loops ------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start: requests sent but not answered may have been answered while no instance
        listened (this one was down, or the broker restarted). They are sent again with the
        same ``task_id``; a gateway that ran one answers from its cache instead of running it
        again, and one that never got it runs it now."""
        async with self.db.session() as s:
            n = await TaskRepo(s).resend_unanswered(self.clock())
        if n:
            log.info("task engine: %d unanswered requests will be sent again", n)

    async def run(self) -> None:
        """Dispatch until cancelled (``run_results`` records what comes back: both are
        started by the server's supervisor). A failed step is the supervisor's to report
        and restart; a database outage only skips a tick."""
        if not self._recovered:
            try:
                await self.recover()
                self._recovered = True
            except StorageError as exc:
                log.warning("task engine: not recovered: %s", exc.message)
        while True:
            try:
                busy = await self.step()
            except StorageError as exc:
                log.warning("task engine: %s", exc.message)
                busy = False
            if busy:
                continue  # more is due right now
            try:
                await asyncio.wait_for(self._wake.wait(), self.tick)
            except TimeoutError:
                pass
            self._wake.clear()

    async def step(self) -> bool:
        """Housekeeping (at most once a tick) and dispatch; True when a full batch was
        claimed. Wake-ups (a gateway said ``1``, a task was created) only dispatch, so a
        reconnect storm costs one claim query per wake-up, not a round of housekeeping."""
        now = self.clock()
        loop = asyncio.get_running_loop()
        if loop.time() - self._housekept >= self.tick:
            self._housekept = loop.time()
            await self.housekeeping.round(now)
        return await self._dispatch(now)

    # --- control (called by the task service) -----------------------------------------------

    async def abort(self, task_id: int, detail: str, *, revoke: bool = False) -> Task | None:
        """Stop a task: what has not started is revoked; with ``revoke`` what is in flight
        too, and its gateways are told to cancel."""
        now = self.clock()
        cancels: list[tuple[str, str]] = []
        async with self.db.session() as s:
            repo = TaskRepo(s)
            await repo.begin_write()
            task = await repo.lock(task_id)
            if task is None:
                return None
            pending = await repo.revoke_pending(task_id, now, detail)
            history = [HistoryRow(i, now, TaskState.REVOKED.value, detail) for i in pending]
            if revoke:
                for i, device, sent in await repo.revoke_running(task_id, now, detail):
                    history.append(HistoryRow(i, now, TaskState.REVOKED.value, detail))
                    if sent is not None:
                        cancels.append((device, sent))
            await repo.add_history(history)
            changed = task.state in (TaskState.PENDING, TaskState.RUNNING, TaskState.PAUSED)
            if changed:
                task.state = (TaskState.REVOKED if revoke else TaskState.ABORTED).value
                task.revoked = task.revoked or revoke
                task.detail = detail[:500]
                task.finished_at = now
                task.updated_at = now
        log.info("task %s: %s", task.uuid, detail)
        self.observers.announce(history, [task] if changed else [])
        if cancels:
            await asyncio.gather(
                *(self._send_cancel(device, message_id) for device, message_id in cancels)
            )
        return task

    async def _send_cancel(self, device: str, message_id: str) -> None:
        try:
            await self._cancel(
                device, "delete", CANCEL_RESOURCE.format(message_id), None, new_message_id()
            )
        except EdgefleetError as exc:
            log.info("cancel of %s not sent to %s: %s", message_id, device, exc.message)

    # --- dispatch ---------------------------------------------------------------------------

    async def _dispatch(self, now: datetime) -> bool:
        async with self.db.session() as s:
            tasks = {t.id: t for t in await TaskRepo(s).open_tasks()}
        limited = [t for t in tasks.values() if t.max_per_minute or t.window]
        for task in limited:
            if task.state != TaskState.RUNNING.value:
                continue
            if task.window and not Window.parse(task.window).is_open(now):
                continue
            budget = self.batch
            if task.max_per_minute:
                async with self.db.session() as s:
                    started = await TaskRepo(s).started_since(task.id, now - timedelta(minutes=1))
                budget = min(budget, task.max_per_minute - started)
            if budget > 0:
                await self._claim_and_send(now, budget, task_id=task.id)
        claimed = await self._claim_and_send(now, self.batch)
        return claimed >= self.batch

    async def _claim_and_send(
        self,
        now: datetime,
        limit: int,
        *,
        task_id: int | None = None,
    ) -> int:
        async with self.db.session() as s:
            repo = TaskRepo(s)
            claimed = await repo.claim(now, limit, self.lease, task_id=task_id)
            if not claimed:
                return 0
            task_ids = sorted({c.task_id for c in claimed})
            tasks = {t: await repo.get(id=t) for t in task_ids}
            await repo.add_history(
                [
                    HistoryRow(c.id, now, TaskState.RUNNING.value, f"attempt {c.attempts} sent")
                    for c in claimed
                ]
            )
        data: dict[int, Any] = {}
        broken: dict[int, str] = {}
        for t_id, task in tasks.items():
            assert task is not None
            try:
                data[t_id] = await self._data(task)
            except EdgefleetError as exc:  # e.g. its firmware left the catalogue
                broken[t_id] = exc.message
        if broken:
            await self._fail_tasks(broken, [c for c in claimed if c.task_id in broken])
            claimed = [c for c in claimed if c.task_id not in broken]
        sent = await asyncio.gather(*(self._publish(c, tasks[c.task_id], data) for c in claimed))
        ok = [c for c, good in zip(claimed, sent, strict=True) if good]
        async with self.db.session() as s:
            timeouts = {c.id: self._timeout(tasks[c.task_id]) for c in ok}
            await TaskRepo(s).mark_sent([c.id for c in ok], self.clock(), timeouts)
        self.dispatched += len(ok)
        DISPATCHED.inc(len(ok))
        return len(claimed)

    async def _fail_tasks(self, reasons: dict[int, str], claimed: list[Claimed]) -> None:
        """Tasks whose request cannot be made any more: the claimed executions fail, the
        task is aborted (what has not started is revoked)."""
        now = self.clock()
        async with self.db.session() as s:
            repo = TaskRepo(s)
            failed = TaskState.FAILURE.value
            await repo.save(
                [
                    {
                        "id": c.id,
                        "state": failed,
                        "due_at": None,
                        "detail": reasons[c.task_id][:500],
                        "finished_at": now,
                        "updated_at": now,
                    }
                    for c in claimed
                ]
            )
            history = [HistoryRow(c.id, now, failed, reasons[c.task_id]) for c in claimed]
            await repo.add_history(history)
        self.observers.announce(history)
        for task_id, reason in reasons.items():
            log.warning("task %d cannot be sent: %s", task_id, reason)
            await self.abort(task_id, f"aborted: {reason}")

    @staticmethod
    def _timeout(task: Task | None) -> float:
        assert task is not None
        return task.timeout_seconds

    async def _data(self, task: Task) -> Any:
        if self._resolve is not None and task.firmware_id is not None:
            return await self._resolve(task)
        return task.payload.get("data")

    async def _publish(self, c: Claimed, task: Task | None, data: dict[int, Any]) -> bool:
        assert task is not None
        p = task.payload
        try:
            await self._send(
                c.device_uuid,
                p["method"],
                p["resource"],
                data[task.id],
                c.message_id,
                node=c.broker_node,
            )
            return True
        except EdgefleetError as exc:
            log.info("execution %s not sent to %s: %s", c.uuid, c.device_uuid, exc.message)
            return False
