"""The background work of a gateway's requests, by task_id, cancellable until committed."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

REMEMBERED_JOBS = 1000


class JobState(StrEnum):
    """Where the background jobs of one request (one task_id) are."""

    RUNNING = "running"
    """Still running and may be cancelled."""
    COMMITTED = "committed"
    """Still running, past their point of no return (installing, rebooting): not cancellable."""
    ENDED = "ended"
    """Finished, failed or cancelled."""


class Background:
    """Background jobs a gateway owns: kept referenced, logged on failure, cancelled at exit.

    Jobs spawned for a request are indexed by its ``task_id``, so that they can be cancelled
    (``DELETE /system/tasks/{task_id}``); the task_ids of the newest ``remember`` ended ones are
    kept, to tell a finished task from an unknown one. One per gateway (the simulator has
    thousands): slots, and nothing but empty containers until a job starts.
    """

    __slots__ = (
        "_by_task_id",
        "_committed",
        "_ended",
        "_latest",
        "_remember",
        "_tasks",
        "cancelled",
    )

    def __init__(self, remember: int = REMEMBERED_JOBS) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_task_id: dict[str, set[asyncio.Task[None]]] = {}
        self._committed: dict[str, str] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._latest: dict[str, str] = {}
        self._remember = remember
        self.cancelled = 0
        """Requests whose running jobs :meth:`cancel` stopped."""

    def spawn(
        self, work: Coroutine[Any, Any, None], name: str, task_id: str | None = None
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        if task_id is not None:
            self._by_task_id.setdefault(task_id, set()).add(task)
            self._ended.pop(task_id, None)
        task.add_done_callback(functools.partial(self._done, task_id))
        return task

    def _done(self, task_id: str | None, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        jobs = self._by_task_id.get(task_id) if task_id is not None else None
        if task_id is not None and jobs is not None:
            jobs.discard(task)
            if not jobs:
                del self._by_task_id[task_id]
                self._committed.pop(task_id, None)
                self._ended[task_id] = None
                if len(self._ended) > self._remember:
                    self._ended.popitem(last=False)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job %s failed", task.get_name(), exc_info=task.exception())

    @property
    def running(self) -> int:
        return len(self._tasks)

    def task_ids(self) -> dict[str, JobState]:
        """The task_ids whose jobs run, with their state."""
        return {t: self.state(t) or JobState.RUNNING for t in self._by_task_id}

    def state(self, task_id: str) -> JobState | None:
        """The state of the jobs of ``task_id``; None when it started none (or is forgotten)."""
        if task_id in self._committed:
            return JobState.COMMITTED
        if task_id in self._by_task_id:
            return JobState.RUNNING
        return JobState.ENDED if task_id in self._ended else None

    def active(self, task_id: str | None) -> bool:
        """True while jobs of ``task_id`` run (cancellable or not). Handlers that allow one
        job at a time ask this rather than keep a flag: a job cancelled before its first step
        never runs its clean-up."""
        return task_id is not None and self.state(task_id) in (JobState.RUNNING, JobState.COMMITTED)

    def claim(self, kind: str, task_id: str) -> bool:
        """Make ``task_id`` the latest request of ``kind`` (a reboot, a firmware upgrade: one
        at a time), unless the jobs of the previous one still run (False then)."""
        if self.active(self._latest.get(kind)):
            return False
        self._latest[kind] = task_id
        return True

    def commit(self, task_id: str, reason: str) -> None:
        """Mark the running jobs of ``task_id`` past their point of no return: a cancel is then
        refused with ``reason``. Nothing happens when ``task_id`` runs no job here (a handler's
        job run directly, as unit tests do)."""
        if task_id in self._by_task_id:
            self._committed[task_id] = reason

    def reason(self, task_id: str) -> str:
        """Why the jobs of a committed ``task_id`` can no longer be cancelled."""
        return self._committed.get(task_id, "")

    async def cancel(self, task_id: str, grace: float = 10.0) -> JobState | None:
        """Cancel the jobs of ``task_id`` if they are ``RUNNING``, and wait (up to ``grace`` s)
        until they are gone; return the state they were in (only ``RUNNING`` ones stop)."""
        state = self.state(task_id)
        if state is JobState.RUNNING:
            jobs = list(self._by_task_id[task_id])
            for t in jobs:
                t.cancel()
            self.cancelled += 1
            await asyncio.wait(jobs, timeout=grace)
        return state

    def stop_others(self) -> list[asyncio.Task[None]]:
        """Cancel every job but the caller's (a reboot stops the others); return them."""
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for t in tasks:
            t.cancel()
        return tasks

    async def idle(self) -> None:
        """Wait until no job runs (jobs started meanwhile are waited for too)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
