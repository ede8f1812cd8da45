"""The migrations build exactly the schema the models describe, on both databases, and
downgrade cleanly."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from edgefleet.db.engine import Database
from edgefleet.db.migrate import alembic_config, upgrade
from edgefleet.db.tables import Base

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
