"""``edgefleet backup`` and ``edgefleet restore``: the database and the file store in one archive.

The archive is a gzip'd tar, mode 600, with flat member names::

    database.sqlite3 | database.pgdump   a copy made by SQLite's online backup API, or
                                         ``pg_dump --format=custom`` (the field's own tools)
    files/<key>                          every file the ``files`` table of that copy names
    secret.key                           only when the server key is a key file in data_dir
    manifest.json                        last: versions, schema revision, rows per table, the
                                         stored files, size and SHA-256 of every member, and
                                         the SHA-256 of the manifest itself

Consistency: the database is copied first, as one snapshot (SQLite's backup API; for
PostgreSQL a REPEATABLE READ transaction exports its snapshot and ``pg_dump --snapshot`` dumps
exactly that, while the same transaction reads the rows per table and the ``files`` rows).
Stored files never change once written (a key is random and never rewritten, only deleted),
so copying afterwards every file that snapshot references gives a consistent pair, each
checked against the size and SHA-256 its row records. A file uploaded after the snapshot is
not referenced by it and not copied; a referenced file deleted in between (a firmware image
removed during the backup) fails the backup, which can simply be run again.

Restore checks everything before it changes anything: the archive (gzip CRC, every member's
size and SHA-256, the manifest's own digest), the schema revision (known to this edgefleet:
it is migrated to head afterwards), the database kind, the server key, a running server,
data in the target (replaced only when asked). Then: files into the configured store (local
or S3, whatever the backup came from), the database, the key file, the migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from edgefleet import __version__
from edgefleet.clock import utcnow
from edgefleet.datadir import private_dir, private_sqlite
from edgefleet.db.migrate import alembic_config, head_revision, upgrade_async
from edgefleet.errors import EdgefleetError, StorageError
from edgefleet.files import CHUNK_SIZE, FileStore, is_key
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


# --- the manifest -------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Member(_Model):
    size: int
    sha256: str


class FileEntry(_Model):
    """A row of the ``files`` table as the snapshot had it (what restore puts back where)."""

    key: str
    kind: str
    size: int
    sha256: str
    content_type: str


class DatabaseInfo(_Model):
    dialect: Literal["sqlite", "postgresql"]
    member: str
    schema_revision: str
    server_version: str
    """SQLite's library version, or PostgreSQL's ``server_version``."""
    tool: str
    """What made the copy: ``sqlite3 backup API`` or ``pg_dump --version``."""
    tables: dict[str, int]
    """Rows per table (``alembic_version`` aside) in the snapshot."""


class KeyInfo(_Model):
    source: Literal["setting", "file"]
    """``setting``: EDGEFLEET_SECRET_KEY (not in the archive); ``file``: the data dir's key
    file, archived as ``secret.key``."""
    fingerprint: str
    """A one-way digest of the key: restore compares it with the key it will run with."""


class Manifest(_Model):
    format: Literal["edgefleet-backup"] = "edgefleet-backup"
    format_version: int = FORMAT_VERSION
    edgefleet_version: str
    created_at: str
    database: DatabaseInfo
    files: list[FileEntry]
    secret_key: KeyInfo
    members: dict[str, Member]
    manifest_sha256: str = ""

    def digest(self) -> str:
        body = self.model_dump(mode="json", exclude={"manifest_sha256"})
        return hashlib.sha256(_canonical(body)).hexdigest()

    def sealed(self) -> Manifest:
        return self.model_copy(update={"manifest_sha256": self.digest()})

    def encode(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode() + b"\n"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"edgefleet-backup-key-fingerprint:" + key).hexdigest()


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


# --- backup -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    database: DatabaseInfo
    files: list[FileEntry]


_FILES_QUERY = "SELECT key, kind, size, sha256, content_type FROM files ORDER BY key"


def _file_entries(rows: Iterable[Any]) -> list[FileEntry]:
    return [
        FileEntry(key=r[0], kind=r[1], size=int(r[2]), sha256=r[3], content_type=r[4]) for r in rows
    ]


def _sqlite_snapshot(source: Path, dest: Path) -> _Snapshot:
    if not source.is_file():
        raise BackupError(f"there is no database at {source}")
    src = sqlite3.connect(source, timeout=30)
    try:
        copy = sqlite3.connect(dest)
        try:
            src.backup(copy)  # one step: a consistent copy, even while the server writes
            copy.execute("PRAGMA journal_mode=DELETE")  # the copy is one self-contained file
            check = copy.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the database at {source} is damaged: {check}")
            tables = _sqlite_tables(copy)
            if VERSION_TABLE not in tables:
                raise BackupError(f"{source} is not an edgefleet database (no schema revision)")
            revision = _revision(copy.execute(_REVISION_QUERY))
            counts = _sqlite_counts(copy, tables)
            files = _file_entries(copy.execute(_FILES_QUERY)) if "files" in tables else []
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the database at {source}: {exc}") from exc
    finally:
        src.close()
    info = DatabaseInfo(
        dialect="sqlite",
        member=SQLITE_MEMBER,
        schema_revision=revision,
        server_version=sqlite3.sqlite_version,
        tool="sqlite3 backup API",
        tables=counts,
    )
    return _Snapshot(info, files)


async def _pg_snapshot(
    url: str, new_engine: EngineFactory, dest: Path, bin_dir: Path | None
) -> _Snapshot:
    engine = new_engine()
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with conn.begin():
                # the transaction's snapshot: pg_dump dumps it, and we read it too
                snapshot = str(await conn.scalar(text("SELECT pg_export_snapshot()")))
                version_num = int(await conn.scalar(text("SHOW server_version_num")) or 0)
                version = str(await conn.scalar(text("SHOW server_version")))
                tools = find_pg_tools(version_num, bin_dir)
                argv = [
                    str(tools.pg_dump),
                    "--format=custom",
                    "--no-owner",
                    "--no-acl",
                    f"--snapshot={snapshot}",
                    f"--file={dest}",
                ]
                await _run_tool(argv, pg_environment(url), make_url(url).password)
                tables = await _pg_tables(conn)
                if VERSION_TABLE not in tables:
                    raise BackupError(
                        f"{masked_url(url)} is not an edgefleet database (no schema revision)"
                    )
                revision = _revision(await conn.execute(text(_REVISION_QUERY)))
                counts = await _pg_counts(conn, tables)
                files = (
                    _file_entries(await conn.execute(text(_FILES_QUERY)))
                    if "files" in tables
                    else []
                )
    except (OSError, StorageError) as exc:
        raise BackupError(f"cannot reach the database {masked_url(url)}: {exc}") from exc
    except BackupError:
        raise
    except Exception as exc:  # the driver's errors: connection refused, authentication, …
        raise BackupError(
            f"cannot back up the database {masked_url(url)}: {_driver_error(exc)}"
        ) from exc
    finally:
        await engine.dispose()
    info = DatabaseInfo(
        dialect="postgresql",
        member=PG_MEMBER,
        schema_revision=revision,
        server_version=version,
        tool=tools.version,
        tables=counts,
    )
    return _Snapshot(info, files)


class _Hashing:
    """A file object that hashes what is read through it (tarfile copies from it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(time.time())
    return info


def _add_path(tar: tarfile.TarFile, name: str, path: Path) -> Member:
    size = path.stat().st_size
    with path.open("rb") as f:
        reader = _Hashing(f)
        tar.addfile(_tarinfo(name, size), reader)
    if reader.size != size:
        raise BackupError(f"{path} changed while it was archived")
    return Member(size=size, sha256=reader.digest.hexdigest())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


async def _fetch(store: FileStore, entry: FileEntry, dest: Path) -> None:
    """The stored file into ``dest``, checked against its row's size and SHA-256."""
    try:
        chunks = await store.open(entry.key)
        digest, size = hashlib.sha256(), 0
        with dest.open("wb") as f:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(f.write, chunk)
    except EdgefleetError as exc:
        raise BackupError(
            f"file {entry.key}, referenced by the database, cannot be read from the store: "
            f"{exc.message} (deleted since the database was copied? run the backup again)"
        ) from exc
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise BackupError(
            f"file {entry.key} in the store does not match the database (size {size}, "
            f"expected {entry.size}; sha256 {digest.hexdigest()}, expected {entry.sha256})"
        )


def _check_out(out: Path) -> Path:
    out = out.absolute()
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} is not a directory")
    if out.is_dir():
        raise BackupError(f"{out} is a directory: name the archive file")
    return out


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    manifest: Manifest

    def summary(self) -> dict[str, Any]:
        db = self.manifest.database
        return {
            "archive": str(self.path),
            "bytes": self.size,
            "database": db.dialect,
            "schemaRevision": db.schema_revision,
            "rows": sum(db.tables.values()),
            "files": len(self.manifest.files),
            "fileBytes": sum(f.size for f in self.manifest.files),
            "secretKey": self.manifest.secret_key.source,
        }


