"""Gateway keys at 100,000 devices on PostgreSQL with the embedded broker (issue 20, P9).

Seeds the fleet with COPY (keys sealed with the server key the server is started with), starts
a real server process (one uvicorn worker, embedded Mosquitto), and measures:

- registration: 1,000 devices one by one (POST /api/v1/devices): p50/p95/p99 per request,
  server CPU per registration, the embedded broker's key-file rewrites, and the worst
  event-loop lag meanwhile (``edgefleet_loop_lag_seconds``, scraped from /metrics every
  0.5 s); then whether the last gateway registered connects over TLS-PSK;
- the brokers' key sync (GET /api/v1/broker/psk-file): the whole file (first answer, then from
  the cache), 304 for an unchanged ETag, and ``?since=`` with the 1,000 changes and with none:
  time and bytes;
- broker hook checks (POST /api/v1/broker/authn and authz, half each) from 64 keep-alive
  connections for 10 s: checks/s and server CPU per check, beside GET /healthz from the same
  client (what HTTP alone costs in this server: the ceiling of any route).

The load client is a minimal HTTP/1.1 client on asyncio streams (≈ 30 µs a request), so it
costs the 2-core box less than the server it measures. Environment: EDGEFLEET_BENCH_PG,
BENCH_DEVICES (100000), BENCH_REGISTRATIONS (1000), BENCH_HOOK_SECONDS (10).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx

from benchmarks.bench_devices import SECRET, seed
from benchmarks.common import Server, fresh_database, percentile, report, start_server
from edgefleet.bootstrap import build
from edgefleet.db.migrate import upgrade_async
from edgefleet.domain.auth import Principal, PrincipalKind, Role, Scope, permissions_for
from edgefleet.settings import Settings

DEVICES = int(os.environ.get("BENCH_DEVICES", "100000"))
REGISTRATIONS = int(os.environ.get("BENCH_REGISTRATIONS", "1000"))
HOOK_SECONDS = float(os.environ.get("BENCH_HOOK_SECONDS", "10"))
HOOK_CONNECTIONS = 64
DB = "edgefleet_bench_keys"


async def _tokens(url: str, data_dir: Path) -> tuple[str, str]:
    """A read/write token and a broker token of a new admin, made in the database."""
    container = build(Settings(database_url=url, data_dir=data_dir, secret_key=SECRET))
    try:
        user, _ = await container.accounts.create_user(
            "bench-keys@example.com", "bench-password-1", Role.ADMIN
        )
        owner = Principal(
            PrincipalKind.SESSION, user.id, user.email, Role.ADMIN, permissions_for(Role.ADMIN)
        )
        _, writer = await container.accounts.create_token(owner, "bench", Scope.READ_WRITE)
        _, broker = await container.accounts.create_token(owner, "bench", Scope.BROKER)
        return writer, broker
    finally:
        await container.close()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class LagWatch:
    """Scrapes the server's worst loop lag (last 10 s) every 0.5 s; keeps the worst seen."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def scrape(self) -> float:
        text = (await self.client.get("/metrics/")).text
        value = _metric(text, "edgefleet_loop_lag_seconds")
        self.worst = max(self.worst, value)
        return value

    async def _run(self) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(0.5)

    def __enter__(self) -> LagWatch:
        self.worst = 0.0
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def _register(server: Server, client: httpx.AsyncClient, writer: str) -> dict[str, object]:
    headers = {"mx-api-token": writer}
    times: list[float] = []
    made: list[tuple[str, str]] = []
    metrics0 = (await client.get("/metrics/")).text
    cpu0 = server.cpu_seconds()
    await asyncio.sleep(11)  # the lag gauge's 10 s window forgets the start's loading
    with LagWatch(client) as lag:
        for i in range(REGISTRATIONS):
            body = {"mac": f"02aa{i:08x}", "displayName": f"bench-new-{i}"}
            t0 = time.perf_counter()
            r = await client.post("/api/v1/devices", json=body, headers=headers)
            times.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"registration failed: {r.status_code} {r.text[:200]}")
            made.append((r.json()["uuid"], r.json()["psk"]))
        cpu = server.cpu_seconds() - cpu0
        await asyncio.sleep(2.5)  # the last rewrite and reload, and their lag, are included
        await lag.scrape()
    metrics1 = (await client.get("/metrics/")).text
    name = "edgefleet_embedded_broker_key_rewrites_total"
    rewrites = _metric(metrics1, name) - _metric(metrics0, name)
    uuid, psk = made[-1]
    port = server.env["EDGEFLEET_MQTT__GATEWAY_PORT"]
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", port, "--psk", psk, "--psk-identity", uuid,
        "-i", uuid, "-t", f"$ThingsPro/devices/{uuid}/client", "-q", "1", "-m", "hello",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    connects = await asyncio.wait_for(pub.wait(), 30) == 0
    return {
        "scenario": f"register {REGISTRATIONS} one by one",
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(percentile(times, 95), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "max_ms": round(max(times), 2),
        "server_cpu_ms_per_op": round(cpu / REGISTRATIONS * 1000, 2),
        "worst_loop_lag_ms": round(lag.worst * 1000, 1),
        "key_file_rewrites": int(rewrites),
        "last_gateway_connects": connects,
    }


async def _timed_get(
    client: httpx.AsyncClient, broker: str, scenario: str, **kwargs: object
) -> tuple[dict[str, object], httpx.Response]:
    t0 = time.perf_counter()
    r = await client.get("/api/v1/broker/psk-file", **kwargs)  # type: ignore[arg-type]
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code not in (200, 304):
        raise RuntimeError(f"psk-file: {r.status_code} {r.text[:200]}")
    row = {"scenario": scenario, "ms": round(ms, 1), "bytes": len(r.content)}
    row["status"] = r.status_code
    return row, r


async def _psk_file(client: httpx.AsyncClient, broker: str, cursor: str) -> list[dict[str, object]]:
    h = {"mx-api-token": broker}
    rows = []
    row, r = await _timed_get(client, broker, "psk-file: every key (first answer)", headers=h)
    rows.append(row)
    row, r = await _timed_get(client, broker, "psk-file: every key (cached)", headers=h)
    rows.append(row)
    etag = r.headers["etag"]
    row, _ = await _timed_get(
        client, broker, "psk-file: unchanged ETag (304)", headers={**h, "If-None-Match": etag}
    )
    rows.append(row)
    row, r = await _timed_get(
        client, broker, f"psk-file ?since: {REGISTRATIONS} changes", headers=h,
        params={"since": cursor},
    )  # fmt: skip
    rows.append(row)
    latest = r.headers["x-edgefleet-cursor"]
    row, _ = await _timed_get(
        client, broker, "psk-file ?since: no change", headers=h, params={"since": latest}
    )
    rows.append(row)
    return rows


def _request(path: str, token: str, body: bytes | None) -> bytes:
    head = f"{'POST' if body else 'GET'} {path} HTTP/1.1\r\nHost: bench\r\n"
    if token:
        head += f"mx-api-token: {token}\r\n"
    if body:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


async def _hammer(server: Server, requests: list[bytes], expect: bytes) -> dict[str, float]:
    """Closed loop over ``HOOK_CONNECTIONS`` keep-alive connections for ``HOOK_SECONDS``."""
    url = urlsplit(server.base_url)
    done = errors = 0
    stop = time.monotonic() + HOOK_SECONDS

    async def connection(k: int) -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            i = k
            while time.monotonic() < stop:
                writer.write(requests[i % len(requests)])
                i += HOOK_CONNECTIONS
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                body = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200") or expect not in body:
                    errors += 1
                done += 1
        finally:
            writer.close()

    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(connection(k) for k in range(HOOK_CONNECTIONS)))
    elapsed, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    if errors:
        raise RuntimeError(f"{errors} of {done} answers were not as expected")
    return {
        "req_per_s": round(done / elapsed),
        "server_cpu_us_per_req": round(cpu / max(done, 1) * 1e6, 1),
        "concurrency": HOOK_CONNECTIONS,
    }


