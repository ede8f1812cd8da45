"""What the benchmarks share: a PostgreSQL database, a server process, timing and output."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from edgefleet.bootstrap import build
from edgefleet.domain.auth import Principal, PrincipalKind, Role, Scope, permissions_for
from edgefleet.processes import die_with_parent
from edgefleet.settings import Settings

RESULTS = Path(__file__).parent / "results"
PG_ADMIN = os.environ.get("EDGEFLEET_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_url(name: str, driver: str = "postgresql+asyncpg") -> str:
    p = urlsplit(PG_ADMIN)
    return urlunsplit((driver, p.netloc, f"/{name}", p.query, ""))


async def fresh_database(name: str) -> str:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg_url(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    env: dict[str, str]

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (Linux /proc)."""
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server(
    database_url: str, data_dir: Path, extra_env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "EDGEFLEET_DATABASE_URL": database_url,
        "EDGEFLEET_DATA_DIR": str(data_dir),
        "EDGEFLEET_SECRET_KEY": secrets.token_urlsafe(32),
        "EDGEFLEET_LOG_LEVEL": "WARNING",
        "EDGEFLEET_MQTT__GATEWAY_HOST": "127.0.0.1",
        "EDGEFLEET_MQTT__GATEWAY_PORT": str(free_port()),
        "EDGEFLEET_MQTT__SERVER_PORT": str(free_port()),
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli.main", "serve", "--port", str(port), "--no-migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        # SIGTERM: the server stops its embedded broker on the way out
        preexec_fn=lambda: die_with_parent(signal.SIGTERM),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90  # a loaded 2-core box imports slowly
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return Server(proc, base, env)
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the server exited at start-up")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready in 90 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of a process (KiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(x) for x in text)
    return out


def broker_of(server: Server) -> int:
    """The pid of the embedded Mosquitto the server runs."""
    for pid in children(server.proc.pid):
        if Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto":
            return pid
    raise RuntimeError("the server runs no embedded Mosquitto")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def latency(
    client: httpx.AsyncClient, make: Callable[[int], Awaitable[httpx.Response]], n: int
) -> dict[str, float]:
    """Sequential requests: the latency one caller sees."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        r = await make(i)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"request failed: {r.status_code} {r.text[:200]}")
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(percentile(times, 95), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "n": n,
    }


async def throughput(
    server: Server,
    make: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    *,
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    """Closed-loop load from ``concurrency`` callers: requests/s and server CPU per request."""
    done = 0
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as client:

        async def worker(w: int) -> None:
            nonlocal done
            i = w
            while time.monotonic() < stop_at:
                r = await make(client, i)
                if r.status_code != 200:
                    raise RuntimeError(f"request failed: {r.status_code}")
                done += 1
                i += concurrency

        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    return {
        "req_per_s": round(done / elapsed, 1),
        "server_cpu_us_per_req": round(cpu / max(done, 1) * 1e6, 1),
        "concurrency": concurrency,
    }


def report(name: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print(f"\n== {name} ==")
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))
    doc = {"benchmark": name, **meta, "results": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc))


async def count_status(conn: asyncpg.Connection, status: str) -> int:
    n = await conn.fetchval("select count(*) from devices where connection_status = $1", status)
    return int(n)


async def wait_for(what: str, count: Any, n: int, limit: float = 240.0) -> float:
    """Seconds until ``count()`` reaches ``n``; progress on stderr every 5 s."""
    t0 = last = time.monotonic()
    while (got := await count()) < n:
        now = time.monotonic()
        if now - t0 > limit:
            raise RuntimeError(f"{what}: {got} of {n} after {limit} s")
        if now - last >= 5:
            print(f"  {what}: {got}/{n} after {now - t0:.0f} s", file=sys.stderr)
            last = now
        await asyncio.sleep(0.25)
    return time.monotonic() - t0


async def start_simulators(
    env: dict[str, str],
    n: int,
    procs: int,
    rate: float,
    *args: str,
    stdout: int | None = asyncio.subprocess.DEVNULL,
) -> list[asyncio.subprocess.Process]:
    """``procs`` ``edgefleet simulate`` processes holding ``n`` gateways of the fleets
    ``bench0`` … (registered by :func:`edgefleet.simulator.fleet.ensure_devices`), ``rate``
    connects per second over all; ``args`` go to each. They die with this process."""
    per = -(-n // procs)
    sims = []
    for k in range(procs):
        sims.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "edgefleet.cli.main", "simulate", "--prefix", f"bench{k}"),
                *("-n", str(min(per, n - k * per)), "--connect-rate", str(round(rate / procs))),
                *args,
                env=env,
                stdout=stdout,
                stderr=None,  # warnings go to the benchmark's stderr
                preexec_fn=die_with_parent,
            )
        )
    return sims


async def writer_token(url: str, data_dir: Path, secret: str) -> str:
    """An operator's read-write API token, made in the database ``url`` (server key ``secret``)."""
    return await api_token(url, data_dir, secret, Scope.READ_WRITE)


async def api_token(url: str, data_dir: Path, secret: str, scope: Scope) -> str:
    """An operator's API token of ``scope``, made in the database ``url`` (server key
    ``secret``)."""
    container = build(Settings(database_url=url, data_dir=data_dir, secret_key=secret))
    try:
        user, _ = await container.accounts.create_user(
            "bench@example.com", "bench-password-1", Role.OPERATOR
        )
        owner = Principal(
            PrincipalKind.SESSION,
            user.id,
            user.email,
            Role.OPERATOR,
            permissions_for(Role.OPERATOR),
        )
        _, token = await container.accounts.create_token(owner, "bench", scope)
        return token
    finally:
        await container.close()
