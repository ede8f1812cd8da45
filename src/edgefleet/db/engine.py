"""The database handle: one async engine, transactions, and schema checks.

SQLite gets WAL and a busy timeout so the web, task and event roles can share a file;
PostgreSQL gets a pool. Driver errors leave this layer as ``StorageError``. JSON columns are
read through ``load_json``, so a document stored before the input rules of
``domain/limits.py`` existed can still be shown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import NullPool

from edgefleet.domain.limits import CUT, SHOWN_JSON_DEPTH, prune
from edgefleet.errors import NotFoundError, StorageError

log = logging.getLogger(__name__)


def _no_constant(_: str) -> None:
    return None


def load_json(text: str) -> Any:
    """A stored JSON document as the API can always answer it: NaN and Infinity (SQLite
    keeps what Python's encoder wrote) read as null, and objects or arrays nested deeper than
    ``SHOWN_JSON_DEPTH`` cut there (a response encoder gives up past ~250 levels)."""
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        return CUT
    if text.count("{") + text.count("[") <= SHOWN_JSON_DEPTH:  # cannot nest deeper: skip the walk
        return doc
    return prune(doc)


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    # hide_parameters: a failing statement's message (logged with its traceback) would carry
    # its bound values: password hashes, gateways' and users' input
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            echo=echo,
            hide_parameters=True,
            connect_args={"timeout": 30},
            json_deserializer=load_json,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pool_pre_ping: it doubles the cost of every transaction. A connection the server
    # dropped fails once, is invalidated by SQLAlchemy, and the caller gets StorageError (503).
    return create_async_engine(
        url,
        echo=echo,
        hide_parameters=True,
        pool_size=10,
        max_overflow=20,
        pool_recycle=1800,
        json_deserializer=load_json,
    )


def unpooled_engine(url: str) -> AsyncEngine:
    """An engine that opens a connection per use and keeps none (no pool left holding
    sessions on the database): for one-off tools such as backup and restore."""
    return create_async_engine(url, poolclass=NullPool)


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for another database or an in-memory one."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    database = u.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _stale_table(exc: StaleDataError) -> str:
    """What the stale row was, from SQLAlchemy's message ("UPDATE statement on table 'groups'
    expected to update 1 row(s); 0 were matched.")."""
    words = str(exc).split("'")
    return f"the {words[1]} row" if len(words) >= 3 else "the row"


def _unavailable(exc: Exception) -> StorageError | None:
    """A lost or refused connection as ``StorageError``; None for any other database error,
    which goes on as it is (a bug, or a constraint the caller maps)."""
    if (
        isinstance(exc, DBAPIError)
        and not exc.connection_invalidated
        and not isinstance(exc, OperationalError)
    ):
        return None
    return StorageError(f"database unavailable: {exc.__class__.__name__}")


class Database:
    """Opens transactions; repositories work inside the ``AsyncSession`` it yields."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed when the block ends, rolled back on error.

        A row read here and deleted by another transaction before this one changes it (two
        clients racing on one id) leaves the change nothing to update: ``NotFoundError``."""
        try:
            async with self._sessions.begin() as session:
                yield session
        except StaleDataError as exc:
            raise NotFoundError(
                f"{_stale_table(exc)} was deleted by another request meanwhile"
            ) from exc
        except (OperationalError, DBAPIError, OSError) as exc:
            if (unavailable := _unavailable(exc)) is None:
                raise
            raise unavailable from exc

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection without a transaction: each statement commits by itself, in one round
        trip (a session's BEGIN and COMMIT are two more). For one statement whose effect
        stands alone: an append (an audit entry), a read of one value."""
        try:
            async with self.engine.connect() as conn:
                yield await conn.execution_options(isolation_level="AUTOCOMMIT")
        except (OperationalError, DBAPIError, OSError) as exc:
            if (unavailable := _unavailable(exc)) is None:
                raise
            raise unavailable from exc

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # readiness reports any failure as "not ready"
            log.warning("database ping failed", exc_info=True)
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()
