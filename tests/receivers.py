"""A real HTTP receiver of webhooks on 127.0.0.1, recording what it gets; and what the
server's outbound guard is given in tests instead of the system resolver (a table of names)
and around its real connector (a record of every connection it opens)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpcore
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


@dataclass
class Names:
    """A resolver answering from a table (a name not in it does not resolve: no test ever
    asks the system's DNS); ``later`` answers every lookup after the first (DNS rebinding)."""

    table: dict[str, list[str]] = field(default_factory=dict)
    later: dict[str, list[str]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        seen = host in self.asked
        self.asked.append(host)
        if seen and host in self.later:
            return list(self.later[host])
        if host in self.table:
            return list(self.table[host])
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: no such name (test resolver)")


class RecordingNetwork(httpcore.AsyncNetworkBackend):
    """The real connector, recording every ``(address, port)`` it is asked to connect to."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self.inner = inner
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        assert host.startswith("127."), f"a test tried to reach {host}"
        return await self.inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
