"""Requests → handlers by (method, resource path), and the Sanji answer they get.

A handler returns ``(code, data)``; raising :class:`HandlerError` answers with its code and
``{"message": …}``; any other exception answers 500. A path no route serves is answered 404
``{"message": "Resource not found"}``, a path served for other methods only 405. Work that
must happen after the answer was sent is registered with :meth:`Request.after_reply` and
handed back in the :class:`Outcome` (dropped when the answer is an error).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from edgefleet.protocol.messages import RequestMessage, ResponseMessage, request_echo

log = logging.getLogger(__name__)

METHODS = frozenset({"get", "post", "put", "delete"})
NOT_FOUND = {"message": "Resource not found"}
MESSAGE_IDS = 655351
"""Answers' ``id`` is drawn below this (Sanji's message ids)."""
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

Reply = tuple[int, Any]
Job = Callable[[], Coroutine[Any, Any, None]]


class HandlerError(Exception):
    """Raise in a handler to answer ``code`` with ``{"message": message}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


Handler = Callable[[Request], Awaitable[Reply]]
H = TypeVar("H", contravariant=True)


@dataclass(frozen=True)
class Path:
    """``method`` (get/post/put/delete) on ``path``; ``{name}`` matches one path segment."""

    method: str
    path: str
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


@dataclass(frozen=True)
class Route(Path):
    """A route whose handler takes the request (what an agent plug-in returns)."""

    handler: Handler


@dataclass(frozen=True)
class HostRoute(Path, Generic[H]):
    """A route whose handler takes the gateway host and the request: one table serves every
    host (the simulator's thousands of gateways share it); :func:`bind` makes it a
    :class:`Route` of one host."""

    handler: Callable[[H, Request], Awaitable[Reply]]


def bind(host: H, routes: Iterable[HostRoute[H]]) -> list[Route]:
    """``routes`` as plain routes answering for ``host``."""

    def bound(route: HostRoute[H]) -> Handler:
        async def handler(req: Request) -> Reply:
            return await route.handler(host, req)

        return handler

    return [Route(r.method, r.path, bound(r)) for r in routes]


@dataclass
class Outcome:
    response: ResponseMessage
    deferred: list[Job]


R = TypeVar("R", bound=Path)


def respond(
    message: RequestMessage, code: int, data: Any, sign: Sequence[str], rng: random.Random
) -> ResponseMessage:
    """The answer to ``message``: its task_id, method and resource echoed."""
    return ResponseMessage(
        task_id=message.task_id,
        method=message.method,
        resource=message.resource,
        code=code,
        data=data,
        id=rng.randrange(MESSAGE_IDS),
        sign=list(sign),
    )


def refusal(
    payload: bytes, reason: str, sign: Sequence[str], rng: random.Random
) -> ResponseMessage | None:
    """The 400 answer to a request that could not be read (``reason`` says why), when it names
    a task_id, method and resource to echo; None when it does not (see ``request_echo``)."""
    echo = request_echo(payload)
    return None if echo is None else respond(echo, 400, {"message": reason}, sign, rng)


def request_of(message: RequestMessage) -> Request:
    parts = urlsplit(message.resource)
    return Request(
        method=message.method,
        resource=message.resource,
        path=unquote(parts.path.rstrip("/")) or "/",
        query=dict(parse_qsl(parts.query)),
        params={},
        data=message.data,
        task_id=message.task_id,
    )


class Router(Generic[R]):
    """Finds the route for a request, runs it, and shapes the Sanji response. Immutable once
    built: one router may serve many gateways."""

    def __init__(self, routes: Iterable[R]) -> None:
        self.routes: list[R] = []
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

    def find(self, method: str, path: str) -> tuple[R, dict[str, str]] | None:
        """The route serving ``method`` on ``path``, with the path's parameters."""
        for route in self.routes:
            if route.method == method and (params := route.match(path)) is not None:
                return route, params
        return None

    def serves(self, path: str) -> bool:
        """True if some route, of any method, matches ``path``."""
        return any(route.match(path) is not None for route in self.routes)

    async def answer(
        self,
        message: RequestMessage,
        call: Callable[[R, Request], Awaitable[Reply]],
        sign: Sequence[str],
        rng: random.Random,
    ) -> Outcome:
        """Run ``message`` (``call`` runs the route found) and shape its answer."""
        request = request_of(message)
        code, data = await self.run(request, call)
        response = respond(message, code, data, sign, rng)
        return Outcome(response, request.deferred if code < 300 else [])

    async def run(
        self, request: Request, call: Callable[[R, Request], Awaitable[Reply]]
    ) -> tuple[int, Any]:
        found = self.find(request.method, request.path)
        if found is None:
            if self.serves(request.path):
                return 405, {"message": f"Method {request.method} not allowed on {request.path}"}
            return 404, dict(NOT_FOUND)
        route, request.params = found
        try:
            result = await call(route, request)
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
