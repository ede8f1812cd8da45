"""Alembic, driven from code: the migrations ship inside the package.

Expand, then contract: a release's migrations only add (tables, nullable or defaulted columns,
indexes), so the previous release's code still runs on the new schema, and a rollback (``helm
rollback``, an auto-scaling group's older launch template) works without a downgrade. What
drops or renames waits for the release after the one that stopped using it. Each migration
from 0010 on records, in ``schema_compat``, the oldest code that runs on its schema
(``declare_compatible``): the previous head when it only adds, itself when it contracts. A
server finding a schema newer than its code reads that record (``schema_state``): it runs when
its own head is at or after the recorded one, and refuses with the reason otherwise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from edgefleet.errors import StorageError

MIGRATIONS = Path(__file__).parent / "migrations"
_OUR_TABLE = "devices"
"""Made by the first migration: a database holding it holds edgefleet's schema."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> SchemaState | None:
    """Bring the schema to ``revision``; runs its own event loop, so call it from sync code.

    A schema newer than this code is left as it is when it runs with this code (a rollback's
    ``edgefleet migrate`` is then a no-op), and refused with the reason when it does not."""
    unknown = asyncio.run(_state_of_url(url))
    if unknown.verdict is Verdict.UNRECORDED:
        raise StorageError(unknown.explain())
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        if "Can't locate revision" not in str(exc):
            raise
        state = asyncio.run(_state_of_url(url))
        if state.verdict is not Verdict.AHEAD_COMPATIBLE:
            raise StorageError(state.explain()) from None
        return state
    return None


async def upgrade_async(url: str, revision: str = "head") -> SchemaState | None:
    return await asyncio.to_thread(upgrade, url, revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )


class Verdict(StrEnum):
    CURRENT = "current"
    BEHIND = "behind"
    """Older than this code: migrate."""
    AHEAD_COMPATIBLE = "ahead-compatible"
    """Made by a newer release whose migrations declare this code still runs on it."""
    AHEAD_INCOMPATIBLE = "ahead-incompatible"
    """Made by a newer release that contracted (or does not say): this code must not run."""
    UNRECORDED = "unrecorded"
    """Which schema it is cannot be told: edgefleet's tables with no revision recorded, or
    several revisions recorded (``alembic_version`` emptied or edited by hand): neither run
    nor migrate (the migrations would run again over the tables, or stop half way)."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str | None
    verdict: Verdict
    oldest_code: str | None = None
    """For a newer schema: the oldest code it declares it runs with (None: not said)."""

    def explain(self) -> str:
        have = self.current or "nothing"
        if self.verdict is Verdict.BEHIND:
            return (
                f"database schema is at {have}, this edgefleet needs {self.head}: "
                "run `edgefleet migrate` first"
            )
        if self.verdict is Verdict.AHEAD_COMPATIBLE:
            return (
                f"database schema {have} is newer than this edgefleet ({self.head}) and "
                f"declares it runs with code from {self.oldest_code} on: running on it"
            )
        if self.verdict is Verdict.AHEAD_INCOMPATIBLE:
            needs = f"code from {self.oldest_code} on" if self.oldest_code else "its own code"
            return (
                f"database schema {have} was made by a newer edgefleet and needs {needs}; "
                f"this edgefleet is at {self.head}: run the newer release (or restore a "
                "backup made by this one)"
            )
        if self.verdict is Verdict.UNRECORDED:
            what = (
                f"records several revisions ({have})"
                if self.current
                else "holds edgefleet's tables but records no revision"
            )
            return (
                f"the database {what} in alembic_version, so which schema it has cannot be "
                f"told (this edgefleet is at {self.head}); restore a backup, or record the "
                "schema's one revision in alembic_version"
            )
        return f"database schema is at {have}, as this edgefleet needs"


def judge(current: str | None, oldest_code: str | None) -> SchemaState:
    """The state of a schema at ``current`` (``oldest_code``: what ``schema_compat`` says of
    it, when this code does not know it) for this code."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    if current == head:
        return SchemaState(current, head, Verdict.CURRENT)
    known = {r.revision for r in script.walk_revisions()}
    if current is None or current in known:
        return SchemaState(current, head, Verdict.BEHIND)
    ours = {r.revision for r in script.iterate_revisions(head, "base")}
    verdict = Verdict.AHEAD_COMPATIBLE if oldest_code in ours else Verdict.AHEAD_INCOMPATIBLE
    return SchemaState(current, head, verdict, oldest_code)


def _read_state(conn: Connection) -> SchemaState:
    heads = MigrationContext.configure(conn).get_current_heads()
    if len(heads) > 1:
        return SchemaState(", ".join(heads), head_revision(), Verdict.UNRECORDED)
    current = heads[0] if heads else None
    if current is None and _OUR_TABLE in sa.inspect(conn).get_table_names():
        return SchemaState(None, head_revision(), Verdict.UNRECORDED)
    oldest: str | None = None
    if current is not None and current != head_revision():
        try:
            oldest = conn.execute(
                sa.text("SELECT oldest_code FROM schema_compat WHERE revision = :r"),
                {"r": current},
            ).scalar_one_or_none()
        except sa.exc.DBAPIError:  # no such table: a schema from before 0010
            conn.rollback()
    return judge(current, oldest)


async def schema_state(engine: AsyncEngine) -> SchemaState:
    """Where the database's schema stands for this code."""
    async with engine.connect() as conn:
        return await conn.run_sync(_read_state)


async def _state_of_url(url: str) -> SchemaState:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        return await schema_state(engine)
    finally:
        await engine.dispose()


def declare_compatible(revision: str, *, oldest_code: str) -> None:
    """In a migration's ``upgrade``: the oldest code (a head revision) that runs on the schema
    this migration makes: the previous head when it only adds, ``revision`` when it drops or
    renames what that code uses."""
    op.get_bind().execute(
        sa.text("INSERT INTO schema_compat (revision, oldest_code) VALUES (:r, :o)"),
        {"r": revision, "o": oldest_code},
    )


def forget_compatible(revision: str) -> None:
    """In a migration's ``downgrade``: the record ``declare_compatible`` made."""
    op.get_bind().execute(sa.text("DELETE FROM schema_compat WHERE revision = :r"), {"r": revision})
