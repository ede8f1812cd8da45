"""The ``edgefleet`` command line, run as a user would (SQLite in a temporary data dir)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from edgefleet.bootstrap import build
from edgefleet.cli.main import app
from edgefleet.db.tables import Event
from edgefleet.domain.audit import AuditFilter
from edgefleet.settings import Settings
from tests.pgserver import PostgresServer

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("EDGEFLEET_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "data"


def cli(*args: str, input: str | None = None, code: int = 0) -> str:
    r = runner.invoke(app, list(args), input=input)
    assert r.exit_code == code, f"exit {r.exit_code}: {r.output}"
    return r.output


def cli_json(*args: str) -> object:
    return json.loads(cli(*args, "--json"))


def _service(data: Path):  # type: ignore[no-untyped-def]
    return build(Settings(data_dir=data))


def test_users_create_list_and_duplicates(cli_env: Path) -> None:
    created = cli_json("users", "create", "Ops@Example.com", "--role", "operator")
    assert isinstance(created, dict)
    assert created["email"] == "ops@example.com" and len(str(created["oneTimePassword"])) >= 12
    listed = cli_json("users", "list")
    assert isinstance(listed, list)
    assert [(u["email"], u["mustChangePassword"]) for u in listed] == [("ops@example.com", True)]
    assert "oneTimePassword" not in listed[0]
    out = cli("users", "create", "ops@example.com", code=1)
    assert "already exists" in out
    cli(
        "users",
        "set-password",
        "ops@example.com",
        "--password-stdin",
        input="a long enough secret\n",
    )
    listed = cli_json("users", "list")
    assert isinstance(listed, list) and listed[0]["mustChangePassword"] is False
    cli("users", "set-role", "ops@example.com", "viewer")
    listed = cli_json("users", "list")
    assert isinstance(listed, list) and listed[0]["role"] == "viewer"
    out = cli("users", "create", "x@example.com", "--role", "king", code=2)
    assert "king" in out


def test_tokens_create_use_and_revoke(cli_env: Path) -> None:
    cli("users", "create", "admin@example.com", "--admin")
    created = cli_json("tokens", "create", "--user", "admin@example.com", "--scope", "read/write")
    assert isinstance(created, dict)
    secret = str(created["token"])

    async def principal() -> object:
        c = _service(cli_env)
        try:
            return await c.accounts.principal_for_token(secret)
        finally:
            await c.close()

    p = asyncio.run(principal())
    assert p is not None and p.email == "admin@example.com"  # type: ignore[attr-defined]
    cli("tokens", "revoke", str(created["id"]))
    assert asyncio.run(principal()) is None
    listed = cli_json("tokens", "list")
    assert isinstance(listed, list) and listed[0]["revokedAt"] is not None
    assert secret not in json.dumps(listed)


def test_devices_register_list_query_and_delete(cli_env: Path) -> None:
    reg = cli_json(
        "devices", "register", "--mac", "00:90:e8:11:22:33", "--name", "pump", "--tag", "line-3"
    )
    assert isinstance(reg, dict) and len(str(reg["psk"])) == 64
    cli("devices", "register", "--mac", "0090e8112234")
    listed = cli_json("devices", "list", "--query", 'mac = "0090E8112233" and tag:line-3')
    assert isinstance(listed, dict) and [d["uuid"] for d in listed["data"]] == [reg["uuid"]]
    out = cli("devices", "list", "--query", "model >", code=1)
    assert "invalid fleet query" in out
    shown = cli_json("devices", "show", str(reg["uuid"]))
    assert isinstance(shown, dict) and "psk" not in shown
    out = cli("devices", "delete", str(reg["uuid"]), code=2)  # no TTY, no --yes
    assert "--yes" in out
    cli("devices", "delete", str(reg["uuid"]), "--yes")
    listed = cli_json("devices", "list")
    assert isinstance(listed, dict) and listed["count"] == 1
    assert asyncio.run(_device_events(cli_env)) == [
        ("device_registered", reg["uuid"]),
        ("device_registered", listed["data"][0]["uuid"]),
        ("device_deleted", reg["uuid"]),
    ]


async def _device_events(data: Path) -> list[tuple[str, str | None]]:
    """The events the CLI's commands left (each command stores its own)."""
    c = _service(data)
    try:
        async with c.db.session() as s:
            rows = await s.execute(select(Event.type, Event.device_uuid).order_by(Event.id))
            return [(t, u) for t, u in rows]
    finally:
        await c.close()


def test_groups_membership(cli_env: Path) -> None:
    dev = cli_json("devices", "register", "--mac", "0090e8000001")
    assert isinstance(dev, dict)
    group = cli_json("groups", "create", "plant-a")
    assert isinstance(group, dict)
    gid = str(group["id"])
    assert cli_json("groups", "add", gid, str(dev["uuid"])) == [dev["uuid"]]
    assert cli_json("groups", "devices", gid) == [dev["uuid"]]
    listed = cli_json("groups", "list")
    assert isinstance(listed, list) and listed[0]["deviceStatus"]["totalCount"] == 1
    assert cli_json("groups", "remove", gid, str(dev["uuid"])) == []
    cli("groups", "delete", gid)
    assert cli_json("groups", "list") == []


def test_cli_writes_are_audited(cli_env: Path) -> None:
    cli("devices", "register", "--mac", "0090e8000001")
    cli("groups", "create", "g")

    async def entries() -> list[tuple[str, str]]:
        c = _service(cli_env)
        try:
            return [(e.action, e.actor_type) for e in await c.audit.query(AuditFilter(), 10)]
        finally:
            await c.close()

    assert asyncio.run(entries()) == [("groups.create", "cli"), ("devices.create", "cli")]


def test_config_show_masks_secrets(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_SECRET_KEY", "supersecretvalue")
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", "postgresql+asyncpg://u:hunter2pw@db/edgefleet")
    out = cli("config", "show")
    assert "supersecretvalue" not in out and "hunter2pw" not in out
    shown = json.loads(out)
    assert shown["database_url"] == "postgresql+asyncpg://u:********@db/edgefleet"


def test_config_show_masks_secrets_in_query_strings(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "EDGEFLEET_DATABASE_URL",
        "postgresql+asyncpg://u@db/edgefleet?sslmode=require&sslpassword=keyphrase9&sslkey=/k.pem",
    )
    monkeypatch.setenv("EDGEFLEET_MQTT__SERVER_PASSWORD", "brokerpw7")
    out = cli("config", "show")
    assert "keyphrase9" not in out and "brokerpw7" not in out
    shown = json.loads(out)
    assert shown["database_url"] == (
        "postgresql+asyncpg://u@db/edgefleet?sslmode=require&sslpassword=********&sslkey=/k.pem"
    )
    assert shown["mqtt"]["server_password"] == "********"


def test_bad_configuration_is_a_clear_error(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HTTP__PORT", "not-a-port")
    out = cli("config", "show", code=2)
    assert "invalid configuration" in out and "port" in out


def test_migrate_brings_postgresql_to_head_and_serve_refuses_before(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, pg_server: PostgresServer
) -> None:
    name = "edgefleet_migrate_test"
    asyncio.run(pg_server.drop_database(name))
    asyncio.run(pg_server.create_database(name))
    url = pg_server.url(name)
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", url)
    try:
        out = cli("users", "list", code=1)  # not SQLite: no automatic migration
        assert "run `edgefleet migrate` first" in out
        assert "database schema is up to date" in cli("migrate")
        assert cli_json("users", "list") == []
        cli("migrate")  # idempotent
    finally:
        asyncio.run(pg_server.drop_database(name))
