"""Helpers for tests that run edgefleet and its neighbours as separate processes (several
server instances, a broker cluster, a reverse proxy): the CLI, nginx, a fresh database, and
waiting for a condition."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgefleet.db.migrate import upgrade_async
from edgefleet.settings import Settings
from tests.brokers import free_port
from tests.pgserver import PostgresServer

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def edgefleet_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run ``edgefleet ARGS`` with ``env``; its stdout, stripped (a failure fails the test)."""
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def nginx_binary(*, stream: bool = False) -> str:
    """Debian's nginx (with its TCP ``stream`` module when asked), or a clear failure."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found or (stream and not STREAM_MODULE.exists()):
        what = "nginx with its stream module" if stream else "nginx"
        pytest.fail(
            f"{what} is missing: install it with `scripts/setup-system.sh test`", pytrace=False
        )
    return found


@contextmanager
def fresh_database(pg_server: PostgresServer, prefix: str) -> Iterator[str]:
    """A new PostgreSQL database at the current schema; dropped afterwards."""
    name = f"{prefix}_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    asyncio.run(pg_server.create_database(name))
    url = pg_server.url(name)
    asyncio.run(upgrade_async(url))
    try:
        yield url
    finally:
        asyncio.run(pg_server.drop_database(name))


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str = "condition", seconds: float = 60
) -> None:
    """Poll ``check`` every 0.3 s until it is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {seconds} s")
        await asyncio.sleep(0.3)


@contextmanager
def edgefleet_server(settings: Settings, workdir: Path, **env: str) -> Iterator[ServerProcess]:
    """``edgefleet serve`` in a process of its own on ``settings``' database, on a free port,
    with no broker (the gateway side retries in the background; the API works), plus ``env``
    (more ``EDGEFLEET_*`` settings). Stopped, and its log kept in ``workdir``, at the end."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    full.update(
        {
            "EDGEFLEET_DATA_DIR": str(workdir / "data"),
            "EDGEFLEET_DATABASE_URL": settings.resolved_database_url,
            "EDGEFLEET_SECRET_KEY": settings.secret_key.get_secret_value(),
            "EDGEFLEET_HTTP__PORT": str(port),
            "EDGEFLEET_MQTT__EMBEDDED": "false",
            "EDGEFLEET_MQTT__SERVER_PORT": str(free_port()),
            "EDGEFLEET_LOG_LEVEL": "WARNING",
            **env,
        }
    )
    log_path = workdir / f"server-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli.main", "serve", "--no-migrate"],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(proc.pid, f"http://127.0.0.1:{port}", port, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited:\n{log_path.read_text()}")
            try:
                if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer in 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass(frozen=True)
class ServerProcess:
    pid: int
    url: str
    port: int
    log: Path

    def rss(self) -> int:
        """Resident memory now, in bytes (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc")

    def cpu_seconds(self) -> float:
        """User and system CPU time used so far (Linux)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