def _secret_key(settings: Settings) -> tuple[KeyInfo, Path | None]:
    configured = settings.secret_key.get_secret_value()
    if configured:
        return KeyInfo(source="setting", fingerprint=key_fingerprint(configured.encode())), None
    key = settings.resolved_secret_key()
    return KeyInfo(source="file", fingerprint=key_fingerprint(key)), settings.data_dir / KEY_FILE


async def create_backup(
    settings: Settings,
    out: Path,
    *,
    open_store: StoreFactory,
    new_engine: EngineFactory,
    pg_bin: Path | None = None,
) -> BackupResult:
    """Write one archive of the configured database and file store to ``out`` (replaced
    atomically when complete; nothing is left behind on failure)."""
    out = await asyncio.to_thread(_check_out, out)
    store = open_store()
    url = settings.resolved_database_url
    key_info, key_path = _secret_key(settings)
    with tempfile.TemporaryDirectory(prefix=".edgefleet-backup-", dir=out.parent) as tmp:
        work = Path(tmp)
        if settings.is_sqlite:
            snap = await asyncio.to_thread(_sqlite_snapshot, sqlite_path(url), work / SQLITE_MEMBER)
        else:
            snap = await _pg_snapshot(url, new_engine, work / PG_MEMBER, pg_bin)
        db = snap.database
        log.info(
            "database copied (%s, schema %s, %d rows); copying %d files",
            db.dialect,
            db.schema_revision,
            sum(db.tables.values()),
            len(snap.files),
        )
        partial = work / "archive.partial"
        raw = os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        try:
            with (
                gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL
                ) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                members = {
                    db.member: await asyncio.to_thread(_add_path, tar, db.member, work / db.member)
                }
                (work / db.member).unlink()
                part = work / "file.partial"
                for entry in snap.files:
                    if not is_key(entry.key):
                        raise BackupError(f"the files table names an invalid key {entry.key!r}")
                    await _fetch(store, entry, part)
                    name = FILES_PREFIX + entry.key
                    members[name] = await asyncio.to_thread(_add_path, tar, name, part)
                    part.unlink()
                if key_path is not None:
                    members[KEY_MEMBER] = await asyncio.to_thread(
                        _add_path, tar, KEY_MEMBER, key_path
                    )
                manifest = Manifest(
                    edgefleet_version=__version__,
                    created_at=utcnow().isoformat().replace("+00:00", "Z"),
                    database=db,
                    files=snap.files,
                    secret_key=key_info,
                    members=members,
                ).sealed()
                await asyncio.to_thread(_add_bytes, tar, MANIFEST, manifest.encode())
            raw.flush()
            os.fsync(raw.fileno())
        finally:
            raw.close()
        size = partial.stat().st_size
        os.replace(partial, out)
    log.info("backup written to %s (%d bytes)", out, size)
    return BackupResult(out, size, manifest)


