"""The task engine: dispatches executions to gateways and records what comes back.

Every server instance runs one. Instances share nothing but the database:

- **dispatch** (each tick, or at once when woken): start tasks that are due, time out
  attempts, expire what waited too long, move rollouts from wave to wave, then *claim* due
  executions whose gateway is online (row locks, ``SKIP LOCKED``), publish their requests and
  mark them sent. A claim that never got its request out (the instance died) is claimed again
  after ``lease`` seconds with the same ``message_id``, which the gateway de-duplicates: an
  attempt runs at most once.
- **results**: responses, result events, ``1`` statuses and properties of gateways are
  queued and written in batches, in arrival order, by one task. Every instance receives
  every message; the first to lock an execution records it, the others find it finished.
  What the database refuses (a NUL in a failure reason on PostgreSQL) is set aside alone,
  the rest of its batch recorded (services/batches.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid as uuidlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Histogram

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.tasks import Claimed, HistoryRow, TaskRepo
from edgefleet.db.tables import Execution, Task
from edgefleet.domain.tasks import (
    ACTIVE,
    Completion,
    Outcome,
    TaskKind,
    TaskState,
    WaveCounts,
    Window,
    event_outcome,
    event_progress,
    response_outcome,
    wave_verdict,
)
from edgefleet.errors import EdgefleetError, StorageError
from edgefleet.mqtt.messages import EventMessage, ResponseMessage
from edgefleet.services.batches import BatchWriter

log = logging.getLogger(__name__)

DISPATCHED = Counter("edgefleet_task_dispatched_total", "Requests sent for task executions")
FINISHED = Counter("edgefleet_task_executions_finished_total", "Executions finished", ["state"])
RESULT_BATCH = Histogram(
    "edgefleet_task_result_batch_seconds",
    "Time to record one batch of task results",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

Send = Callable[[str, str, str, Any, str], Awaitable[None]]
"""``send(device_uuid, method, resource, data, task_id)``: publish one request."""
Resolve = Callable[[Task], Awaitable[Any]]
"""The ``data`` to send for a task at dispatch time (fresh download URLs)."""

CANCEL_RESOURCE = "/system/tasks/{}"


@dataclass
class _Item:
    kind: str  # response | event | online | properties
    device: str
    at: datetime
    message: ResponseMessage | EventMessage | None = None
    properties: dict[str, Any] | None = None


@dataclass
class _Change:
    """Pending changes to one execution within a result batch."""

    row: Execution
    task: Task
    values: dict[str, Any] = field(default_factory=dict)

    def set(self, **values: Any) -> None:
        for k, v in values.items():
            setattr(self.row, k, v)
        self.values.update(values)


def new_message_id() -> str:
    return str(uuidlib.uuid4())


def retries_allowed(task: Task) -> int:
    """Group tasks retry only under the ``retry`` policy; rollouts and jobs as configured."""
    if task.kind == TaskKind.GROUP.value and task.apply_policy != "retry":
        return 0
    return task.retry_times


def finish_attempt(c: _Change, outcome: Outcome, now: datetime, history: list[HistoryRow]) -> None:
    """Record one attempt's outcome: SUCCESS, another attempt later, or FAILURE."""
    row, task = c.row, c.task
    common: dict[str, Any] = {"updated_at": now, "detail": outcome.detail[:500]}
    if outcome.code is not None:
        common["code"] = outcome.code
    if outcome.data is not None:
        common["result"] = outcome.data
    if outcome.ok:
        c.set(
            state=TaskState.SUCCESS.value,
            success=True,
            due_at=None,
            finished_at=now,
            progress=100 if row.progress is not None else None,
            **common,
        )
    elif row.attempts <= retries_allowed(task):
        c.set(
            state=TaskState.PENDING.value,
            due_at=now + timedelta(seconds=task.retry_interval),
            message_id=new_message_id(),
            sent_at=None,
            acked_at=None,
            **common,
        )
    else:
        c.set(state=TaskState.FAILURE.value, due_at=None, finished_at=now, **common)
    history.append(HistoryRow(row.id, now, row.state, outcome.detail, outcome.code))
    if row.state != TaskState.PENDING.value:
        FINISHED.labels(row.state).inc()


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
    ) -> None:
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
        self._items: list[_Item] = []
        self._results_wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.dispatched = 0
        self._housekept = float("-inf")
        self._recovered = False
        self._batches = BatchWriter(db, "task-results")
        self.history_observers: list[Callable[[Sequence[HistoryRow]], None]] = []
        """Told every committed batch of execution state changes (the event service)."""
        self.task_observers: list[Callable[[Task], None]] = []
        """Told every committed change of a task's own state."""

    def task_changed(self, task: Task) -> None:
        """A task's own state changed (created, paused, resumed, rerun: the task service)."""
        self._announce((), [task])

    def _announce(self, history: Sequence[HistoryRow], tasks: Sequence[Task] = ()) -> None:
        for observe in self.history_observers if history else ():
            try:
                observe(history)
            except Exception:  # an observer's bug must not stop the engine
                log.exception("history observer failed")
        for task in tasks:
            for observe_task in self.task_observers:
                try:
                    observe_task(task)
                except Exception:
                    log.exception("task observer failed")

    # --- inbound (called by the MQTT router) ------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def response(self, device_uuid: str, message: ResponseMessage) -> None:
        self._queue(_Item("response", device_uuid, self.clock(), message=message))

    def event(self, device_uuid: str, message: EventMessage) -> None:
        self._queue(_Item("event", device_uuid, self.clock(), message=message))

    def online(self, device_uuid: str) -> None:
        self._queue(_Item("online", device_uuid, self.clock()))
        # the presence writer stores the status within its batch delay: dispatch after it
        asyncio.get_running_loop().call_later(0.2, self._wake.set)

    def properties(self, device_uuid: str, properties: dict[str, Any]) -> None:
        self._queue(_Item("properties", device_uuid, self.clock(), properties=properties))

    def _queue(self, item: _Item) -> None:
        self._items.append(item)
        self._idle.clear()
        self._results_wake.set()

    async def drained(self) -> None:
        await self._idle.wait()

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
            await self._housekeeping(now)
        return await self._dispatch(now)

    # --- housekeeping -----------------------------------------------------------------------

    async def _housekeeping(self, now: datetime) -> None:
        async with self.db.session() as s:
            repo = TaskRepo(s)
            await repo.start_due_tasks(now)
            expired = await repo.expire(now)
            history = [HistoryRow(i, now, TaskState.FAILURE.value, "expired") for i, _ in expired]
            await repo.add_history(history)
            await repo.finish_relays(sorted({t for _, t in expired}), now)
        self._announce(history)
        while await self._time_out(now):
            pass
        await self._progress_tasks(now)

    async def _time_out(self, now: datetime) -> bool:
        """Requeue claims never sent, fail (or retry) attempts past their time."""
        history: list[HistoryRow] = []
        relays: set[int] = set()
        async with self.db.session() as s:
            repo = TaskRepo(s)
            await repo.begin_write()
            rows = await repo.overdue(now, self.batch)
            s.expunge_all()
            changes = []
            for row, task in rows:
                c = _Change(row, task)
                if row.sent_at is None and row.acked_at is None:
                    # claimed but maybe never published: again, same message_id
                    c.set(
                        state=TaskState.PENDING.value,
                        attempts=row.attempts - 1,
                        due_at=now,
                        updated_at=now,
                    )
                    history.append(
                        HistoryRow(row.id, now, TaskState.PENDING.value, "claim lapsed: resend")
                    )
                else:
                    waited = "completion" if row.acked_at is not None else "answer"
                    finish_attempt(c, Outcome(False, f"timeout: no {waited} in time"), now, history)
                    if task.kind == TaskKind.RELAY.value:
                        relays.add(task.id)
                changes.append({"id": row.id, **c.values})
            await repo.save(changes)
            await repo.add_history(history)
            await repo.finish_relays(sorted(relays), now)
        self._announce(history)
        return len(rows) >= self.batch

    async def _progress_tasks(self, now: datetime) -> None:
        """Open waves, abort past thresholds, finish tasks with nothing left to do."""
        async with self.db.session() as s:
            repo = TaskRepo(s)
            tasks = [t for t in await repo.open_tasks() if t.state != TaskState.PENDING.value]
            if not tasks:
                return
            counts = await repo.counts([t.id for t in tasks])
        for task in tasks:
            await self._progress(task, counts[task.id], now)

    async def _progress(
        self, task: Task, counts: dict[tuple[int, str], int], now: datetime
    ) -> None:
        by_wave: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for (wave, state), n in counts.items():
            by_wave[wave][state] += n
        active = sum(n for (_, st), n in counts.items() if st in {s.value for s in ACTIVE})
        waves = task.waves or [sum(counts.values())]
        current = task.current_wave
        if task.kind == TaskKind.ROLLOUT.value and current < len(waves):
            w = by_wave[current]
            verdict = wave_verdict(
                WaveCounts(
                    size=waves[current],
                    success=w[TaskState.SUCCESS.value],
                    failure=w[TaskState.FAILURE.value],
                    revoked=w[TaskState.REVOKED.value],
                    active=w[TaskState.PENDING.value] + w[TaskState.RUNNING.value],
                ),
                task.success_threshold,
                task.error_threshold,
            )
            if verdict == "abort":
                failed = w[TaskState.FAILURE.value]
                await self.abort(
                    task.id,
                    f"aborted: {failed} of {waves[current]} failed in wave {current + 1}, past "
                    f"the error threshold of {task.error_threshold} %",
                )
                return
            last = current + 1 >= len(waves)
            if verdict == "stuck" and not last:
                await self.abort(
                    task.id,
                    f"aborted: wave {current + 1} finished below its success threshold of "
                    f"{task.success_threshold} %",
                )
                return
            if verdict == "next" and not last:
                async with self.db.session() as s:
                    repo = TaskRepo(s)
                    await repo.begin_write()
                    locked = await repo.lock(task.id)
                    if locked is None or locked.current_wave != current:
                        return  # another instance moved it on
                    locked.current_wave = current + 1
                    locked.updated_at = now
                    await repo.open_wave(task.id, current + 1, now)
                log.info("task %s: wave %d opened", task.uuid, current + 2)
                self._wake.set()
                return
        if active == 0 and (task.kind != TaskKind.ROLLOUT.value or current + 1 >= len(waves)):
            done = not any(n for (_, st), n in counts.items() if st != TaskState.SUCCESS.value)
            async with self.db.session() as s:
                repo = TaskRepo(s)
                await repo.begin_write()
                locked = await repo.lock(task.id)
                if locked is None or locked.state not in (
                    TaskState.RUNNING.value,
                    TaskState.PAUSED.value,
                ):
                    return
                locked.state = (TaskState.SUCCESS if done else TaskState.FAILURE).value
                locked.finished_at = now
                locked.updated_at = now
            log.info("task %s finished: %s", task.uuid, locked.state)
            self._announce((), [locked])

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
        self._announce(history, [task] if changed else [])
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
        self._announce(history)
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
            await self._send(c.device_uuid, p["method"], p["resource"], data[task.id], c.message_id)
            return True
        except EdgefleetError as exc:
            log.info("execution %s not sent to %s: %s", c.uuid, c.device_uuid, exc.message)
            return False

    # --- results ----------------------------------------------------------------------------

    async def run_results(self) -> None:
        """Record queued results in batches until cancelled. An outage is waited out with
        the batch in hand; an item the database refuses (a gateway's text it cannot store)
        is set aside and the rest of its batch recorded."""
        if self._items:  # queued before a start or a restart
            self._results_wake.set()
        while True:
            await self._results_wake.wait()
            await asyncio.sleep(self.result_delay)
            self._results_wake.clear()
            items, self._items = self._items[:5000], self._items[5000:]
            await self._batches.write(items, self._record_batch, _describe_item)
            if self._items:
                self._results_wake.set()
            else:
                self._idle.set()

    async def _record_batch(self, items: Sequence[_Item]) -> None:
        with RESULT_BATCH.time():
            await self._record(items)

    async def _record(self, items: Sequence[_Item]) -> None:
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
            by_message = {e.message_id: _Change(e, t) for e, t in found}
            by_device: dict[str, list[_Change]] = defaultdict(list)
            seen: dict[int, _Change] = {c.row.id: c for c in by_message.values()}
            for e, t in waiting:
                c = seen.setdefault(e.id, _Change(e, t))
                by_device[e.device_uuid].append(c)
            for item in items:
                if item.kind == "response":
                    assert isinstance(item.message, ResponseMessage)
                    got = by_message.get(item.message.task_id)
                    if got is None or got.row.device_uuid != item.device:
                        continue
                    if got.row.state != TaskState.RUNNING.value:
                        continue
                    self._on_response(got, item, history)
                    if got.row.state == TaskState.RUNNING.value:  # acknowledged, awaits more
                        by_device[item.device].append(got)
                else:
                    for c in by_device.get(item.device, []):
                        if c.row.state != TaskState.RUNNING.value:
                            continue
                        if c.row.acked_at is not None:
                            self._on_sign(c, item, history)
                        elif item.kind == "online":
                            self._on_reconnect(c, item, history)
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
        self._announce(history)
        if woke:
            self._wake.set()

    def _on_response(self, c: _Change, item: _Item, history: list[HistoryRow]) -> None:
        assert isinstance(item.message, ResponseMessage)
        m = item.message
        body = m.model_dump(mode="json")
        now = item.at
        if c.row.sent_at is None:  # answered before the dispatcher marked it sent
            c.set(sent_at=now)
        if not response_outcome(m.code):
            finish_attempt(
                c, Outcome(False, f"gateway answered {m.code}", m.code, body), now, history
            )
        elif c.task.completion == Completion.RESPONSE.value:
            finish_attempt(
                c, Outcome(True, f"gateway answered {m.code}", m.code, body), now, history
            )
        else:
            wait = c.task.completion_seconds
            c.set(
                acked_at=now,
                due_at=now + timedelta(seconds=wait),
                code=m.code,
                result=body,
                detail=f"accepted: waiting for the gateway to {self._awaits(c.task)}",
                updated_at=now,
            )
            history.append(HistoryRow(c.row.id, now, TaskState.RUNNING.value, "accepted", m.code))

    @staticmethod
    def _awaits(task: Task) -> str:
        if task.completion == Completion.FIRMWARE.value:
            return "report its upgrade"
        return "come back online"

    @staticmethod
    def _on_reconnect(c: _Change, item: _Item, history: list[HistoryRow]) -> None:
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

    def _on_sign(self, c: _Change, item: _Item, history: list[HistoryRow]) -> None:
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


def _describe_item(item: _Item) -> str:
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
