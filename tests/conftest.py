"""Shared fixtures: real databases (SQLite file and PostgreSQL), the app, and callers.

PostgreSQL is found or started, never mocked: ``EDGEFLEET_TEST_PG`` (an admin DSN such as
``postgresql://postgres@127.0.0.1:5432/postgres``), else a server on 127.0.0.1:5432, else a
throw-away cluster this session starts from the installed binaries on a port of its own.
With none of these, tests that need it fail and say what to install.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import secrets
import socket
import sys
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import text

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade_async
from edgefleet.db.tables import Base
from edgefleet.domain.auth import Role, Scope
from edgefleet.services import passwords
from edgefleet.settings import HTTPSettings, MQTTSettings, Settings
from edgefleet.workers import Workers
from tests.answers import checked_client
from tests.brokers import free_port
from tests.filestores import FileBackend, StoreEnv, serve
from tests.gateways import Events
from tests.httpserver import bound_socket
from tests.pgserver import PostgresServer, find_postgres
from tests.s3server import CREDENTIALS, S3Server, start_s3_server

BACKENDS = ["sqlite", "postgresql"]

TEST_ARGON2 = (1, 1024, 1)
"""argon2id's time cost, memory (KiB) and parallelism in tests: about 1 ms of CPU per hash
instead of 0.2 s. Each container built hashes once (the dummy hash of unknown accounts),
each user made hashes and checks once more, and the tests make thousands. The hashes are
still argon2id, checked the same way; a test marked ``production_password_cost`` (and every
server run in a process of its own) keeps the production cost."""


@pytest.fixture(autouse=True)
def _test_password_cost(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("production_password_cost") is None:
        time_cost, memory_cost, parallelism = TEST_ARGON2
        cheap = functools.partial(Argon2Hasher, time_cost, memory_cost, parallelism)
        monkeypatch.setattr(passwords, "Argon2Hasher", cheap)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in a subprocess, with boto3's credential chain pointed at dummy keys."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in CREDENTIALS.items():
            mp.setenv(name, value)
        server = start_s3_server(tmp_path_factory.mktemp("s3"))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = find_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.stop()


async def _open_database(
    backend: str, request: pytest.FixtureRequest, tmp: Path
) -> tuple[Database, str, object]:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'test.db'}"
        await upgrade_async(url)
        return Database(make_engine(url)), url, None
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = f"edgefleet_test_{os.getpid()}_{secrets.token_hex(3)}"
    await server.create_database(name)
    url = server.url(name)
    await upgrade_async(url)
    return Database(make_engine(url)), url, name


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "production_password_cost: argon2 at its production cost, not TEST_ARGON2"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``postgresql_only`` runs on PostgreSQL alone: its SQLite variant is
    deselected at collection (and counted as deselected), never skipped at run time."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        sqlite = callspec is not None and callspec.params.get("_session_database") == "sqlite"
        (drop if sqlite and item.get_closest_marker("postgresql_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=BACKENDS)
async def _session_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Database, str]]:
    backend = request.param
    db, url, pg_name = await _open_database(backend, request, tmp_path_factory.mktemp(backend))
    try:
        yield db, url
    finally:
        await db.dispose()
        if pg_name is not None:
            server: PostgresServer = request.getfixturevalue("pg_server")
            await server.drop_database(str(pg_name))


async def _empty(db: Database) -> None:
    # A connection a cancelled task left checked out (the previous test's server stopped in
    # the middle of a transaction) can hold SQLite's write lock until it is collected: about
    # one run in three of test_agent.py[sqlite] then failed here with "database is locked"
    # after the 30 s busy timeout (seen in CI too). Collecting first closes it.
    gc.collect()
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    async with db.session() as s:
        if db.dialect == "postgresql":
            await s.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                await s.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
async def database(_session_database: tuple[Database, str]) -> Database:
    """A migrated, empty database; parametrized over SQLite and PostgreSQL."""
    db, _ = _session_database
    await _empty(db)
    return db


@pytest.fixture
def settings(tmp_path: Path, _session_database: tuple[Database, str]) -> Settings:
    _, url = _session_database
    return Settings(
        data_dir=tmp_path,
        database_url=url,
        secret_key="test-secret-key-not-for-production",
    )


@pytest.fixture
async def container(settings: Settings, database: Database) -> Container:
    return build(settings, db=database)


@pytest.fixture
async def live(settings: Settings, database: Database) -> AsyncIterator[Container]:
    """The server's gateway side running: embedded Mosquitto on free ports, broker link,
    presence writer (see tests/gateways.py for helpers)."""
    settings.mqtt = MQTTSettings(
        gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port()
    )
    container = build(settings, db=database)
    await container.start_messaging()
    await container.messaging.link.wait_connected(10)
    yield container
    await container.stop_messaging()


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    async with checked_client(
        create_app(container), "http://testserver", ("198.51.100.7", 40000)
    ) as c:
        yield c


@dataclass
class Caller:
    """A user of a role, and the headers to call the API as that user (or its token)."""

    email: str
    password: str
    role: Role
    headers: dict[str, str]
    user_id: int


class Callers:
    def __init__(self, container: Container) -> None:
        self.c = container

    async def user(self, role: Role, email: str | None = None) -> Caller:
        email = email or f"{role.value}-{secrets.token_hex(3)}@example.com"
        password = "correct horse battery"
        user, _ = await self.c.accounts.create_user(email, password, role)
        login = await self.c.accounts.login(email, password)
        return Caller(email, password, role, {"Authorization": f"Bearer {login.secret}"}, user.id)

    async def token(self, role: Role, scope: Scope) -> Caller:
        """An API token of ``scope`` owned by a new user of ``role``, sent as mx-api-token."""
        caller = await self.user(role)
        principal = await self.c.accounts.principal_for_bearer(
            caller.headers["Authorization"].split(" ", 1)[1]
        )
        assert principal is not None
        _, secret = await self.c.accounts.create_token(principal, "test", scope)
        return Caller(caller.email, caller.password, role, {"mx-api-token": secret}, caller.user_id)


@pytest.fixture
def callers(container: Container) -> Callers:
    return Callers(container)


@pytest.fixture
async def admin(callers: Callers) -> Caller:
    return await callers.user(Role.ADMIN)


@pytest.fixture
async def writer(callers: Callers) -> Caller:
    """The usual API script: a read/write token of an operator."""
    return await callers.token(Role.OPERATOR, Scope.READ_WRITE)


# --- file stores (see tests/filestores.py) ------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def file_backend(request: pytest.FixtureRequest, settings: Settings) -> FileBackend:
    """``settings`` pointed at a directory, or at a fresh bucket of the moto server."""
    if request.param == "local":
        backend = FileBackend("local")
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        backend = FileBackend("s3", s3, s3.new_bucket())
    backend.configure(settings)
    return backend


@pytest.fixture
def http_socket(settings: Settings, file_backend: FileBackend) -> Iterator[socket.socket]:
    """The socket the app is served on; its URL becomes the server's public URL (set before
    any container is built, so the local store's links point at it)."""
    sock = bound_socket()
    settings.http = HTTPSettings(public_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    yield sock
    sock.close()


@pytest.fixture
async def store_env(
    http_socket: socket.socket, settings: Settings, database: Database, file_backend: FileBackend
) -> AsyncIterator[StoreEnv]:
    """The app over each file store, reachable through ASGI and over real HTTP."""
    async with serve(build(settings, db=database), http_socket, file_backend) as env:
        yield env


@pytest.fixture
async def live_store_env(
    http_socket: socket.socket, live: Container, file_backend: FileBackend
) -> AsyncIterator[StoreEnv]:
    """As ``store_env``, with the gateway side running (the ``live`` fixture)."""
    async with serve(live, http_socket, file_backend) as env:
        yield env


@pytest.fixture
async def events(live: Container) -> AsyncIterator[Events]:
    """Every event gateways publish, as the server's listener sees them."""
    watcher = Events()
    task = asyncio.create_task(watcher.watch(live))
    await asyncio.wait_for(watcher.subscribed.wait(), 10)
    yield watcher
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def live_api(live: Container) -> AsyncIterator[httpx.AsyncClient]:
    """An API client of the app around the ``live`` container."""
    async with checked_client(create_app(live)) as client:
        yield client


@pytest.fixture
async def live_writer(live: Container) -> Caller:
    """An operator's read/write token on the ``live`` container."""
    return await Callers(live).token(Role.OPERATOR, Scope.READ_WRITE)


# --- workers a test leaves running ---------------------------------------------------------
# A container whose test ended without stop_messaging keeps its workers running on the
# session's event loop: against a database later dropped, into the captured logs of later
# tests (seen in CI: "worker task-engine failed: database … does not exist" failing
# log-asserting tests of other files). No fixture wider than a test starts messaging, so what
# still runs after a test's teardown is that test's leak: it is cancelled here and reported
# on the real stderr, naming the test (the leaking test is still to be found).
_workers_made: weakref.WeakSet[Workers] = weakref.WeakSet()
_workers_init = Workers.__init__


def _tracked_init(self: Workers, *args: Any, **kwargs: Any) -> None:
    _workers_init(self, *args, **kwargs)
    _workers_made.add(self)


Workers.__init__ = _tracked_init  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    for workers in list(_workers_made):
        left = [w for w in workers._workers.values() if w.task is not None and not w.task.done()]
        for w in left:
            assert w.task is not None
            w.task.cancel()
        if left:
            names = ", ".join(sorted(w.name for w in left))
            print(f"\n{item.nodeid} left workers running (cancelled): {names}", file=sys.__stderr__)