# --- restore ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Extracted:
    manifest: Manifest
    paths: dict[str, Path]


def _member_ok(name: str) -> bool:
    if name in (MANIFEST, SQLITE_MEMBER, PG_MEMBER, KEY_MEMBER):
        return True
    return name.startswith(FILES_PREFIX) and is_key(name[len(FILES_PREFIX) :])


def _extract(archive: Path, work: Path) -> _Extracted:
    """Every member into ``work`` (under names of our own), checked against the manifest."""
    found: dict[str, tuple[Path, Member]] = {}
    damaged = f"{archive} is damaged or not an edgefleet backup"
    try:
        with gzip.open(archive, "rb") as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for info in tar:
                    name = info.name
                    if not info.isreg() or not _member_ok(name):
                        raise BackupError(f"{damaged}: unexpected member {name!r}")
                    if name in found:
                        raise BackupError(f"{damaged}: member {name!r} appears twice")
                    src = tar.extractfile(info)
                    assert src is not None  # a regular file
                    dest = work / f"member-{len(found):06d}"
                    found[name] = (dest, _copy_out(src, dest))
            while gz.read(1 << 20):  # to the end, so that gzip checks its CRC and length
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename == str(archive):
            raise BackupError(f"{archive}: no such file") from exc
        raise BackupError(f"{damaged} ({type(exc).__name__}: {exc})") from exc
    if MANIFEST not in found:
        raise BackupError(f"{damaged}: it has no {MANIFEST}")
    try:
        manifest = Manifest.model_validate_json(found[MANIFEST][0].read_bytes())
    except ValidationError as exc:
        raise BackupError(
            f"{damaged}: its manifest does not parse ({exc.error_count()} errors)"
        ) from exc
    if manifest.format_version > FORMAT_VERSION:
        raise BackupError(
            f"{archive} is of backup format {manifest.format_version}, newer than this "
            f"edgefleet ({__version__}) reads: restore it with a newer edgefleet"
        )
    if manifest.manifest_sha256 != manifest.digest():
        raise BackupError(f"{damaged}: its manifest does not match its own sha256")
    listed = set(manifest.members)
    present = set(found) - {MANIFEST}
    if listed - present:
        raise BackupError(f"{damaged}: missing {', '.join(sorted(listed - present))}")
    if present - listed:
        raise BackupError(f"{damaged}: not in the manifest: {', '.join(sorted(present - listed))}")
    for name, (_, got) in sorted(found.items()):
        want = manifest.members.get(name)
        if want is not None and got != want:
            raise BackupError(
                f"{damaged}: {name} does not match the manifest (sha256 {got.sha256}, "
                f"expected {want.sha256}; {got.size} bytes, expected {want.size})"
            )
    db = manifest.database
    expected = {db.member} | {FILES_PREFIX + f.key for f in manifest.files}
    for f in manifest.files:
        if manifest.members.get(FILES_PREFIX + f.key) != Member(size=f.size, sha256=f.sha256):
            raise BackupError(f"{damaged}: file {f.key} does not match its database row")
    if (listed - {KEY_MEMBER}) != expected or (KEY_MEMBER in listed) != (
        manifest.secret_key.source == "file"
    ):
        raise BackupError(f"{damaged}: its members do not match its manifest")
    return _Extracted(manifest, {name: path for name, (path, _) in found.items()})


