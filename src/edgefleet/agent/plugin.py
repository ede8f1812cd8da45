"""The plug-in interface of the agent: what a request handler sees and returns.

A plug-in is a callable registered in the entry-point group ``edgefleet.agent.handlers``; it
takes an :class:`AgentContext` and returns the :class:`Route` objects it serves::

    def plugin(ctx: AgentContext) -> Iterable[Route]:
        async def hello(req: Request) -> tuple[int, Any]:
            return 200, {"hello": req.params["name"]}
        return [Route("get", "/hello/{name}", hello)]

A handler returns ``(code, data)``; raising :class:`HandlerError` answers with its code and
``{"message": …}``; any other exception answers 500. Work that must happen after the answer
was sent (a reboot, a download) is registered with :meth:`Request.after_reply`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
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


class Background:
    """Background jobs the agent owns: kept referenced, logged on failure, cancelled at exit."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job %s failed", task.get_name(), exc_info=task.exception())

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def idle(self) -> None:
        """Wait until no job runs (jobs started meanwhile are waited for too)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class AgentContext:
    """What a plug-in gets: the configuration, events, its data directory, an HTTP client."""

    config: AgentConfig
    emit: Emitter
    data_dir: Path
    http: httpx.AsyncClient
    background: Background = field(default_factory=Background)

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self.background.spawn(work, name)

    def path(self, *parts: str) -> Path:
        """A directory under the data dir, made (0700) if missing."""
        d = self.data_dir.joinpath(*parts)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d


Plugin = Callable[[AgentContext], Iterable[Route]]
