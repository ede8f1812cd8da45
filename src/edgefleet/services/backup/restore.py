"""``edgefleet restore``: everything checked before anything changes, then files, database, key."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import hashlib
import json
import os
import socket
import sqlite3
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from edgefleet import __version__
from edgefleet.datadir import private_dir, private_sqlite
from edgefleet.db.migrate import alembic_config, head_revision, upgrade_async
from edgefleet.files import CHUNK_SIZE, is_key
from edgefleet.services.backup.common import (
    BROKER_RECORD,
    FILES_PREFIX,
    FORMAT_VERSION,
    KEY_FILE,
    KEY_MEMBER,
    MANIFEST,
    PG_MEMBER,
    SQLITE_MEMBER,
    VERSION_TABLE,
    BackupError,
    EngineFactory,
    PgTools,
    StoreFactory,
    _driver_error,
    _pg_counts,
    _pg_tables,
    _quote,
    _run_tool,
    _sqlite_counts,
    _sqlite_tables,
    _store_name,
    find_pg_tools,
    masked_url,
    pg_environment,
    sqlite_path,
)
from edgefleet.services.backup.manifest import (
    Manifest,
    Member,
    key_fingerprint,
)
from edgefleet.settings import Settings

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