async def _hooks(server: Server, broker: str, url: str) -> list[dict[str, object]]:
    pg = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await pg.fetch(  # the seeded ones, whose key is known
            "select uuid from devices where display_name like 'Gateway %' "
            "order by random() limit 2000"
        )
    finally:
        await pg.close()
    rng = random.Random(7)
    psk = "00" * 32  # the seeded key (bench_devices seals one key for every row)
    requests = []
    for row in rows:
        uuid = row["uuid"]
        authn = {"username": uuid, "clientid": uuid, "password": psk, "peerhost": "10.0.0.7"}
        topic = f"$ThingsPro/devices/{uuid}/{rng.choice(['client', 'status'])}"
        authz = {"username": uuid, "clientid": uuid, "topic": topic, "action": "publish"}
        requests.append(_request("/api/v1/broker/authn", broker, json.dumps(authn).encode()))
        requests.append(_request("/api/v1/broker/authz", broker, json.dumps(authz).encode()))
    hooks = await _hammer(server, requests, b'"allow"')
    floor = await _hammer(server, [_request("/healthz", "", None)], b"")
    return [
        {"scenario": "hook checks (authn + authz)", **hooks},
        {"scenario": "GET /healthz (HTTP alone)", **floor},
    ]


async def main() -> None:
    url = await fresh_database(DB)
    await upgrade_async(url)
    # offline: a fleet seeded "online" without gateways behind it makes the server probe
    # each at start (presence reconciliation), which is not what is measured here
    seconds = await seed(url, DEVICES, ["offline"])
    print(f"seeded {DEVICES} devices by COPY in {seconds:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        writer, broker = await _tokens(url, Path(tmp))
        t0 = time.perf_counter()
        server = start_server(url, Path(tmp), {"EDGEFLEET_SECRET_KEY": SECRET})
        ready = time.perf_counter() - t0
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                r = await client.get(
                    "/api/v1/broker/psk-file", params={"since": ""},
                    headers={"mx-api-token": broker},
                )  # fmt: skip
                cursor = r.headers["x-edgefleet-cursor"]
                rows = [await _register(server, client, writer)]
                rows += await _psk_file(client, broker, cursor)
            rows += await _hooks(server, broker, url)
        finally:
            with contextlib.suppress(Exception):
                server.stop()
    report(
        "gateway_keys",
        rows,
        {
            "devices": DEVICES,
            "database": "postgresql",
            "broker": "embedded mosquitto",
            "workers": 1,
            "server_ready_s": round(ready, 1),
            "targets": {
                "registration_p99_ms": 50,
                "worst_loop_lag_ms": 100,
                "hook_checks_per_s": 5000,
            },
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
