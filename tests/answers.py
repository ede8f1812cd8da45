"""Every 2xx JSON answer the tests receive is validated against its route's response model.

The app serializes what its presenters shaped without validating it (the models only document,
see ``edgefleet.api.responses``); this hook, on the test clients, is what keeps the documented
model and the presenter's shape the same: an answer with a key the model does not name, a
missing key or a wrong type fails the test that made the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.routing import Match

_adapters: dict[int, TypeAdapter[Any]] = {}


def route_of(app: FastAPI, request: httpx.Request) -> APIRoute | None:
    """The route that served ``request`` (matched as the router does)."""
    scope = {
        "type": "http",
        "method": request.method,
        "path": request.url.path,
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
    }
    for route in app.routes:
        if isinstance(route, APIRoute) and route.matches(scope)[0] is Match.FULL:
            return route
    return None


def check_answers(app: FastAPI) -> Callable[[httpx.Response], Awaitable[None]]:
    """An httpx response hook for a client of ``app``."""

    async def check(response: httpx.Response) -> None:
        if not 200 <= response.status_code < 300:
            return
        if response.headers.get("content-type", "").split(";")[0] != "application/json":
            return
        route = route_of(app, response.request)
        if route is None or route.response_model is None:
            return
        key = id(route)
        if key not in _adapters:
            _adapters[key] = TypeAdapter(route.response_model)
        await response.aread()
        try:
            _adapters[key].validate_json(response.content, strict=True)
        except ValueError as exc:
            raise AssertionError(
                f"{response.request.method} {response.request.url.path} answered what its "
                f"response model ({route.response_model}) does not describe: {exc}"
            ) from exc

    return check


def checked_client(
    app: FastAPI, base_url: str = "http://t", client: tuple[str, int] | None = None
) -> httpx.AsyncClient:
    """An in-process client of ``app`` whose 2xx JSON answers are checked as above."""
    transport = (
        httpx.ASGITransport(app=app, client=client) if client else httpx.ASGITransport(app=app)
    )
    hooks = {"response": [check_answers(app)]}
    return httpx.AsyncClient(transport=transport, base_url=base_url, event_hooks=hooks)
