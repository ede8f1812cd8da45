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
from pathlib import Path

import pytest

from edgefleet.db.migrate import upgrade_async
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
