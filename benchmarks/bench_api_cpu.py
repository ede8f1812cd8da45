"""Server CPU per ``GET /api/v1/devices`` request, beside a minimal FastAPI endpoint on the same
stack in the same run (issue 19).

In one process: the application (``edgefleet.asgi.create_app``, every middleware) driven by
httpx's ASGI transport, sequential requests, CPU time (``time.process_time``) per request.
The baseline is a route answering a constant, added to the same application (the same
middlewares and transport; no token check), so the ratio is what the device list costs beyond
the framework. It is put first in the route list, so it is matched at once (the device list's
routes come soon after). Beside it, the same route in a bare ``FastAPI()``: what the
application's middleware adds. The process's CPU includes the client's share (httpx, the
transport) and the database driver's, not PostgreSQL's. Two databases: one device, and
``BENCH_DEVICES`` (100,000) seeded by COPY; PostgreSQL (``EDGEFLEET_BENCH_PG``).
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from fastapi import FastAPI, Response

from benchmarks.bench_devices import SECRET, seed
from benchmarks.common import api_token, fresh_database, report
from edgefleet.asgi import create_app
from edgefleet.bootstrap import build
from edgefleet.db.migrate import upgrade_async
from edgefleet.domain.auth import Scope
from edgefleet.settings import Settings

DEVICES = int(os.environ.get("BENCH_DEVICES", "100000"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
WARMUP = 200


async def cpu_per_request(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> float:
    """CPU milliseconds per sequential request of ``path``, after a warm-up."""
    for _ in range(WARMUP):
        r = await client.get(path, headers=headers)
        assert r.status_code == 200, r.text
    t0 = time.process_time()
    for _ in range(REQUESTS):
        await client.get(path, headers=headers)
    return (time.process_time() - t0) / REQUESTS * 1000


async def measure(url: str, devices: int, tmp: Path) -> list[dict[str, object]]:
    token = await api_token(url, tmp, SECRET, Scope.READ)
    container = build(Settings(database_url=url, data_dir=tmp, secret_key=SECRET))
    app = create_app(container)

    async def minimal() -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    app.add_api_route("/api/v1/_bench_minimal", minimal)
    # first in the route list: matched at once (added last, it was tried after every route,
    # which costs more than the device list's own match)
    app.router.routes.insert(0, app.router.routes.pop())
    bare = FastAPI()
    bare.add_api_route("/api/v1/_bench_minimal", minimal)
    h = {"mx-api-token": token}
    rows: list[dict[str, object]] = []
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            base = await cpu_per_request(client, "/api/v1/_bench_minimal", h)
        bare_transport = httpx.ASGITransport(app=bare)
        async with httpx.AsyncClient(transport=bare_transport, base_url="http://bench") as client:
            bare_ms = await cpu_per_request(client, "/api/v1/_bench_minimal", h)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for label, path in [
                ("first page", "/api/v1/devices"),
                ("page 50, offset 1000", "/api/v1/devices?limit=50&offset=1000"),
                ("status filter (counted)", "/api/v1/devices?status=offline"),
            ]:
                if devices < 1000 and path != "/api/v1/devices":
                    continue
                ms = await cpu_per_request(client, path, h)
                rows.append(
                    {
                        "devices": devices,
                        "request": label,
                        "cpu_ms": round(ms, 3),
                        "req_per_cpu_s": round(1000 / ms),
                        "minimal_cpu_ms": round(base, 3),
                        "ratio": round(ms / base, 2),
                        "bare_fastapi_cpu_ms": round(bare_ms, 3),
                    }
                )
    finally:
        await container.close()
    return rows


def head_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


async def main() -> None:
    rows: list[dict[str, object]] = []
    for n in (1, DEVICES):
        url = await fresh_database(f"edgefleet_bench_cpu_{n}")
        await upgrade_async(url)
        await seed(url, n)
        with tempfile.TemporaryDirectory() as tmp:
            rows += await measure(url, n, Path(tmp))
    report(
        "api_cpu",
        rows,
        {
            "command": "python -m benchmarks.bench_api_cpu",
            "commit": head_commit(),
            "machine": f"{platform.node()} {os.cpu_count()} cpus {platform.python_version()}",
            "requests": REQUESTS,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