def _copy_out(src: IO[bytes], dest: Path) -> Member:
    digest, size = hashlib.sha256(), 0
    try:
        out = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    except OSError as exc:
        raise BackupError(f"cannot extract into {dest.parent}: {exc.strerror}") from exc
    with out:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            try:
                out.write(chunk)
            except OSError as exc:
                raise BackupError(
                    f"cannot extract into {dest.parent}: {exc.strerror} (set TMPDIR to a "
                    "directory with room for the archive's contents)"
                ) from exc
    return Member(size=size, sha256=digest.hexdigest())


def _check_revision(revision: str) -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        known = script.get_revision(revision)
    except CommandError:
        known = None
    if known is None:
        raise BackupError(
            f"the backup's schema revision {revision} is unknown to this edgefleet "
            f"({__version__}, schema {head_revision()}): it was made by a newer edgefleet; "
            "restore it with that version or newer"
        )


@dataclass(frozen=True)
class _KeyPlan:
    install: Path | None
    """The archived key file to put in the data directory, if any."""


def _check_key(manifest: Manifest, settings: Settings, extracted: dict[str, Path]) -> _KeyPlan:
    """Refuse a restore whose secrets (PSKs, the CA key, webhook secrets) would not open."""
    want = manifest.secret_key
    configured = settings.secret_key.get_secret_value()
    if configured:
        if key_fingerprint(configured.encode()) != want.fingerprint:
            raise BackupError(
                "EDGEFLEET_SECRET_KEY is not the key of the backed-up server: the device PSKs, "
                "the CA key and webhook secrets in the backup would not open. Set it to that "
                "server's key"
                + (" or unset it (the backup holds the key file)" if want.source == "file" else "")
            )
        return _KeyPlan(None)
    if want.source == "file":
        return _KeyPlan(extracted[KEY_MEMBER])
    path = settings.data_dir / KEY_FILE
    existing = path.read_text().strip().encode() if path.is_file() else None
    if existing is None or key_fingerprint(existing) != want.fingerprint:
        raise BackupError(
            "the backed-up server's key was set with EDGEFLEET_SECRET_KEY, which a backup "
            "never holds: set EDGEFLEET_SECRET_KEY to that key before restoring"
        )
    return _KeyPlan(None)


