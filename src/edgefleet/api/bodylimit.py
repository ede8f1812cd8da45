"""Request body limits, enforced before anything reads, parses or authenticates a body.

FastAPI reads and parses a JSON body before a route's dependencies run, so without a limit
one anonymous request can make the server hold any amount of memory. This plain ASGI
middleware, outside every other, answers 413 at once when ``Content-Length`` is over the
limit (before the app reads a byte of the body), and otherwise counts the bytes of a body
without a length as they are received, stopping at the first byte too many. What the client
sends after the answer is read and dropped by the server (uvicorn), never held: the
connection stays open so that ordinary clients, which read an answer only once they have
sent their whole request, get the 413 rather than a reset connection.

Two limits: ``http.max_body_bytes`` (1 MiB) for everything, and a larger one for multipart
requests to the routes that stream uploads (marked with ``streams_upload``), whose files go
to the file store as they arrive with ``storage.max_file_bytes`` per file (api/multipart.py).
The 413 has the route's error shape: ``{"message"}`` on ThingsPro-compatible routes,
problem+json elsewhere.

And a time limit: a body must have come within ``http.body_timeout_seconds`` plus a second
per ``MIN_BODY_RATE`` bytes received, or the answer is 408 (same shapes) with
``Connection: close``. uvicorn bounds neither, so a
client that sent part of a body and then waited held its request and connection for ever
(500 such connections from one client were all open 40 s later).

Starlette's own ``RequestBodyLimitMiddleware`` is not used: it looks at ``Content-Length``
only when the body is first read or the response starts, so an endpoint that never reads
its body would run (and change things) before its answer is replaced by a plain-text 413.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.api.errors import CompatRoute, problem

F = TypeVar("F", bound=Callable[..., Any])

STREAMS_UPLOAD = "_edgefleet_streams_upload"


def streams_upload(endpoint: F) -> F:
    """Mark a route handler that streams a multipart upload (``receive_form``): its
    multipart requests get the upload limit instead of ``http.max_body_bytes``."""
    setattr(endpoint, STREAMS_UPLOAD, True)
    return endpoint


def upload_paths(routes: Iterable[BaseRoute]) -> frozenset[str]:
    """The paths of the routes marked with ``streams_upload``."""
    return frozenset(
        str(getattr(r, "path", ""))
        for r in routes
        if getattr(getattr(r, "endpoint", None), STREAMS_UPLOAD, False)
    )


class RequestTooLargeError(HTTPException):
    """Raised from ``receive`` when a body without a length passes its limit. An
    ``HTTPException``, so that FastAPI's body parsing lets it through to the error handlers
    (any other error there becomes a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))
        self.limit = limit


MIN_BODY_RATE = 1024
"""Bytes a second a body must keep coming at, past ``http.body_timeout_seconds``: each byte
received moves the deadline on by 1/1024 s, so a client trickling a byte at a time cannot
hold its request much longer than the timeout."""


class BodyTimeoutError(HTTPException):
    """Raised from ``receive`` when the next piece of a body did not come in time."""

    def __init__(self, seconds: float) -> None:
        # uvicorn ends the connection after an answer that says so
        super().__init__(
            408,
            f"request body too slow: not received within {seconds:g} s "
            f"and {MIN_BODY_RATE} bytes a second after that",
            {"Connection": "close"},
        )


def too_large_message(limit: int) -> str:
    return f"request body larger than the limit of {limit} bytes"


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout: float,
        max_upload_bytes: int,
        upload_paths: frozenset[str],
        routes: list[BaseRoute],
    ) -> None:
        """``routes``: the API's routes, to answer in the shape of the one a refused request
        was for."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = upload_paths
        self.routes = routes

    def limit_for(self, scope: Scope, headers: Headers) -> int:
        if scope["path"] in self.upload_paths:
            content_type = headers.get("content-type", "").lower()
            if content_type.startswith("multipart/form-data"):
                return self.max_upload_bytes
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit_for(scope, headers)
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            await self._refuse(scope, receive, send, 413, too_large_message(limit))
            return
        # the server delivers no more than Content-Length bytes; without one, count them
        counted = length is None
        received = 0
        body_done = False
        started = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout

        async def guarded_receive() -> Message:
            nonlocal received, body_done, deadline
            if body_done:  # after the body: waiting for the client to go is not bounded
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.body_timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                deadline += size / MIN_BODY_RATE
                received += size
                if counted and received > limit:
                    raise RequestTooLargeError(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, watching_send)
        except RequestTooLargeError:
            if started:
                raise
            await self._refuse(scope, receive, send, 413, too_large_message(limit))
        except BodyTimeoutError as exc:
            if started:
                raise
            await self._refuse(scope, receive, send, 408, exc.detail, exc.headers)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(self._route(scope), CompatRoute):
            response = JSONResponse({"message": message}, status_code=status)
        else:
            kind = "request-too-large" if status == 413 else "request-timeout"
            response = problem(status, kind, message, scope["path"])
        response.headers.update(headers or {})
        await response(scope, receive, send)

    def _route(self, scope: Scope) -> BaseRoute | None:
        """The route that would serve the request (for the error's shape only)."""
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route
            if match is Match.PARTIAL and partial is None:
                partial = route
        return partial
