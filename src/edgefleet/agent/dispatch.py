"""Requests → handlers by (method, resource path); plug-ins loaded from entry points."""

from __future__ import annotations

import importlib.metadata
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from edgefleet.agent.plugin import (
    ENTRY_POINT_GROUP,
    AgentContext,
    HandlerError,
    Job,
    Request,
    Route,
)
from edgefleet.protocol.messages import RequestMessage, ResponseMessage

log = logging.getLogger(__name__)

SIGN = ("edgefleet-agent",)
NOT_FOUND = {"message": "Resource not found"}


@dataclass
class Outcome:
    response: ResponseMessage
    deferred: list[Job]


def load_plugins(
    ctx: AgentContext, group: str = ENTRY_POINT_GROUP, disabled: Iterable[str] = ()
) -> list[Route]:
    """Every route of every plug-in in ``group``; a plug-in that fails is logged and skipped."""
    skip = set(disabled)
    routes: list[Route] = []
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        if ep.name in skip:
            log.info("handler plug-in %s disabled by configuration", ep.name)
            continue
        try:
            plugin = ep.load()
            loaded = list(plugin(ctx))
            bad = [r for r in loaded if not isinstance(r, Route)]
            if bad:
                raise TypeError(f"returned {type(bad[0]).__name__}, not Route")
        except Exception:
            log.exception("handler plug-in %s (%s) could not be loaded", ep.name, ep.value)
            continue
        log.debug("handler plug-in %s: %d routes", ep.name, len(loaded))
        routes.extend(loaded)
    return routes


class Dispatcher:
    """Finds the route for a request, runs it, and shapes the Sanji response."""

    def __init__(
        self,
        routes: Iterable[Route],
        sign: Sequence[str] = SIGN,
        rng: random.Random | None = None,
    ) -> None:
        self.routes: list[Route] = []
        seen: set[tuple[str, str]] = set()
        for r in routes:
            key = (r.method, r.pattern.pattern)
            if key in seen:
                log.warning("route %s %s is served twice; the first one wins", r.method, r.path)
                continue
            seen.add(key)
            self.routes.append(r)
        # fixed paths before patterns: /system/services/all beats /system/services/{name}
        self.routes.sort(key=lambda r: r.params)
        self.sign = list(sign)
        self._rng = rng or random.Random()  # noqa: S311 - message ids, not secrets

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route serving ``method`` on ``path``, with the path's parameters."""
        for route in self.routes:
            if route.method == method and (params := route.match(path)) is not None:
                return route, params
        return None

    def serves(self, path: str) -> bool:
        """True if some route, of any method, matches ``path``."""
        return any(route.match(path) is not None for route in self.routes)

    async def dispatch(self, message: RequestMessage) -> Outcome:
        parts = urlsplit(message.resource)
        path = unquote(parts.path.rstrip("/")) or "/"
        request = Request(
            method=message.method,
            resource=message.resource,
            path=path,
            query=dict(parse_qsl(parts.query)),
            params={},
            data=message.data,
            task_id=message.task_id,
        )
        code, data = await self._run(request)
        response = ResponseMessage(
            task_id=message.task_id,
            method=message.method,
            resource=message.resource,
            code=code,
            data=data,
            id=self._rng.randrange(655351),
            sign=self.sign,
        )
        return Outcome(response, request.deferred if code < 300 else [])

    async def _run(self, request: Request) -> tuple[int, Any]:
        found = self.find(request.method, request.path)
        if found is None:
            if self.serves(request.path):
                return 405, {"message": f"Method {request.method} not allowed on {request.path}"}
            return 404, dict(NOT_FOUND)
        route, request.params = found
        try:
            result = await route.handler(request)
        except HandlerError as exc:
            request.deferred.clear()
            return exc.code, {"message": exc.message}
        except Exception as exc:
            request.deferred.clear()
            log.exception("handler of %s %s failed", request.method, request.path)
            return 500, {"message": f"internal error: {type(exc).__name__}: {exc}"}
        if (
            not isinstance(result, tuple)
            or len(result) != 2
            or not isinstance(result[0], int)
            or isinstance(result[0], bool)
        ):
            log.error("handler of %s %s returned %r", request.method, request.path, result)
            request.deferred.clear()
            return 500, {"message": "internal error: handler returned no (code, data)"}
        return result
