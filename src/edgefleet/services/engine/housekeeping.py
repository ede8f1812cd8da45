"""The engine's round of housekeeping (at most once a tick): start tasks that are due, expire
what waited too long, time out attempts, move rollouts from wave to wave, finish tasks with
nothing left to do."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime

from edgefleet.db.engine import Database
from edgefleet.db.repos.tasks import HistoryRow, TaskRepo
from edgefleet.db.tables import Task
from edgefleet.domain.tasks import (
    ACTIVE,
    Outcome,
    TaskKind,
    TaskState,
    WaveCounts,
    wave_verdict,
)
from edgefleet.services.engine.attempts import Change, finish_attempt
from edgefleet.services.engine.observers import Observers

log = logging.getLogger(__name__)

Abort = Callable[[int, str], Awaitable[object]]
"""``abort(task_id, detail)``: stop a task (the engine's control)."""


class Housekeeping:
    def __init__(
        self,
        db: Database,
        observers: Observers,
        *,
        abort: Abort,
        wake_dispatch: Callable[[], None],
        batch: int,
    ) -> None:
        self.db = db
        self.observers = observers
        self.batch = batch
        self._abort = abort
        self._wake_dispatch = wake_dispatch

    async def round(self, now: datetime) -> None:
        async with self.db.session() as s:
            repo = TaskRepo(s)
            await repo.start_due_tasks(now)
            expired = await repo.expire(now)
            history = [HistoryRow(i, now, TaskState.FAILURE.value, "expired") for i, _ in expired]
            await repo.add_history(history)
            await repo.finish_relays(sorted({t for _, t in expired}), now)
        self.observers.announce(history)
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
                c = Change(row, task)
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
        self.observers.announce(history)
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
                await self._abort(
                    task.id,
                    f"aborted: {failed} of {waves[current]} failed in wave {current + 1}, past "
                    f"the error threshold of {task.error_threshold} %",
                )
                return
            last = current + 1 >= len(waves)
            if verdict == "stuck" and not last:
                await self._abort(
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
                self._wake_dispatch()
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
            self.observers.announce((), [locked])
