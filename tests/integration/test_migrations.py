"""The migrations build exactly the schema the models describe, on both databases, and
downgrade cleanly; servers migrating at once take turns."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import alembic_config, head_revision, upgrade
from edgefleet.db.tables import Base
from tests.pgserver import PostgresServer

EXPRESSION_INDEXES = {"ix_devices_lower_display_name_uuid"}
"""Indexes on an expression, which SQLAlchemy cannot reflect from SQLite: compared by name
there (and fully on PostgreSQL)."""


@pytest.mark.filterwarnings(
    "ignore:Skipped unsupported reflection of expression-based index:sqlalchemy.exc.SAWarning",
    "ignore:autogenerate skipping metadata-specified expression-based index:UserWarning",
)
async def test_models_and_migrations_agree(database: Database) -> None:
    sqlite = database.engine.dialect.name == "sqlite"

    def diff(sync_conn: Any) -> list[Any]:
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))

    async with database.engine.connect() as conn:
        changes = await conn.run_sync(diff)
        if sqlite:
            rows = await conn.exec_driver_sql("select name from sqlite_master where type='index'")
            assert EXPRESSION_INDEXES <= {r[0] for r in rows}
    assert changes == []


def test_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    upgrade(url)
    with sqlite3.connect(tmp_path / "m.db") as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert {"devices", "device_certificates", "pki_authority"} <= tables


async def test_servers_migrating_at_once_take_turns(pg_server: PostgresServer) -> None:
    """Several servers started together (an auto-scaling group's first boot, `serve --migrate`
    on each) all run the migrations on an empty PostgreSQL database: an advisory lock makes
    them take turns, so every one succeeds and the schema is made once. Without it all but one
    failed creating tables that another had just made. (Processes: alembic's context is one
    per process.)"""
    name = f"edgefleet_migrate_{secrets.token_hex(4)}"
    await pg_server.create_database(name)
    url = pg_server.url(name)
    code = "import sys; from edgefleet.db.migrate import upgrade; upgrade(sys.argv[1])"
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, url, stderr=asyncio.subprocess.PIPE
            )
            for _ in range(4)
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 300)
        failures = [
            e.decode()[-2000:] for p, (_, e) in zip(procs, outcomes, strict=True) if p.returncode
        ]
        assert failures == []
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                revision = await conn.run_sync(
                    lambda c: MigrationContext.configure(c).get_current_revision()
                )
            assert revision == head_revision()
        finally:
            await engine.dispose()
    finally:
        await pg_server.drop_database(name)
