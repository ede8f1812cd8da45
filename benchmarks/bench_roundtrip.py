"""The ``deviceTasks`` round trip (P4): REST → server → broker → gateway → broker → server →
REST, beside a raw MQTT request/response through the same broker in the same run.

One ``edgefleet serve`` (PostgreSQL, embedded Mosquitto) and one ``edgefleet simulate``
process holding one gateway (TLS-PSK, as a real one). Measured, in alternating blocks so both
see the same machine:
- ``deviceTasks``: ``POST /api/v1/deviceTasks`` ``get /system/status`` to the simulated
  gateway, sequential (one caller) and from 16 concurrent callers;
- baseline: what the path costs without the server: a requester on the server's broker
  listener (the server's credentials, its own client id) publishes a request of the same
  shape at QoS 1 to a second registered gateway identity, a minimal responder on the gateway
  listener (TLS-PSK) answers at QoS 1, on topics the server does not subscribe to. Both
  clients set TCP_NODELAY, as the broker does.

Figures: p50/p95/p99 (ms) of both, requests/s, the server's CPU per request, the ratio
deviceTasks / baseline, and the worst ``edgefleet_loop_lag_seconds`` the server reported
during the run. EDGEFLEET_BENCH_ROUNDTRIPS (default 1000 sequential per kind) and
EDGEFLEET_BENCH_ROUNDTRIP_CONCURRENCY (default 16) size it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import httpx

from benchmarks.common import (
    count_status,
    fresh_database,
    percentile,
    report,
    start_server,
    start_simulators,
    wait_for,
    writer_token,
)
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade
from edgefleet.protocol.messages import RequestMessage, ResponseMessage, encode, encode_response
from edgefleet.protocol.psk import psk_client_context
from edgefleet.protocol.topics import PREFIX
from edgefleet.secretbox import SecretBox
from edgefleet.services.fleet import FleetService
from edgefleet.simulator.fleet import ensure_devices

DB = "edgefleet_bench_roundtrip"
BLOCKS = 5
"""Sequential runs are split into this many alternating blocks of each kind."""
PAYLOAD = {"method": "get", "resource": "/system/status"}
STATUS = {"uptime": 12345, "cpuUsage": 12.5, "memoryUsage": 41.2, "time": "2026-12-07T01:00:00Z"}
"""What the baseline responder answers (about what the simulated gateway answers)."""

Call = Callable[[], Awaitable[None]]


def _nodelay(client: aiomqtt.Client) -> None:
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class RawPair:
    """A requester on the server listener and a responder on the gateway listener, nothing
    else: the broker's round trip as the deviceTasks path uses it (QoS 1 both ways)."""

    def __init__(self, server_env: dict[str, str], data_dir: Path, uuid: str, psk: str) -> None:
        self.env, self.data_dir, self.uuid, self.psk = server_env, data_dir, uuid, psk
        self.request_topic = f"{PREFIX}/{uuid}/bench-request"
        self.reply_topic = f"{PREFIX}/{uuid}/bench-reply"
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> RawPair:
        env = self.env
        password = (self.data_dir / "mqtt-server.password").read_text().strip()
        self.requester = await self._stack.enter_async_context(
            aiomqtt.Client(
                "127.0.0.1",
                int(env["EDGEFLEET_MQTT__SERVER_PORT"]),
                username=env.get("EDGEFLEET_MQTT__SERVER_USERNAME", "edgefleet-server"),
                password=password,
                identifier=f"bench-requester-{os.getpid()}",
            )
        )
        self.responder = await self._stack.enter_async_context(
            aiomqtt.Client(
                "127.0.0.1",
                int(env["EDGEFLEET_MQTT__GATEWAY_PORT"]),
                identifier=self.uuid,
                tls_context=psk_client_context(self.uuid, self.psk),
            )
        )
        _nodelay(self.requester)
        _nodelay(self.responder)
        await self.requester.subscribe(self.reply_topic, qos=1)
        await self.responder.subscribe(self.request_topic, qos=1)
        self._tasks = [
            asyncio.create_task(self._answer(), name="bench-responder"),
            asyncio.create_task(self._collect(), name="bench-requester"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()

    async def _answer(self) -> None:
        async for message in self.responder.messages:
            assert isinstance(message.payload, bytes)
            request = json.loads(message.payload)
            body = encode_response(
                ResponseMessage(
                    id=request.get("id"),
                    method=request["method"],
                    resource=request["resource"],
                    code=200,
                    data=STATUS,
                    task_id=request["task_id"],
                )
            )
            await self.responder.publish(self.reply_topic, body, qos=1)

    async def _collect(self) -> None:
        async for message in self.requester.messages:
            assert isinstance(message.payload, bytes)
            future = self._pending.pop(json.loads(message.payload)["task_id"], None)
            if future is not None and not future.done():
                future.set_result(message.payload)

    async def request(self) -> None:
        task_id = str(uuidlib.uuid4())
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[task_id] = future
        payload = encode(RequestMessage(**PAYLOAD, task_id=task_id))
        await self.requester.publish(self.request_topic, payload, qos=1)
        await asyncio.wait_for(future, 10)


async def _timed(call: Call, n: int, times: list[float]) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)


def _summary(times: list[float], elapsed: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "n": len(times),
        "p50_ms": round(percentile(times, 50), 2),
        "p95_ms": round(percentile(times, 95), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "max_ms": round(max(times), 2),
    }
    if elapsed is not None:
        row["req_per_s"] = round(len(times) / elapsed, 1)
    return row


async def _concurrent(call: Call, n: int, concurrency: int) -> tuple[list[float], float]:
    times: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_timed(call, n // concurrency, times) for _ in range(concurrency)))
    return times, time.perf_counter() - t0


class LagWatch:
    """The worst ``edgefleet_loop_lag_seconds`` (a 10 s window) scraped every 2 s."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.worst = 0.0

    async def scrape(self) -> None:
        r = await self.http.get("/metrics")
        for line in r.text.splitlines():
            if line.startswith("edgefleet_loop_lag_seconds "):
                self.worst = max(self.worst, float(line.split()[1]))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                await self.scrape()
            await asyncio.sleep(2)


async def main() -> None:
    n = int(os.environ.get("EDGEFLEET_BENCH_ROUNDTRIPS", "1000"))
    concurrency = int(os.environ.get("EDGEFLEET_BENCH_ROUNDTRIP_CONCURRENCY", "16"))
    url = await fresh_database(DB)
    await asyncio.to_thread(upgrade, url)
    secret = "bench-" + os.urandom(16).hex()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(
            url,
            Path(tmp),
            {
                "EDGEFLEET_SECRET_KEY": secret,
                "EDGEFLEET_LOG_LEVEL": os.environ.get("EDGEFLEET_BENCH_SERVER_LOG", "WARNING"),
            },
        )
        sims: list[asyncio.subprocess.Process] = []
        pg = await asyncpg.connect(url.replace("+asyncpg", ""))
        watch_task: asyncio.Task[None] | None = None
        worst_lag = 0.0
        try:
            db = Database(make_engine(url))
            fleet = FleetService(db, SecretBox(secret.encode()))
            ((gateway, _),) = await ensure_devices(fleet, "bench0", 1)
            ((raw_uuid, raw_psk),) = await ensure_devices(fleet, "bench-raw", 1)
            await db.dispose()
            token = await writer_token(url, Path(tmp), secret)
            await asyncio.sleep(2.5)  # the embedded broker notices the new keys (polls 2 s)

            env = {**os.environ, **server.env, "EDGEFLEET_LOG_LEVEL": "WARNING"}
            sims += await start_simulators(env, 1, 1, 10)
            await wait_for("gateway online", lambda: count_status(pg, "online"), 1)

            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            async with (
                httpx.AsyncClient(
                    base_url=server.base_url,
                    headers={"mx-api-token": token},
                    limits=limits,
                    timeout=30,
                ) as api,
                httpx.AsyncClient(
                    base_url=server.base_url, timeout=5, follow_redirects=True
                ) as probe,
                RawPair(server.env, Path(tmp), raw_uuid, raw_psk) as raw,
            ):
                body = {"deviceUUID": gateway, "payload": PAYLOAD}

                async def device_task() -> None:
                    r = await api.post("/api/v1/deviceTasks", json=body)
                    if r.status_code != 200 or r.json().get("code") != 200:
                        raise RuntimeError(f"deviceTasks: {r.status_code} {r.text[:200]}")

                for _ in range(20):  # warm both paths (connections, caches)
                    await device_task()
                    await raw.request()
                lag = LagWatch(probe)
                await lag.scrape()
                lag.worst = 0.0
                watch_task = asyncio.create_task(lag.run(), name="bench-loop-lag")

                seq: dict[str, list[float]] = {"baseline": [], "deviceTasks": []}
                cpu: dict[str, float] = {"baseline": 0.0, "deviceTasks": 0.0}
                for _ in range(BLOCKS):
                    for kind, call in (("baseline", raw.request), ("deviceTasks", device_task)):
                        cpu0 = server.cpu_seconds()
                        await _timed(call, n // BLOCKS, seq[kind])
                        cpu[kind] += server.cpu_seconds() - cpu0
                for kind in ("baseline", "deviceTasks"):
                    rows.append(
                        {
                            "path": kind,
                            "callers": 1,
                            **_summary(seq[kind]),
                            "server_cpu_us_per_req": round(cpu[kind] / len(seq[kind]) * 1e6),
                        }
                    )
                conc: dict[str, dict[str, Any]] = {}
                for kind, call in (("baseline", raw.request), ("deviceTasks", device_task)):
                    cpu0 = server.cpu_seconds()
                    times, elapsed = await _concurrent(call, n, concurrency)
                    used = server.cpu_seconds() - cpu0
                    conc[kind] = {
                        "path": kind,
                        "callers": concurrency,
                        **_summary(times, elapsed),
                        "server_cpu_us_per_req": round(used / len(times) * 1e6),
                    }
                rows += conc.values()
                await lag.scrape()
                worst_lag = lag.worst
        finally:
            if watch_task is not None:
                watch_task.cancel()
            for s in sims:
                if s.returncode is None:
                    s.kill()
            await pg.close()
            server.stop()
    by = {(r["path"], r["callers"]): r for r in rows}
    for r in rows:
        if r["path"] == "deviceTasks":
            base = by[("baseline", r["callers"])]
            r["p50_x_baseline"] = round(r["p50_ms"] / base["p50_ms"], 1)
            r["p99_x_baseline"] = round(r["p99_ms"] / base["p99_ms"], 1)
    report(
        "device_task_roundtrip",
        rows,
        {
            "machine": os.uname().nodename,
            "load_average": os.getloadavg(),
            "worst_loop_lag_s": round(worst_lag, 4),
            "command": " ".join(sys.argv),
        },
    )


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main())
