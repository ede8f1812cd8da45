"""Request bodies are limited before anything reads, parses or authenticates them (a clear
413 in the route's error shape), uploads have a limit of their own; and a real server holds
its memory while an anonymous client pushes 150 MB at it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.api.app import create_app
from edgefleet.api.bodylimit import MIN_BODY_RATE
from edgefleet.bootstrap import Container
from edgefleet.db.engine import Database
from edgefleet.domain.auth import Role
from edgefleet.settings import Settings
from tests.conftest import Caller, Callers
from tests.processes import ServerProcess, edgefleet_server

MIB = 1024 * 1024
JSON = {"content-type": "application/json"}
LIMIT = 1024 * 1024  # http.max_body_bytes by default
HUGE = 150 * 1000 * 1000


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A body without Content-Length (sent chunked), made as it is sent."""
    block = b"x" * size
    for _ in range(total // size):
        yield block


async def test_an_oversized_body_is_refused_before_authentication(
    client: httpx.AsyncClient,
) -> None:
    big = b'{"mac": "' + b"0" * (2 * MIB) + b'"}'
    # ThingsPro-compatible route: {"message"}; anonymous, so only the size was looked at
    r = await client.post(
        "/api/v1/devices", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json() == {"message": f"request body larger than the limit of {LIMIT} bytes"}
    # edgefleet's own route: problem+json
    r = await client.post("/api/v1/users", content=big)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"].endswith("/request-too-large") and str(LIMIT) in body["detail"]
    # at the limit, the request goes on (to be refused for what it is)
    r = await client.post("/api/v1/users", content=b" " * LIMIT)
    assert r.status_code != 413


async def test_a_body_without_length_is_cut_at_the_limit(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/groups", content=chunks(3 * MIB))
    assert r.status_code == 413 and r.json() == {
        "message": f"request body larger than the limit of {LIMIT} bytes"
    }
    r = await client.post("/api/v1/auth/login", content=chunks(3 * MIB))
    assert r.status_code == 413
    assert r.json()["type"].endswith("/request-too-large")


async def test_uploads_have_their_own_limit(client: httpx.AsyncClient, callers: Callers) -> None:
    writer: Caller = await callers.user(Role.OPERATOR)
    image = b"\x7fELF" + b"\0" * (3 * MIB)
    r = await client.post(
        "/api/v1/firmware",
        headers=writer.headers,
        files={"file": ("fw.img", image)},
        data={"version": "1.5.0"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(image)
    # the same size as JSON on the same path is refused
    r = await client.post(
        "/api/v1/firmware",
        headers={**writer.headers, "content-type": "application/json"},
        content=json.dumps({"file": "x" * (3 * MIB)}),
    )
    assert r.status_code == 413


async def _stalling(first: bytes) -> AsyncIterator[bytes]:
    """A body that sends ``first`` and then nothing more, for ever."""
    yield first
    await asyncio.Event().wait()


async def test_a_body_that_stops_coming_is_answered_408(
    container: Container, settings: Settings
) -> None:
    """A client that sends part of a body and then waits used to hold its request (and the
    connection) for ever; the server waits ``http.body_timeout_seconds`` for each piece."""
    settings.http.body_timeout_seconds = 0.5
    transport = httpx.ASGITransport(app=create_app(container), client=("198.51.100.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        r = await asyncio.wait_for(
            c.post("/api/v1/devices", content=_stalling(b'{"mac": '), headers=JSON), 30
        )
        assert r.status_code == 408
        assert r.json() == {
            "message": "request body too slow: not received within 0.5 s "
            f"and {MIN_BODY_RATE} bytes a second after that"
        }
        assert r.headers["connection"] == "close"
        r = await asyncio.wait_for(c.post("/api/v1/users", content=_stalling(b"{")), 30)
        assert r.status_code == 408
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/request-timeout")


# --- a real server, its memory measured ---------------------------------------------------------


class RssSampler:
    """The server's resident memory, sampled every 10 ms on a thread of its own."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss())
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def _push(port: int, head: bytes, body: AsyncIterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` then ``body`` as fast as the server takes it, until its whole answer has
    come; return the answer and how many body bytes were sent by then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0

    async def send() -> None:
        nonlocal sent
        writer.write(head)
        async for piece in body:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    sender = asyncio.create_task(send())
    answer = b""
    try:
        while not _complete(answer):
            more = await asyncio.wait_for(reader.read(65536), 60)
            if not more:
                break
            answer += more
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
    return answer, sent


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _chunked(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async def framed() -> AsyncIterator[bytes]:
        async for piece in body:
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        yield b"0\r\n\r\n"

    return framed()


@pytest.fixture
def server(settings: Settings, database: Database, tmp_path: Path) -> Iterator[ServerProcess]:
    """``edgefleet serve`` on the test's (emptied) database."""
    with edgefleet_server(settings, tmp_path) as running:
        yield running


async def test_a_150_mb_anonymous_post_is_refused_without_the_server_growing(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:  # warm the paths up
        for _ in range(3):
            assert (await http.post("/api/v1/devices", content=b"x" * (2 * MIB))).status_code == 413
            assert (await http.post("/api/v1/devices", json={})).status_code == 401
    await asyncio.sleep(0.5)
    before = server.rss()
    with RssSampler(server) as rss:
        # with Content-Length: answered at once, before a byte of the body is sent
        head = (
            "POST /api/v1/devices HTTP/1.1\r\nHost: edgefleet\r\n"
            f"Content-Type: application/json\r\nContent-Length: {HUGE}\r\n\r\n"
        ).encode()
        answer, sent_with_length = await _push(server.port, head, chunks(HUGE))
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert f"larger than the limit of {LIMIT} bytes".encode() in answer
        # without: streamed until the server has seen one byte too many
        head = (
            b"POST /api/v1/users HTTP/1.1\r\nHost: edgefleet\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        answer, sent_chunked = await _push(server.port, head, _chunked(chunks(HUGE)))
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"application/problem+json" in answer
    growth = rss.peak - before
    print(
        f"\nserver RSS {before / MIB:.1f} MiB before, peak {rss.peak / MIB:.1f} MiB "
        f"(+{growth / MIB:.2f} MiB); body bytes the client got to send: "
        f"{sent_with_length / MIB:.1f} MiB with Content-Length, "
        f"{sent_chunked / MIB:.1f} MiB chunked (of {HUGE / MIB:.0f} MiB)"
    )
    assert growth < 8 * MIB
    assert sent_chunked < 32 * MIB  # the rest was never read
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_a_real_server_drops_a_request_whose_body_stops_coming(
    settings: Settings, database: Database, tmp_path: Path
) -> None:
    """500 connections that sent headers and one byte of a 1 MB body, then a byte every
    5 s, were all still open 45 s later (nothing bounds how long uvicorn waits for a body):
    a stalled body and a trickled one are answered 408 and closed now."""
    with edgefleet_server(settings, tmp_path, EDGEFLEET_HTTP__BODY_TIMEOUT_SECONDS="1") as server:
        head = (
            b"POST /api/v1/auth/local HTTP/1.1\r\nHost: edgefleet\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
        )
        conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
        for _, writer in conns:
            writer.write(head)

        async def answer(reader: asyncio.StreamReader) -> bytes:
            return await reader.read()  # to the end: the server closes the connection

        answers = await asyncio.wait_for(asyncio.gather(*(answer(r) for r, _ in conns)), 60)
        for _, writer in conns:
            writer.close()
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[0][:200]
        # nor does trickling a byte at a time keep a request going
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)

        async def trickle() -> None:
            while True:
                await asyncio.sleep(0.2)
                writer.write(b" ")
                await writer.drain()

        trickling = asyncio.create_task(trickle())
        try:
            answer_ = await asyncio.wait_for(reader.read(200), 60)
        finally:
            trickling.cancel()
            await asyncio.gather(trickling, return_exceptions=True)
            writer.close()
        assert answer_.startswith(b"HTTP/1.1 408 "), answer_
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/healthz")).status_code == 200
