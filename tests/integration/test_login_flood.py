"""A flood of anonymous logins, each from an address of its own (so no throttle stops
them), does not stall the API: password hashing runs on a small pool of its own and what
cannot wait is refused with 503. The figures are printed; only liveness is asserted."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.db.engine import Database
from edgefleet.domain.auth import Role, Scope
from edgefleet.settings import Settings
from tests.conftest import Callers
from tests.processes import ServerProcess, edgefleet_server

FLOOD = 150


@pytest.fixture
def server(settings: Settings, database: Database, tmp_path: Path) -> Iterator[ServerProcess]:
    # the test client is the proxy: each flood login claims an address of its own
    with edgefleet_server(settings, tmp_path, EDGEFLEET_HTTP__TRUSTED_PROXIES="127.0.0.1") as s:
        yield s


async def _timed_get(api: httpx.AsyncClient, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    r = await api.get("/api/v1/devices", headers=headers)
    assert r.status_code == 200, r.text
    return time.perf_counter() - start


async def test_a_login_flood_does_not_stall_the_api(
    server: ServerProcess, callers: Callers
) -> None:
    reader = await callers.token(Role.VIEWER, Scope.READ)
    limits = httpx.Limits(max_connections=FLOOD + 10)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120) as api,
        httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as flood,
    ):
        quiet = [await _timed_get(api, reader.headers) for _ in range(20)]

        async def login(i: int) -> int:
            r = await flood.post(
                "/api/v1/auth/local",
                json={"email": f"nobody{i}@example.com", "password": "guess"},
                headers={"X-Forwarded-For": f"10.77.{i // 200}.{i % 200 + 1}"},
            )
            return r.status_code

        cpu = server.cpu_seconds()
        start = time.perf_counter()
        logins = asyncio.gather(*(login(i) for i in range(FLOOD)))
        during = []
        while not logins.done():
            during.append(await _timed_get(api, reader.headers))
        codes = await logins
        took = time.perf_counter() - start
        cpu = server.cpu_seconds() - cpu
    print(
        f"\n{FLOOD} concurrent anonymous logins: {took:.1f} s, server CPU {cpu:.1f} s; "
        f"answers: {codes.count(401)} checked (401), {codes.count(503)} refused as busy (503)\n"
        f"GET /api/v1/devices: quiet p50 {statistics.median(quiet) * 1000:.0f} ms; "
        f"during the flood ({len(during)} requests) p50 "
        f"{statistics.median(during) * 1000:.0f} ms, "
        f"p95 {statistics.quantiles(during, n=20)[-1] * 1000:.0f} ms, "
        f"max {max(during) * 1000:.0f} ms"
    )
    assert set(codes) <= {401, 503}
    assert max(during) < 10  # liveness only: the API kept answering through the flood