def _running_server(settings: Settings) -> str | None:
    """Why we believe an ``edgefleet serve`` uses this SQLite database now, or None."""
    record = settings.data_dir / BROKER_RECORD
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pid = int(json.loads(record.read_text())["server"])
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                alive = True
            except PermissionError:
                alive = True
            except ProcessLookupError:
                alive = False
            if alive:
                return (
                    f"a server (pid {pid}) runs on {settings.data_dir} (its embedded broker's "
                    f"record {record} says so): stop it first (a stale record after a crash "
                    "may be removed by hand)"
                )
    host, port = settings.http.host, settings.http.port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"something listens on {host}:{port}, the server's HTTP port: stop the "
                    "server first (if it is another program, give this command another "
                    "EDGEFLEET_HTTP__PORT)"
                )
    return None


def _describe(counts: dict[str, int]) -> str:
    full = [f"{t}: {n}" for t, n in sorted(counts.items()) if n]
    return ", ".join(full[:6]) + (", …" if len(full) > 6 else "")


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    replaced: bool
    """The target held data that was replaced."""
    migrated_to: str | None
    checked_only: bool

    def summary(self) -> dict[str, Any]:
        db = self.manifest.database
        return {
            "database": db.dialect,
            "backupCreatedAt": self.manifest.created_at,
            "backupSchemaRevision": db.schema_revision,
            "schemaRevision": self.migrated_to,
            "rows": sum(db.tables.values()),
            "files": len(self.manifest.files),
            "replacedData": self.replaced,
            "checkedOnly": self.checked_only,
        }


class _Target:
    """The configured database, as restore sees it: checks, then replacement."""

    def __init__(
        self,
        settings: Settings,
        manifest: Manifest,
        new_engine: EngineFactory,
        pg_bin: Path | None,
    ) -> None:
        self.settings = settings
        self.url = settings.resolved_database_url
        self.new_engine = new_engine
        self.manifest = manifest
        self.pg_bin = pg_bin
        self.pg_tools: PgTools | None = None
        self.extra_tables: list[str] = []

    async def check(self, replace: bool) -> bool:
        """Whether the target holds data; refuses what restore must not do."""
        want = self.manifest.database.dialect
        have = "sqlite" if self.settings.is_sqlite else "postgresql"
        if want != have:
            raise BackupError(
                f"this backup is of a {want} database and the configured one "
                f"({masked_url(self.url)}) is {have}: a backup restores into the same kind"
            )
        counts = await (self._sqlite_check() if have == "sqlite" else self._pg_check())
        has_data = any(counts.values())
        if has_data and not replace:
            raise BackupError(
                f"the database {masked_url(self.url)} already holds data ({_describe(counts)}): "
                "restore replaces all of it; pass --yes to go ahead"
            )
        return has_data

    async def _sqlite_check(self) -> dict[str, int]:
        reason = _running_server(self.settings)
        if reason is not None:
            raise BackupError(f"restore needs the server stopped: {reason}")
        path = sqlite_path(self.url)
        if not path.exists():
            return {}

        def counts() -> dict[str, int]:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                return _sqlite_counts(conn, _sqlite_tables(conn))
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(counts)
        except sqlite3.Error as exc:
            raise BackupError(f"cannot read the database at {path}: {exc}") from exc

    async def _pg_check(self) -> dict[str, int]:
        engine = self.new_engine()
        try:
            async with engine.connect() as conn:
                version_num = int(await conn.scalar(text("SHOW server_version_num")) or 0)
                others = (
                    await conn.execute(
                        text(
                            "SELECT count(*), string_agg(DISTINCT coalesce(nullif("
                            "application_name, ''), client_addr::text, 'local'), ', ') "
                            "FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                        )
                    )
                ).one()
                tables = await _pg_tables(conn)
                counts = await _pg_counts(conn, tables)
        except Exception as exc:  # the driver's errors: connection refused, authentication, …
            raise BackupError(
                f"cannot reach the database {masked_url(self.url)}: {_driver_error(exc)}"
            ) from exc
        finally:
            await engine.dispose()
        if others[0]:
            raise BackupError(
                f"restore needs the servers stopped: {others[0]} other session(s) are connected "
                f"to {masked_url(self.url)} ({others[1]})"
            )
        self.pg_tools = find_pg_tools(version_num, self.pg_bin)
        # tables a newer schema has and the backup has not: dropped, then migrated anew
        self.extra_tables = [
            t for t in tables if t != VERSION_TABLE and t not in self.manifest.database.tables
        ]
        return counts

    async def replace(self, dump: Path) -> None:
        if self.settings.is_sqlite:
            await asyncio.to_thread(_sqlite_restore, dump, sqlite_path(self.url))
        else:
            await self._pg_restore(dump)
        counts = await self._counts()
        want = self.manifest.database.tables
        if {t: counts.get(t) for t in want} != want:
            diff = {t: (n, counts.get(t)) for t, n in want.items() if counts.get(t) != n}
            raise BackupError(
                f"the restored database does not hold what the manifest lists: {diff} "
                "(table: expected, found)"
            )

    async def _pg_restore(self, dump: Path) -> None:
        assert self.pg_tools is not None
        engine = self.new_engine()
        try:
            if self.extra_tables:
                async with engine.begin() as conn:
                    for t in self.extra_tables:
                        await conn.execute(text(f"DROP TABLE IF EXISTS {_quote(conn, t)} CASCADE"))
        finally:
            await engine.dispose()
        database = make_url(self.url).database or ""
        argv = [
            str(self.pg_tools.pg_restore),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-acl",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={database}",
            str(dump),
        ]
        await _run_tool(argv, pg_environment(self.url), make_url(self.url).password)

    async def _counts(self) -> dict[str, int]:
        if self.settings.is_sqlite:
            path = sqlite_path(self.url)

            def counts() -> dict[str, int]:
                conn = sqlite3.connect(path, timeout=30)
                try:
                    return _sqlite_counts(conn, _sqlite_tables(conn))
                finally:
                    conn.close()

            return await asyncio.to_thread(counts)
        engine = self.new_engine()
        try:
            async with engine.connect() as conn:
                return await _pg_counts(conn, await _pg_tables(conn))
        finally:
            await engine.dispose()


def _sqlite_restore(copy: Path, target: Path) -> None:
    """Replace the database's contents through SQLite itself (the backup API, under its write
    lock; a WAL left beside the file is dealt with properly, which copying over it would not)."""
    private_dir(target.parent)
    private_sqlite(target)  # SQLite gives its WAL the file's mode
    src = sqlite3.connect(copy)
    try:
        dst = sqlite3.connect(target, timeout=30)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot write the database at {target}: {exc}") from exc
    finally:
        src.close()


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK_SIZE):
            yield chunk


