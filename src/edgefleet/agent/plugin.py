"""The plug-in interface of the agent: what a request handler sees and returns.

A plug-in is a callable registered in the entry-point group ``edgefleet.agent.handlers``; it
takes an :class:`AgentContext` and returns the :class:`Route` objects it serves::

    def plugin(ctx: AgentContext) -> Iterable[Route]:
        async def hello(req: Request) -> tuple[int, Any]:
            return 200, {"hello": req.params["name"]}
        return [Route("get", "/hello/{name}", hello)]

A handler returns ``(code, data)``; raising :class:`HandlerError` answers with its code and
``{"message": …}``; any other exception answers 500. Work that must happen after the answer
was sent (a reboot, a download) is registered with :meth:`Request.after_reply`; the agent runs
it as a background job of the request's task_id, which ``DELETE /system/tasks/{task_id}`` may
cancel until the job calls :meth:`Background.commit` (its point of no return).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import httpx

from edgefleet.agent.config import AgentConfig

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "edgefleet.agent.handlers"
METHODS = frozenset({"get", "post", "put", "delete"})
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

Reply = tuple[int, Any]
Handler = Callable[["Request"], Awaitable[Reply]]
Job = Callable[[], Coroutine[Any, Any, None]]


class HandlerError(Exception):
    """Raise in a handler to answer ``code`` with ``{"message": message}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Route:
    """``method`` (get/post/put/delete) on ``path``; ``{name}`` matches one path segment."""

    method: str
    path: str
    handler: Handler
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        method = self.method.lower()
        if method not in METHODS:
            raise ValueError(f"route {self.path}: unknown method {self.method!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"route path {self.path!r} must start with '/'")
        object.__setattr__(self, "method", method)
        path = self.path.rstrip("/") or "/"
        regex, pos = "", 0
        for m in _PARAM.finditer(path):
            regex += re.escape(path[pos : m.start()]) + f"(?P<{m.group(1)}>[^/]+)"
            pos = m.end()
        object.__setattr__(self, "pattern", re.compile(regex + re.escape(path[pos:])))

    @property
    def params(self) -> int:
        return self.pattern.groups

    def match(self, path: str) -> dict[str, str] | None:
        m = self.pattern.fullmatch(path)
        return None if m is None else m.groupdict()


@dataclass
class Request:
    """One request as a handler sees it."""

    method: str
    resource: str
    """As sent, query string included."""
    path: str
    """Without the query string and trailing slash."""
    query: dict[str, str]
    params: dict[str, str]
    data: Any
    task_id: str
    deferred: list[Job] = field(default_factory=list)

    def after_reply(self, job: Job) -> None:
        """Run ``job`` in the background once the answer has been published."""
        self.deferred.append(job)


class Emitter(Protocol):
    async def __call__(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        """Publish an event (no task_id) on the gateway's ``client`` topic."""


class JobState(StrEnum):
    """Where the background jobs of one request (one task_id) are."""

    RUNNING = "running"
    """Still running and may be cancelled."""
    COMMITTED = "committed"
    """Still running, past their point of no return (installing, rebooting): not cancellable."""
    ENDED = "ended"
    """Finished, failed or cancelled."""


REMEMBERED_JOBS = 1000


class Background:
    """Background jobs the agent owns: kept referenced, logged on failure, cancelled at exit.

    Jobs spawned for a request are indexed by its ``task_id``, so that they can be cancelled
    (``DELETE /system/tasks/{task_id}``); the task_ids of the newest ``remember`` ended ones are
    kept, to tell a finished task from an unknown one.
    """

    def __init__(self, remember: int = REMEMBERED_JOBS) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_task_id: dict[str, set[asyncio.Task[None]]] = {}
        self._committed: dict[str, str] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

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
            await asyncio.wait(jobs, timeout=grace)
        return state

    async def idle(self) -> None:
        """Wait until no job runs (jobs started meanwhile are waited for too)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _never(task_id: str) -> bool:
    return False


@dataclass
class AgentContext:
    """What a plug-in gets: the configuration, events, its data directory, an HTTP client,
    the background jobs, and whether a task_id was answered before (the agent's task store)."""

    config: AgentConfig
    emit: Emitter
    data_dir: Path
    http: httpx.AsyncClient
    background: Background = field(default_factory=Background)
    answered: Callable[[str], bool] = _never

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self.background.spawn(work, name)

    def path(self, *parts: str) -> Path:
        """A directory under the data dir, made (0700) if missing."""
        d = self.data_dir.joinpath(*parts)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d


Plugin = Callable[[AgentContext], Iterable[Route]]
