"""A real HTTP receiver of webhooks on 127.0.0.1, recording what it gets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response

from tests.httpserver import bound_socket, serving


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    status: int = 200
    """What the receiver answered (its ``status`` when the request came)."""

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.raw))

    @property
    def delivery(self) -> str:
        return self.headers["x-edgefleet-delivery"]


@dataclass
class Receiver:
    """An HTTP endpoint that records every request; answers ``status``, or holds requests
    open while ``hang`` is set (until the receiver stops)."""

    url: str = ""
    status: int = 200
    hang: bool = False
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    open: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self) -> list[Received]:
        """The event deliveries received (not the confirmations)."""
        return [r for r in self.requests if r.body.get("type") == "event"]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            self.requests.append(
                Received(path, dict(request.headers), await request.body(), self.status)
            )
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.hang:
                self.open += 1
                try:
                    await self.release.wait()
                finally:
                    self.open -= 1
            return Response(status_code=self.status)

        return app


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    sock = bound_socket()
    try:
        async with serving(receiver.app(), sock) as base:
            receiver.url = base
            try:
                yield receiver
            finally:
                receiver.release.set()
    finally:
        sock.close()