async def restore_backup(
    settings: Settings,
    archive: Path,
    *,
    replace: bool = False,
    check_only: bool = False,
    open_store: StoreFactory,
    new_engine: EngineFactory,
    pg_bin: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Put an archive back: checks first (nothing changes when one fails), then the files
    into the configured store, the database, the key file, the migrations to head."""
    say = progress or (lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="edgefleet-restore-") as tmp:
        work = Path(tmp)
        say(f"checking {archive}")
        extracted = await asyncio.to_thread(_extract, archive, work)
        manifest = extracted.manifest
        db = manifest.database
        _check_revision(db.schema_revision)
        key_plan = _check_key(manifest, settings, extracted.paths)
        target = _Target(settings, manifest, new_engine, pg_bin)
        has_data = await target.check(replace)
        if check_only:
            return RestoreResult(manifest, has_data, None, True)

        # files first: should the rest fail, the old database still finds its own files
        store = open_store()
        say(f"restoring {len(manifest.files)} files into {_store_name(settings)}")
        for entry in manifest.files:
            stored = await store.put_at(
                entry.key, _chunks(extracted.paths[FILES_PREFIX + entry.key]), entry.content_type
            )
            if (stored.size, stored.sha256) != (entry.size, entry.sha256):
                raise BackupError(f"file {entry.key} changed on its way into the store")

        staged = None
        if key_plan.install is not None:
            private_dir(settings.data_dir)
            staged = settings.data_dir / f".{KEY_FILE}.restore"
            staged.unlink(missing_ok=True)
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_plan.install.read_bytes())

        say(f"restoring the database into {masked_url(settings.resolved_database_url)}")
        await target.replace(extracted.paths[db.member])
        if staged is not None:
            os.replace(staged, settings.data_dir / KEY_FILE)

    say(f"migrating the schema from {db.schema_revision} to {head_revision()}")
    try:
        await upgrade_async(settings.resolved_database_url)
    except Exception as exc:  # Alembic's and the driver's errors alike
        raise BackupError(
            f"the backup was restored, but migrating it from {db.schema_revision} failed: "
            f"{type(exc).__name__}: {exc}; fix the cause and run `edgefleet migrate`"
        ) from exc
    return RestoreResult(manifest, has_data, head_revision(), False)
