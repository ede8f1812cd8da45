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
cancel until the job calls :meth:`Background.commit` (its point of no return). Routes, requests,
answers and jobs are those of :mod:`edgefleet.gateway`, which the simulator shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from edgefleet.agent.config import AgentConfig
from edgefleet.gateway.jobs import REMEMBERED_JOBS, Background, JobState
from edgefleet.gateway.routing import METHODS, Handler, HandlerError, Job, Reply, Request, Route

__all__ = [
    "ENTRY_POINT_GROUP",
    "METHODS",
    "REMEMBERED_JOBS",
    "AgentContext",
    "Background",
    "Emitter",
    "Handler",
    "HandlerError",
    "Job",
    "JobState",
    "Plugin",
    "Reply",
    "Request",
    "Route",
]

ENTRY_POINT_GROUP = "edgefleet.agent.handlers"


class Emitter(Protocol):
    async def __call__(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        """Publish an event (no task_id) on the gateway's ``client`` topic."""


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
