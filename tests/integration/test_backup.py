"""``edgefleet backup`` / ``restore`` on both databases and both file stores: a populated
server is backed up, restored into a fresh database and a fresh store of the *other* kind
(local → S3, S3 → local), and everything is equal; a damaged or tampered archive, or a
database that holds data, is refused and nothing changes."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import secrets
import sqlite3
import tarfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from edgefleet.bootstrap import Container, backup_engine, backup_store, build
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import current_revision, head_revision, upgrade_async
from edgefleet.db.tables import Base, Notification
from edgefleet.domain.auth import Role, Scope
from edgefleet.domain.events import EventType, NewEvent, Severity
from edgefleet.domain.tasks import TaskKind
from edgefleet.files import FileStore
from edgefleet.services import backup
from edgefleet.services.backup import (
    BackupError,
    BackupResult,
    RestoreResult,
    find_pg_tools,
    pg_environment,
)
from edgefleet.services.files import FileKind
from edgefleet.services.fleet import Registration
from edgefleet.services.tasks import TaskSpec
from edgefleet.settings import HTTPSettings, Settings, StorageSettings
from tests.brokers import free_port
from tests.conftest import Callers
from tests.filestores import FileBackend
from tests.integration.test_upgrade import PREVIOUS, insert_row, old_schema_rows
from tests.pgserver import PostgresServer
from tests.s3server import REGION, S3Server


async def create_backup(settings: Settings, out: Path, **kw: Any) -> BackupResult:
    """``services/backup.py`` wired as ``edgefleet backup`` wires it (bootstrap.py)."""
    return await backup.create_backup(
        settings,
        out,
        open_store=lambda: backup_store(settings),
        new_engine=backup_engine(settings),
        **kw,
    )


async def restore_backup(settings: Settings, archive: Path, **kw: Any) -> RestoreResult:
    """``services/backup.py`` wired as ``edgefleet restore`` wires it (bootstrap.py)."""
    return await backup.restore_backup(
        settings,
        archive,
        open_store=lambda: backup_store(settings),
        new_engine=backup_engine(settings),
        **kw,
    )


# --- a populated server ---------------------------------------------------------------------


@dataclass
class Populated:
    psks: dict[str, str] = field(default_factory=dict)
    token: str = ""
    login: tuple[str, str] = ("", "")
    files: dict[str, bytes] = field(default_factory=dict)
    webhook_secret: str = ""
    ca_pem: str = ""


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 50_000):
        yield data[i : i + 50_000]


async def populate(c: Container) -> Populated:
    """Users, a session, a token, devices with PSKs and tags, a group, a task with its
    executions, events and an alarm, files of each kind, firmware, the CA, a webhook."""
    p = Populated()
    callers = Callers(c)
    admin = await callers.user(Role.ADMIN)
    p.login = (admin.email, admin.password)
    p.token = (await callers.token(Role.OPERATOR, Scope.READ_WRITE)).headers["mx-api-token"]
    made = await c.fleet.register_many(
        [
            Registration(
                display_name=f"gw-{i}",
                mac=f"0090e8{i + 0x100:06x}",
                serial_number=f"SN{i}",
                tags=("plant-a", f"line-{i}"),
                attributes={"site": "Lyon", "n": i},
            )
            for i in range(4)
        ]
    )
    p.psks = {view.device.uuid: psk for view, psk in made}
    uuids = list(p.psks)
    gid = (await c.fleet.create_group("plant-a", "the first plant")).group.id
    await c.fleet.add_to_group(gid, uuids[:3])
    task = await c.tasks.create(
        TaskSpec(kind=TaskKind.GROUP, method="post", resource="/system/reboot", group_id=gid)
    )
    assert sum(task.counts.values()) == 3
    now = datetime.now(UTC)
    for i, uuid in enumerate(uuids):
        await c.events.submit(NewEvent(EventType.DEVICE_ONLINE, now, uuid, text=f"up {i}"))
    await c.events.submit(
        NewEvent(
            EventType.GATEWAY_EVENT,
            now,
            uuids[0],
            "/system/disk",
            "disk almost full",
            {"free": 3},
            Severity.MAJOR,
        )
    )
    await c.events.flush()
    for name, kind, size in (
        ("notes.txt", FileKind.FILEBIN, 1_000),
        ("config.ini", FileKind.ATTACHMENT, 70_000),
        ("image-1.2.3.bin", FileKind.FIRMWARE, 300_000),
    ):
        data = secrets.token_bytes(size)
        stored = await c.files.save(_chunks(data), name, "application/x-test", kind=kind)
        p.files[stored.key] = data
        if kind is FileKind.FIRMWARE:
            await c.firmware.add_firmware(stored, version="1.2.3", models=["UC-8112-LX"])
    p.ca_pem = (await c.pki.authority()).cert_pem
    p.webhook_secret = secrets.token_hex(16)
    async with c.db.session() as s:
        s.add(
            Notification(
                uuid=secrets.token_hex(8),
                event_type="device_online",
                protocol="https",
                endpoint="https://hooks.example/x",
                status="confirmed",
                secret_sealed=c.fleet.box.seal(p.webhook_secret),
                created_at=now,
                updated_at=now,
            )
        )
    return p


async def rows(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order."""
    out = {}
    async with db.session() as s:
        for table in Base.metadata.sorted_tables:
            order = list(table.primary_key.columns)
            out[table.name] = [tuple(r) for r in await s.execute(select(table).order_by(*order))]
    return out


