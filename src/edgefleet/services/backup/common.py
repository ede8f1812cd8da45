"""What backup and restore share: the archive's names, the database tools, counting rows."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from edgefleet.errors import EdgefleetError
from edgefleet.files import FileStore
from edgefleet.settings import Settings, mask_url

log = logging.getLogger(__name__)

FORMAT = "edgefleet-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database.sqlite3"
PG_MEMBER = "database.pgdump"
KEY_MEMBER = "secret.key"
FILES_PREFIX = "files/"
COMPRESS_LEVEL = 6
"""gzip level of the archive: pg_dump's output and most firmware images are compressed
already, so a higher level costs time for little."""

KEY_FILE = "secret.key"
"""The server key file in the data directory (``Settings.resolved_secret_key``)."""
BROKER_RECORD = "embedded-mosquitto.json"
"""What a running ``edgefleet serve`` with the embedded broker keeps in the data directory
(``bootstrap``): ``{"pid": broker, "server": server pid, …}``."""
VERSION_TABLE = "alembic_version"
_REVISION_QUERY = f"SELECT version_num FROM {VERSION_TABLE}"  # noqa: S608 - a constant


class BackupError(EdgefleetError):
    """A backup or restore that cannot be made; the message says why and what to do."""


# --- what both directions share -----------------------------------------------------------


def masked_url(url: str) -> str:
    """The database URL with its password and secret query parameters (``sslpassword``…)
    replaced, for messages and logs."""
    return mask_url(url)


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"{masked_url(url)} is not a SQLite file")
    return Path(database)


StoreFactory = Callable[[], FileStore]
"""The configured file store (``bootstrap.backup_store``); opened only once it is needed."""
EngineFactory = Callable[[], AsyncEngine]
"""A new engine on the configured database, without a pool (no connection left open on it
once a use is over); ``bootstrap.backup_engine`` makes it."""


def _store_name(settings: Settings) -> str:
    url = settings.storage.url
    return url if url.startswith("s3://") else str(settings.files_dir)


@dataclass(frozen=True)
class PgTools:
    pg_dump: Path
    pg_restore: Path
    version: str
    """``pg_dump --version``."""


_TOOL_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")


def _tool_major(tool: Path) -> tuple[int, str] | None:
    try:
        out = subprocess.run(  # noqa: S603 - a PostgreSQL client found in a known place
            [str(tool), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    m = _TOOL_VERSION.search(out)
    return (int(m.group(1)), out) if m else None


def find_pg_tools(server_version_num: int, bin_dir: Path | None = None) -> PgTools:
    """``pg_dump`` and ``pg_restore`` of the server's major version: from ``bin_dir`` when
    given, else Debian's ``/usr/lib/postgresql/<major>/bin``, else the ``PATH``."""
    major = server_version_num // 10000  # 150020 → 15 (edgefleet needs PostgreSQL 10 or newer)
    if bin_dir is not None:
        dirs = [bin_dir]
    else:
        dirs = [Path(f"/usr/lib/postgresql/{major}/bin")]
        found = shutil.which("pg_dump")
        if found:
            dirs.append(Path(found).parent)
    seen: list[str] = []
    for d in dirs:
        dump, restore = d / "pg_dump", d / "pg_restore"
        if not (os.access(dump, os.X_OK) and os.access(restore, os.X_OK)):
            continue
        got = _tool_major(dump)
        if got is None:
            continue
        if got[0] == major:
            return PgTools(dump, restore, got[1])
        seen.append(f"{dump} is version {got[0]}")
    looked = ", ".join(str(d) for d in dirs)
    found_text = f" ({'; '.join(seen)})" if seen else ""
    raise BackupError(
        f"the PostgreSQL server is version {major}: pg_dump and pg_restore of version {major} "
        f"are needed and none were found in {looked}{found_text}. Install them (Debian: "
        f"apt-get install postgresql-client-{major}) or name their directory with --pg-bin"
    )


_LIBPQ_QUERY = {
    "sslmode": "PGSSLMODE",
    "ssl": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "host": "PGHOST",
    "port": "PGPORT",
}


def pg_environment(url: str) -> dict[str, str]:
    """libpq's environment for ``url``: the password goes in ``PGPASSWORD``, never in argv."""
    u = make_url(url)
    env = dict(os.environ)
    for var, value in (
        ("PGHOST", u.host),
        ("PGPORT", str(u.port) if u.port else None),
        ("PGUSER", u.username),
        ("PGPASSWORD", u.password),
        ("PGDATABASE", u.database),
    ):
        if value:
            env[var] = str(value)
    for name, given in u.query.items():
        libpq = _LIBPQ_QUERY.get(name)
        if libpq is not None:
            env[libpq] = given if isinstance(given, str) else given[-1]
    env["PGAPPNAME"] = "edgefleet-backup"
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env


async def _run_tool(argv: list[str], env: dict[str, str], secret: str | None) -> None:
    """Run a PostgreSQL client tool; a failure becomes ``BackupError`` with its stderr."""
    name = Path(argv[0]).name
    log.info("running %s", " ".join([name, *argv[1:]]))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip()
        if secret:
            detail = detail.replace(secret, "***")
        raise BackupError(f"{name} failed (exit {proc.returncode}): {detail[-2000:]}")


def _driver_error(exc: Exception) -> str:
    """The driver's own words (SQLAlchemy's wrapper adds the statement and a link)."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    name = type(inner).__name__
    return str(inner) if name == "Error" else f"{name}: {inner}"


def _quote(conn: AsyncConnection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


async def _pg_tables(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(
        text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
    )
    return [str(r[0]) for r in rows]


async def _pg_counts(conn: AsyncConnection, tables: Iterable[str]) -> dict[str, int]:
    out = {}
    for t in tables:
        if t != VERSION_TABLE:
            n = await conn.scalar(text(f"SELECT count(*) FROM {_quote(conn, t)}"))  # noqa: S608
            out[t] = int(n or 0)
    return out


def _sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    )
    return [str(r[0]) for r in rows]


def _sqlite_counts(conn: sqlite3.Connection, tables: Iterable[str]) -> dict[str, int]:
    return {
        t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # noqa: S608
        for t in tables
        if t != VERSION_TABLE
    }


def _revision(rows: Iterable[Any]) -> str:
    revisions = [str(r[0]) for r in rows]
    if len(revisions) != 1:
        raise BackupError("the database has no single schema revision: is it edgefleet's?")
    return revisions[0]
