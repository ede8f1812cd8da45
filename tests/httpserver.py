"""The app served over real HTTP (uvicorn on 127.0.0.1) inside the test's own event loop, for
tests where something outside the app — a gateway, a plain HTTP client — must reach it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI


def bound_socket() -> socket.socket:
    """A listening-ready socket on a free 127.0.0.1 port (no race between picking and binding)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serving(app: FastAPI, sock: socket.socket) -> AsyncIterator[str]:
    """Serve ``app`` on ``sock`` until the block ends; yields the base URL."""
    # as `edgefleet serve`: proxy headers are the app's decision (http.trusted_proxies)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="test-http-server")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped before it started")
        if loop.time() > deadline:
            raise AssertionError("uvicorn did not start within 10 s")
        await asyncio.sleep(0.02)
    host, port = sock.getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
