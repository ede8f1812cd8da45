"""``edgefleet backup``: one snapshot of the database, then the files it references."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import os
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from edgefleet import __version__
from edgefleet.clock import utcnow
from edgefleet.errors import EdgefleetError, StorageError
from edgefleet.files import FileStore, is_key
from edgefleet.services.backup.common import (
    _REVISION_QUERY,
    COMPRESS_LEVEL,
    FILES_PREFIX,
    KEY_FILE,
    KEY_MEMBER,
    MANIFEST,
    PG_MEMBER,
    SQLITE_MEMBER,
    VERSION_TABLE,
    BackupError,
    EngineFactory,
    StoreFactory,
    _driver_error,
    _pg_counts,
    _pg_tables,
    _revision,
    _run_tool,
    _sqlite_counts,
    _sqlite_tables,
    find_pg_tools,
    masked_url,
    pg_environment,
    sqlite_path,
)
from edgefleet.services.backup.manifest import (
    DatabaseInfo,
    FileEntry,
    KeyInfo,
    Manifest,
    Member,
    key_fingerprint,
)
from edgefleet.settings import Settings

log = logging.getLogger(__name__)

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