async def stored_objects(settings: Settings, s3: S3Server | None) -> list[str]:
    url = settings.storage.url
    if url.startswith("s3://"):
        assert s3 is not None
        return sorted(s3.objects(url[5:].split("/", 1)[0]))
    root = settings.files_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def read_all(store: FileStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in await store.open(key)])


# --- a fresh target: database of the same kind, store of the other kind ----------------------


@dataclass
class Target:
    settings: Settings
    s3: S3Server | None


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Container]:
    """A container on the target, closed afterwards (restore wants no session left open)."""
    c = build(settings)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def source(settings: Settings, database: Database, file_backend: FileBackend) -> Container:
    return build(settings, db=database)


@pytest.fixture
async def target(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    settings: Settings,
    file_backend: FileBackend,
) -> AsyncIterator[Target]:
    data_dir = tmp_path / "restored"
    pg: PostgresServer | None = None
    name = ""
    if settings.is_sqlite:
        url = ""  # the default: edgefleet.db in the data directory
    else:
        pg = request.getfixturevalue("pg_server")
        name = f"edgefleet_restore_{os.getpid()}_{secrets.token_hex(3)}"
        await pg.create_database(name)
        url = pg.url(name)
    s3: S3Server = request.getfixturevalue("s3_server")
    if file_backend.name == "local":  # restore into S3
        storage = StorageSettings(
            url=f"s3://{s3.new_bucket()}/restored", s3_endpoint_url=s3.endpoint, s3_region=REGION
        )
    else:  # restore into a directory
        storage = StorageSettings(url=f"file://{tmp_path / 'restored-files'}")
    target_settings = Settings(
        data_dir=data_dir,
        database_url=url,
        secret_key=settings.secret_key,
        storage=storage,
        http=HTTPSettings(port=free_port()),
    )
    try:
        yield Target(target_settings, s3)
    finally:
        if pg is not None:
            await pg.drop_database(name)


def flip_byte(archive: Path, out: Path) -> None:
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))


