"""Find a PostgreSQL server for the tests, or start a private one.

Order: ``EDGEFLEET_TEST_PG`` (admin DSN), a server on 127.0.0.1:5432 that accepts the
``postgres`` user, then a new cluster in a temporary directory on a free port, made with
the installed ``initdb``/``pg_ctl`` (as the ``postgres`` system user when run as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.brokers import free_port

INSTALL_HINT = (
    "PostgreSQL is needed for these tests and none was found: set EDGEFLEET_TEST_PG to an admin "
    "DSN, run a server on 127.0.0.1:5432, or install the binaries (`make test` does: "
    "apt-get install postgresql) so the tests can start their own."
)


@dataclass
class PostgresServer:
    admin_dsn: str
    data_dir: Path | None = None
    pg_ctl: str | None = None
    run_as: list[str] = field(default_factory=list)
    start_command: list[str] = field(default_factory=list)
    """How this server was started (a private one): ``start`` runs it again."""

    def url(self, database: str) -> str:
        parts = urlsplit(self.admin_dsn)
        return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{database}", parts.query, ""))

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.admin_dsn, timeout=5)

    async def create_database(self, name: str) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop_database(self, name: str) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def start(self) -> None:
        """Start again a private server stopped by ``stop``."""
        if not self.start_command:
            raise RuntimeError("only a private server started by the tests can be restarted")
        subprocess.run(self.start_command, check=True, capture_output=True)

    def stop(self) -> None:
        """Stop a private server at once, as a crash would (``-m immediate``)."""
        if self.data_dir is not None and self.pg_ctl is not None:
            subprocess.run(
                [*self.run_as, self.pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )


def _reachable(dsn: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    # may be called while the test event loop runs: probe on a thread with its own loop
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def _binaries() -> tuple[str, str] | None:
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        initdb, pg_ctl = os.path.join(bindir, "initdb"), os.path.join(bindir, "pg_ctl")
        if os.path.exists(initdb) and os.path.exists(pg_ctl):
            return initdb, pg_ctl
    found_initdb, found_pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (found_initdb, found_pg_ctl) if found_initdb and found_pg_ctl else None


def _start_private(base: Path) -> PostgresServer:
    found = _binaries()
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    initdb, pg_ctl = found
    run_as: list[str] = []
    data = base / "data"
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "running as root needs a 'postgres' system user to start PostgreSQL", pytrace=False
            )
        run_as = ["runuser", "-u", "postgres", "--"]
        base.chmod(0o777)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    port = free_port()
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    start = [
        *run_as,
        pg_ctl,
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    ]
    subprocess.run(start, check=True, capture_output=True)
    return PostgresServer(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", data, pg_ctl, run_as, start
    )


def start_private_postgres(base: Path) -> PostgresServer:
    """A PostgreSQL of the test's own (own port, own data directory), which it may stop and
    start; stop it with ``stop`` when done."""
    return _start_private(base)


def find_postgres(base: Path) -> PostgresServer:
    configured = os.environ.get("EDGEFLEET_TEST_PG")
    if configured:
        if not _reachable(configured):
            pytest.fail(f"EDGEFLEET_TEST_PG={configured} does not answer", pytrace=False)
        return PostgresServer(configured)
    default = "postgresql://postgres@127.0.0.1:5432/postgres"
    if _reachable(default):
        return PostgresServer(default)
    with contextlib.suppress(subprocess.CalledProcessError):
        return _start_private(base)
    pytest.fail(INSTALL_HINT + f" (starting one in {base} failed)", pytrace=False)
