"""Errors → HTTP, in one table.

Two body shapes: the ThingsPro-compatible endpoints answer ``{"message": …}`` as the
original's Sanji stack did; every other endpoint answers RFC 9457 problem+json.
A route opts into the compatible shape by using ``CompatRoute`` as its router's route class;
the app's handlers pick the shape from the route that matched the path, for every error of
it: ours, validation, the router's 405 (whose ``Allow`` names every method any route serves
at that path) and an unexpected exception (a 500 that says nothing more).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException  # the router's own 404/405 are this base class
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.errors import (
    AuthenticationError,
    BusyError,
    ConflictError,
    EdgefleetError,
    FileTooLargeError,
    GatewayTimeoutError,
    LoginBannedError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    TransportError,
    ValidationError,
)

log = logging.getLogger(__name__)

STATUS: list[tuple[type[EdgefleetError], int, str]] = [
    (NotFoundError, 404, "not-found"),
    (ConflictError, 409, "conflict"),
    (FileTooLargeError, 413, "file-too-large"),
    (ValidationError, 400, "invalid-request"),
    (AuthenticationError, 401, "unauthenticated"),
    (PermissionDeniedError, 403, "forbidden"),
    (LoginBannedError, 429, "too-many-logins"),
    (BusyError, 503, "busy"),
    (StorageError, 503, "storage-unavailable"),
    (GatewayTimeoutError, 504, "gateway-timeout"),
    (TransportError, 503, "broker-unavailable"),
]

PROBLEM_TYPE_BASE = "https://edgefleet.dev/problems/"


def status_of(exc: EdgefleetError) -> tuple[int, str]:
    for cls, status, slug in STATUS:
        if isinstance(exc, cls):
            return status, slug
    return 500, "internal-error"


def _headers(exc: Exception, status: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(exc, LoginBannedError | BusyError):
        headers["Retry-After"] = str(exc.retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="edgefleet"'
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)
    return headers


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]
    text = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    return text, errors


def problem(status: int, slug: str, detail: str, instance: str, **extra: Any) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": slug.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def problem_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, EdgefleetError):
        status, slug = status_of(exc)
        resp = problem(status, slug, exc.message, request.url.path)
    elif isinstance(exc, RequestValidationError):
        text, errors = _validation_detail(exc)
        resp = problem(422, "validation-failed", text, request.url.path, errors=errors)
        status = 422
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        slug = {413: "request-too-large", 408: "request-timeout"}.get(status, f"http-{status}")
        resp = problem(status, slug, str(exc.detail), request.url.path)
    else:
        raise exc
    resp.headers.update(_headers(exc, status))
    return resp


def compat_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, EdgefleetError):
        status, _ = status_of(exc)
        message = exc.message
    elif isinstance(exc, RequestValidationError):
        status, (message, _) = 400, _validation_detail(exc)
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    else:
        raise exc
    resp = JSONResponse({"message": message}, status_code=status)
    resp.headers.update(_headers(exc, status))
    return resp


class CompatRoute(APIRoute):
    """A route whose errors take the original ThingsPro shape ``{"message": …}``."""


def is_compat(request: Request) -> bool:
    """Whether the route that matched the request's path answers the compatible shape."""
    return isinstance(request.scope.get("route"), CompatRoute)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at the request's path. The router's 405
    names only the methods of the first route it found there, and a path is often served by
    several routes (one per method, or from several routers)."""
    routes = request.app.router.routes
    allowed = []
    for method in METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def _method_not_allowed(request: Request) -> HTTPException:
    allowed = allowed_methods(request)
    return HTTPException(
        405,
        f"method {request.method} is not allowed here; use {', '.join(allowed)}",
        headers={"Allow": ", ".join(allowed)},
    )


def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        exc = _method_not_allowed(request)
    if is_compat(request):
        return compat_response(request, exc)
    return problem_response(request, exc)


async def handle_error(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    if is_compat(request):
        return JSONResponse({"message": "internal server error"}, status_code=500)
    return problem(500, "internal-error", "internal server error", request.url.path)


class UnexpectedErrors:
    """The outermost middleware: an exception no handler took is logged once (message and
    stack) and answered 500 by ``handle_unexpected``, and the connection stays usable.

    Starlette's ServerErrorMiddleware answers the same but then re-raises "so that the server
    can log it": uvicorn logged the traceback a second time and closed the connection, so the
    client's next request on it failed. Only what escapes this class reaches it now.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            response = await handle_unexpected(Request(scope), exc)
            if not started:
                await response(scope, receive, send)
            # else the response was cut short: uvicorn says so in one line and closes it