def repack(archive: Path, out: Path, change: Callable[[str, bytes], bytes]) -> None:
    """The archive again, with members' bytes changed by ``change(name, data)`` (a valid
    gzip and tar: only the manifest's digests can tell)."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for info in src:
            f = src.extractfile(info)
            assert f is not None
            data = change(info.name, f.read())
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {i.name: tar.extractfile(i).read() for i in tar}  # type: ignore[union-attr]


# --- the round trip ---------------------------------------------------------------------------


async def test_backup_and_restore_into_a_fresh_database_and_the_other_store(
    source: Container, target: Target, tmp_path: Path
) -> None:
    p = await populate(source)
    before = await rows(source.db)
    assert all(before[t] for t in ("users", "devices", "executions", "events", "firmware"))
    archive = tmp_path / "backups" / "b.tar.gz"
    archive.parent.mkdir()

    result = await create_backup(source.settings, archive)

    assert archive.stat().st_mode & 0o777 == 0o600
    assert list(archive.parent.iterdir()) == [archive]  # no temporary left behind
    m = result.manifest
    assert m.database.schema_revision == head_revision()
    assert m.database.tables["devices"] == 4 and m.database.tables["files"] == 3
    assert {f.key for f in m.files} == set(p.files)
    inside = members(archive)
    assert set(inside) == {m.database.member, "manifest.json"} | {f"files/{k}" for k in p.files}
    for key, data in p.files.items():
        assert inside[f"files/{key}"] == data
        assert m.members[f"files/{key}"].sha256 == hashlib.sha256(data).hexdigest()
    assert json.loads(inside["manifest.json"])["secret_key"]["source"] == "setting"
    if source.settings.is_sqlite:  # the copy is a plain SQLite file holding every row
        with sqlite3.connect(":memory:") as mem:
            mem.deserialize(inside["database.sqlite3"])
            assert mem.execute("select count(*) from devices").fetchone() == (4,)
    else:
        assert inside["database.pgdump"][:5] == b"PGDMP"  # pg_dump's custom format

    settings = target.settings
    restored = await restore_backup(settings, archive)
    assert restored.replaced is False and restored.migrated_to == head_revision()

    async with opened(settings) as t:
        assert await rows(t.db) == before
        for uuid, psk in p.psks.items():  # the PSKs open with the same key
            assert await t.fleet.device_psk(uuid) == psk
        principal = await t.accounts.principal_for_token(p.token)
        assert principal is not None and principal.scope is Scope.READ_WRITE
        assert (await t.accounts.login(*p.login)).secret
        assert (await t.pki.authority()).cert_pem == p.ca_pem  # its sealed key opens
        async with t.db.session() as s:
            sealed = await s.scalar(select(Notification.secret_sealed))
        assert sealed is not None and t.fleet.box.open(sealed) == p.webhook_secret
        for key, data in p.files.items():  # in the other kind of store, byte for byte
            got = await read_all(t.files.store, key)
            assert (
                got == data and hashlib.sha256(got).hexdigest() == (await t.files.get(key)).sha256
            )
        assert type(t.files.store) is not type(source.files.store)
        # ids keep growing after a restore (sequences and SQLite's autoincrement came along)
        await t.events.submit(NewEvent(EventType.DEVICE_OFFLINE, datetime.now(UTC), None))
        await t.events.flush()
        ids = [r[0] for r in (await rows(t.db))["events"]]
        assert ids[-1] > max(r[0] for r in before["events"])
        await t.accounts.create_user("marker@example.com", "a long enough secret", Role.VIEWER)
        changed = await rows(t.db)
    objects = await stored_objects(settings, target.s3)
    assert len(objects) == 3

    # a database with data is replaced only when asked
    with pytest.raises(BackupError, match=r"already holds data .*pass --yes"):
        await restore_backup(settings, archive)

    # damaged or tampered archives are refused before anything changes
    flipped = tmp_path / "flipped.tar.gz"
    flip_byte(archive, flipped)
    with pytest.raises(BackupError, match="damaged or not an edgefleet backup"):
        await restore_backup(settings, flipped, replace=True)
    some_key = next(iter(p.files))

    def tamper_file(name: str, data: bytes) -> bytes:
        return data[:10] + bytes([data[10] ^ 0xFF]) + data[11:] if name.endswith(some_key) else data

    tampered = tmp_path / "tampered.tar.gz"
    repack(archive, tampered, tamper_file)
    with pytest.raises(BackupError, match=f"files/{some_key} does not match the manifest"):
        await restore_backup(settings, tampered, replace=True)

    def tamper_manifest(name: str, data: bytes) -> bytes:
        return data.replace(b'"devices": 4', b'"devices": 5') if name == "manifest.json" else data

    repack(archive, tampered, tamper_manifest)
    with pytest.raises(BackupError, match="manifest does not match its own sha256"):
        await restore_backup(settings, tampered, replace=True)

    def tamper_db(name: str, data: bytes) -> bytes:
        return data + b"\0" if name.startswith("database.") else data

    repack(archive, tampered, tamper_db)
    with pytest.raises(BackupError, match=r"database\.\w+ does not match the manifest"):
        await restore_backup(settings, tampered, replace=True)
    async with opened(settings) as t:
        assert await rows(t.db) == changed
    assert await stored_objects(settings, target.s3) == objects

    # --check changes nothing; --yes replaces the data (the marker user is gone)
    checked = await restore_backup(settings, archive, check_only=True, replace=True)
    assert checked.checked_only and checked.replaced
    again = await restore_backup(settings, archive, replace=True)
    assert again.replaced
    async with opened(settings) as t:
        assert await rows(t.db) == before


async def test_a_referenced_file_missing_from_the_store_fails_the_backup(
    source: Container, tmp_path: Path
) -> None:
    stored = await source.files.save(_chunks(b"x" * 1000), "gone.txt")
    await source.files.store.delete(stored.key)  # as if deleted after the database snapshot
    out = tmp_path / "backups" / "b.tar.gz"
    out.parent.mkdir()
    with pytest.raises(BackupError, match=f"file {stored.key}, referenced by the database"):
        await create_backup(source.settings, out)
    assert os.listdir(out.parent) == []  # no archive, no temporary left behind


# --- a backup of an older schema ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def two_urls(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[str]]:
    """Two empty databases of their own, of one kind."""
    if request.param == "sqlite":
        yield [f"sqlite+aiosqlite:///{tmp_path / n / 'edgefleet.db'}" for n in ("a", "b")]
        return
    pg: PostgresServer = request.getfixturevalue("pg_server")
    names = [f"edgefleet_old_{os.getpid()}_{secrets.token_hex(3)}" for _ in range(2)]
    for name in names:
        await pg.create_database(name)
    try:
        yield [pg.url(name) for name in names]
    finally:
        for name in names:
            await pg.drop_database(name)


async def test_a_backup_of_the_previous_schema_is_restored_over_a_newer_one_and_migrated(
    two_urls: list[str], tmp_path: Path
) -> None:
    """Made at 0004, restored (--yes) over a database at head that holds data: the newer
    tables the backup does not know are replaced too, and the result is migrated to head."""
    old, new = two_urls
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    await upgrade_async(old, PREVIOUS)
    rows_0004 = [(t, r) for t, r in old_schema_rows() if t not in ("files", "firmware")]
    engine = make_engine(old)
    async with engine.begin() as conn:
        for table, row in rows_0004:
            await insert_row(conn, table, row)
    await engine.dispose()
    key = "upgrade-test-key"  # the key old_schema_rows sealed the PSKs with
    src = Settings(data_dir=tmp_path / "a", database_url=old, secret_key=key)
    archive = tmp_path / "old.tar.gz"
    made = await create_backup(src, archive)
    assert made.manifest.database.schema_revision == PREVIOUS
    assert "events" not in made.manifest.database.tables

    dst = Settings(
        data_dir=tmp_path / "b",
        database_url=new,
        secret_key=key,
        http=HTTPSettings(port=free_port()),
    )
    await upgrade_async(new)
    async with opened(dst) as t:
        await t.accounts.create_user("someone@example.com", "a long enough secret", Role.VIEWER)
        await t.events.submit(NewEvent(EventType.DEVICE_OFFLINE, datetime.now(UTC), None))
        await t.events.flush()
    with pytest.raises(BackupError, match="already holds data"):
        await restore_backup(dst, archive)
    result = await restore_backup(dst, archive, replace=True)
    assert result.migrated_to == head_revision()
    async with opened(dst) as t:
        assert await current_revision(t.db.engine) == head_revision()
        users = [u.email for u in await t.accounts.list_users()]
        assert sorted(users) == ["admin@example.com", "ops@example.com"]
        got = await rows(t.db)
        assert got["events"] == [] and len(got["executions"]) == 2
        for uuid in [r[0] for r in got["devices"]]:
            assert len(await t.fleet.device_psk(uuid)) == 64
        await t.events.submit(NewEvent(EventType.DEVICE_ONLINE, datetime.now(UTC), None))
        await t.events.flush()
        assert len((await rows(t.db))["events"]) == 1


# --- the server key ---------------------------------------------------------------------------


async def test_the_key_file_travels_with_the_backup_and_a_wrong_key_is_refused(
    tmp_path: Path,
) -> None:
    """With no EDGEFLEET_SECRET_KEY the key is a file in the data dir: the archive holds it,
    and restore installs it; a configured key that is not the backed-up one is refused."""
    src = Settings(data_dir=tmp_path / "a", http=HTTPSettings(port=free_port()))
    async with opened(src) as c:
        from edgefleet.db.migrate import upgrade_async

        await upgrade_async(src.resolved_database_url)
        (view, psk), *_ = await c.fleet.register_many([Registration("gw", "0090e8000001")])
    archive = tmp_path / "b.tar.gz"
    result = await create_backup(src, archive)
    assert result.manifest.secret_key.source == "file" and "secret.key" in members(archive)

    wrong = Settings(
        data_dir=tmp_path / "b", secret_key="another key", http=HTTPSettings(port=free_port())
    )
    with pytest.raises(BackupError, match="EDGEFLEET_SECRET_KEY is not the key"):
        await restore_backup(wrong, archive)
    assert not (tmp_path / "b" / "edgefleet.db").exists()

    dst = Settings(data_dir=tmp_path / "c", http=HTTPSettings(port=free_port()))
    await restore_backup(dst, archive)
    assert (dst.data_dir / "secret.key").read_bytes() == (src.data_dir / "secret.key").read_bytes()
    assert (dst.data_dir / "secret.key").stat().st_mode & 0o777 == 0o600
    async with opened(dst) as c:
        assert await c.fleet.device_psk(view.device.uuid) == psk

    # a backup of a server whose key was a setting needs that same setting to restore
    keyed = Settings(
        data_dir=tmp_path / "c", secret_key="k" * 40, http=HTTPSettings(port=free_port())
    )
    archive2 = tmp_path / "b2.tar.gz"
    await create_backup(keyed, archive2)
    fresh = Settings(data_dir=tmp_path / "d", http=HTTPSettings(port=free_port()))
    with pytest.raises(BackupError, match="set EDGEFLEET_SECRET_KEY to that key"):
        await restore_backup(fresh, archive2)


# --- refusals before anything changes ---------------------------------------------------------


async def test_restore_refuses_a_running_server_another_database_kind_and_a_newer_schema(
    tmp_path: Path, settings: Settings, database: Database
) -> None:
    archive = tmp_path / "b.tar.gz"
    await create_backup(settings, archive)
    dst = Settings(
        data_dir=tmp_path / "dst",
        secret_key=settings.secret_key,
        http=HTTPSettings(port=free_port()),
    )
    if not settings.is_sqlite:
        with pytest.raises(BackupError, match=r"backup is of a postgresql database .* is sqlite"):
            await restore_backup(dst, archive)
        return
    # a server runs on the data directory: its embedded broker's record names it
    dst.data_dir.mkdir()
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        (dst.data_dir / "embedded-mosquitto.json").write_text(
            json.dumps({"pid": sleeper.pid, "conf": "/nonexistent", "server": sleeper.pid})
        )
        with pytest.raises(BackupError, match=f"a server \\(pid {sleeper.pid}\\) runs"):
            await restore_backup(dst, archive)
    finally:
        sleeper.kill()
        await sleeper.wait()
    (dst.data_dir / "embedded-mosquitto.json").unlink()
    # …or something listens on its HTTP port
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        dst.http.port = busy.getsockname()[1]
        with pytest.raises(BackupError, match=r"something listens on 127\.0\.0\.1"):
            await restore_backup(dst, archive)
    dst.http.port = free_port()
    # a schema revision this edgefleet does not know (made by a newer one)
    newer = tmp_path / "newer.tar.gz"

    def bump(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        from edgefleet.services.backup import Manifest

        m = Manifest.model_validate_json(data)
        db = m.database.model_copy(update={"schema_revision": "9999"})
        return m.model_copy(update={"database": db}).sealed().encode()

    repack(archive, newer, bump)
    with pytest.raises(BackupError, match="schema revision 9999 is unknown to this edgefleet"):
        await restore_backup(dst, newer)
    assert not (dst.data_dir / "edgefleet.db").exists()
    await restore_backup(dst, archive)  # and with none of that, it goes


# --- PostgreSQL's tools -------------------------------------------------------------------------


def test_pg_tools_of_the_server_version_or_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="version 99: pg_dump and pg_restore of version 99"):
        find_pg_tools(990001)
    with pytest.raises(BackupError, match="--pg-bin"):
        find_pg_tools(150000, tmp_path)


def test_the_password_goes_by_environment_only() -> None:
    env = pg_environment("postgresql+asyncpg://ef:s3cr%40t@db.example:6432/fleet?sslmode=require")
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGDATABASE"]) == (
        "db.example",
        "6432",
        "ef",
        "fleet",
    )
    assert env["PGPASSWORD"] == "s3cr@t" and env["PGSSLMODE"] == "require"


# --- the command line ---------------------------------------------------------------------------


def test_cli_backup_and_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from edgefleet.cli.main import app

    for key in list(os.environ):
        if key.startswith("EDGEFLEET_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("EDGEFLEET_HTTP__PORT", str(free_port()))
    runner = CliRunner()
    r = runner.invoke(app, ["users", "create", "ops@example.com", "--role", "operator"])
    assert r.exit_code == 0, r.output
    archive = tmp_path / "b.tar.gz"
    r = runner.invoke(app, ["backup", "--out", str(archive)])
    assert r.exit_code == 0, r.output
    assert "backup written to" in r.output and "holds the server key file" in r.output
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "b"))
    r = runner.invoke(app, ["restore", str(archive), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["files"] == 0
    r = runner.invoke(app, ["restore", str(archive)])
    assert r.exit_code == 1 and "pass --yes" in r.output
    r = runner.invoke(app, ["restore", str(archive), "--yes"])
    assert r.exit_code == 0 and "Start the server again" in r.output, r.output
    r = runner.invoke(app, ["users", "list", "--json"])
    assert [u["email"] for u in json.loads(r.output)] == ["ops@example.com"]
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(b"not a tar at all"))
    r = runner.invoke(app, ["restore", str(broken), "--yes"])
    assert r.exit_code == 1 and "damaged or not an edgefleet backup" in r.output
