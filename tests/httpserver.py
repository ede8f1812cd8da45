"""The app served over real HTTP (uvicorn on 127.0.0.1), for tests where something outside the
app — a gateway, a plain HTTP client — must reach it: inside the test's own event loop
(``serving``), or in a process of its own (``app_process``)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from edgefleet.asgi import create_app
from edgefleet.bootstrap import build
from edgefleet.settings import Settings
from tests.brokers import free_port


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


def app_from_environment() -> FastAPI:
    """The app built from ``EDGEFLEET_*`` settings, messaging off, for ``app_process``."""
    return create_app(build(Settings()))


@contextmanager
def app_process(env: dict[str, str], log: Path) -> Iterator[str]:
    """The app served by uvicorn in a process of its own (its own interpreter, so a test that
    loads the CPU of its own process does not slow the server's loop); yields the base URL.
    The server's output goes to ``log``."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "tests.httpserver:app_from_environment",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--lifespan",
                "off",
            ],
            env=env,
            cwd=Path(__file__).parent.parent,  # where ``tests`` imports from
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer within 60 s: {log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
