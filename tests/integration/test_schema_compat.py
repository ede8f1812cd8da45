"""Expand, then contract (db/migrate.py): this release's code runs on the next release's
schema when that schema's migration says it only added (a rollback works without a
downgrade), and refuses, saying why, when it contracted. The "next release" is built here:
this package's migrations plus one more, in a script directory of the test's own."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text
from typer.testing import CliRunner

from edgefleet.asgi import create_app
from edgefleet.bootstrap import build, prepare_schema
from edgefleet.cli.main import app as cli
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import (
    MIGRATIONS,
    Verdict,
    alembic_config,
    head_revision,
    schema_state,
    upgrade_async,
)
from edgefleet.domain.auth import Role
from edgefleet.errors import StorageError
from edgefleet.settings import Settings
from tests.conftest import Callers
from tests.pgserver import PostgresServer

HEAD = head_revision()

EXPAND = '''"""next release: adds a column and a table"""
import sqlalchemy as sa
from alembic import op
from edgefleet.db.migrate import declare_compatible, forget_compatible

revision = "0990"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("devices") as b:
        b.add_column(sa.Column("next_release_note", sa.String(64), nullable=True))
    op.create_table("next_release_things", sa.Column("id", sa.Integer, primary_key=True))
    declare_compatible(revision, oldest_code="{head}")


def downgrade():
    forget_compatible(revision)
    op.drop_table("next_release_things")
    with op.batch_alter_table("devices") as b:
        b.drop_column("next_release_note")
'''

CONTRACT = '''"""the release after: drops what the release before it stopped using"""
from alembic import op
from edgefleet.db.migrate import declare_compatible, forget_compatible

revision = "0991"
down_revision = "0990"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_table("next_release_things")
    declare_compatible(revision, oldest_code=revision)


def downgrade():
    forget_compatible(revision)
'''


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of its own, at this code's head."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'compat.db'}"
        await upgrade_async(url)
        yield url
        return
    pg: PostgresServer = request.getfixturevalue("pg_server")
    name = f"edgefleet_compat_{os.getpid()}_{secrets.token_hex(3)}"
    await pg.create_database(name)
    try:
        await upgrade_async(pg.url(name))
        yield pg.url(name)
    finally:
        await pg.drop_database(name)


def _next_release(tmp_path: Path, url: str, *migrations: str) -> None:
    """Migrate ``url`` with this package's migrations and ``migrations`` after them."""
    where = tmp_path / "next-release-migrations"
    if not where.exists():
        shutil.copytree(MIGRATIONS, where, ignore=shutil.ignore_patterns("__pycache__"))
    for i, source in enumerate(migrations):
        (where / "versions" / f"099{i}_next.py").write_text(source.format(head=HEAD))
    cfg = alembic_config(url)
    cfg.set_main_option("script_location", str(where))
    command.upgrade(cfg, "head")


async def next_release(tmp_path: Path, url: str, *migrations: str) -> None:
    await asyncio.to_thread(_next_release, tmp_path, url, *migrations)


def settings_for(tmp_path: Path, url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=url, secret_key="compat-test-key")


def _migrate_cli(url: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli,
        ["migrate"],
        env={"EDGEFLEET_DATABASE_URL": url, "EDGEFLEET_SECRET_KEY": "compat-test-key"},
    )
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


async def migrate_cli(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(_migrate_cli, url)


async def test_every_migration_from_0010_declares_the_code_it_runs_with(url: str) -> None:
    db = Database(make_engine(url))
    try:
        async with db.session() as s:
            found = await s.execute(text("SELECT revision, oldest_code FROM schema_compat"))
            rows: dict[str, str] = {r: o for r, o in found.all()}
    finally:
        await db.dispose()
    script = ScriptDirectory.from_config(alembic_config(url))
    revisions = [r.revision for r in script.walk_revisions()]
    declared = [r for r in revisions if r >= "0010"]
    assert sorted(rows) == sorted(declared)  # a migration that forgot to say is caught here
    for revision, oldest in rows.items():
        assert oldest in revisions and oldest <= revision


async def test_this_code_runs_on_the_next_releases_expanded_schema(
    url: str, tmp_path: Path
) -> None:
    await next_release(tmp_path, url, EXPAND)
    container = build(settings_for(tmp_path, url))
    try:
        state = await schema_state(container.db.engine)
        assert (state.current, state.verdict, state.oldest_code) == (
            "0990",
            Verdict.AHEAD_COMPATIBLE,
            HEAD,
        )
        await prepare_schema(container, migrate=False)  # what `serve --no-migrate` does
        await prepare_schema(container, migrate=True)  # and `serve --migrate`: a no-op
        callers = Callers(container)
        admin = await callers.user(Role.ADMIN)
        transport = httpx.ASGITransport(app=create_app(container))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            h = admin.headers
            made = await c.post(
                "/api/v1/devices", headers=h, json={"displayName": "gw-1", "mac": "0090E8000001"}
            )
            assert made.status_code == 200, made.text
            listed = await c.get("/api/v1/devices", headers=h)
            assert listed.status_code == 200
            assert [d["displayName"] for d in listed.json()["data"]] == ["gw-1"]
        async with container.db.session() as s:  # the next release's column is untouched
            note = await s.execute(text("SELECT next_release_note FROM devices"))
            assert note.scalars().all() == [None]
    finally:
        await container.close()
    code, out = await migrate_cli(url)  # a rollback's migration job: nothing to do, and says so
    assert code == 0, out
    assert "declares it runs with code from" in out


async def test_this_code_refuses_a_schema_that_contracted_past_it(url: str, tmp_path: Path) -> None:
    await next_release(tmp_path, url, EXPAND, CONTRACT)
    container = build(settings_for(tmp_path, url))
    try:
        for migrate in (False, True):
            with pytest.raises(StorageError, match="needs code from 0991 on; this edgefleet is"):
                await prepare_schema(container, migrate=migrate)
    finally:
        await container.close()
    code, out = await migrate_cli(url)
    assert code == 2
    assert "made by a newer edgefleet" in out


@pytest.mark.parametrize(
    "edit",
    [
        "INSERT INTO alembic_version (version_num) VALUES ('ffff0000')",  # two revisions
        "DELETE FROM alembic_version",  # the tables, no revision
    ],
)
async def test_a_schema_whose_revision_cannot_be_told_is_refused_saying_so(
    url: str, tmp_path: Path, edit: str
) -> None:
    """alembic_version edited by hand (or a half-restored dump): `migrate` would run the first
    migration again over the tables (or stop on Alembic's own error), `serve --no-migrate`
    would stop on it; both refuse, saying what the record holds."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(edit))
        assert (await schema_state(engine)).verdict is Verdict.UNRECORDED
    finally:
        await engine.dispose()
    container = build(settings_for(tmp_path, url))
    try:
        for migrate in (False, True):
            with pytest.raises(StorageError, match="so which schema it has cannot be told"):
                await prepare_schema(container, migrate=migrate)
    finally:
        await container.close()
    code, out = await migrate_cli(url)
    assert code == 2, out
    assert "alembic_version, so which schema it has cannot be told" in out
