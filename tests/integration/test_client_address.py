"""The client's address (audit log, login throttle) is the peer's, unless the peer is a
proxy listed in ``http.trusted_proxies``: then its ``X-Forwarded-For`` says it. Nobody is
listed by default, and a real ``edgefleet serve`` believes nobody either."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database
from edgefleet.domain.auth import Role
from edgefleet.settings import HTTPSettings, LoginSettings, Settings
from tests.conftest import Callers
from tests.processes import ServerProcess, edgefleet_server

PROXY = "10.1.2.3"
STRANGER = "198.51.100.7"


@asynccontextmanager
async def peer(container: Container, address: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(container), client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def failed_login_from(c: httpx.AsyncClient, forwarded: str, email: str) -> None:
    r = await c.post(
        "/api/v1/auth/local",
        json={"email": email, "password": "guess"},
        headers={"X-Forwarded-For": forwarded},
    )
    assert r.status_code in (401, 429), r.text


async def audited_addresses(container: Container, email: str) -> list[str]:
    admin = await Callers(container).user(Role.ADMIN)
    async with peer(container, "127.0.0.1") as c:
        r = await c.get("/api/v1/audit", headers=admin.headers, params={"actor": email})
    return sorted(e["ip"] for e in r.json()["data"])


async def test_forwarded_for_is_believed_from_a_listed_proxy_only(
    settings: Settings, database: Database
) -> None:
    settings.http = HTTPSettings(trusted_proxies=[PROXY, "192.0.2.0/24"])
    container = build(settings, db=database)
    async with peer(container, PROXY) as proxy, peer(container, STRANGER) as stranger:
        await failed_login_from(proxy, "203.0.113.5", "a@example.com")
        # a chain through a second listed proxy: the first address not listed is the client
        await failed_login_from(proxy, "203.0.113.6, 192.0.2.10", "a@example.com")
        # a client's own made-up header, passed on by the proxy, does not fool it
        await failed_login_from(proxy, "203.0.113.250, 203.0.113.7", "a@example.com")
        await failed_login_from(stranger, "203.0.113.8", "a@example.com")
    assert await audited_addresses(container, "a@example.com") == [
        "198.51.100.7",
        "203.0.113.5",
        "203.0.113.6",
        "203.0.113.7",
    ]


async def test_made_up_forwarded_addresses_do_not_escape_the_address_throttle(
    settings: Settings, database: Database
) -> None:
    """No proxy is trusted by default: a client that sends a new X-Forwarded-For each time
    is still one address to the throttle, and to the audit log."""
    settings.login = LoginSettings(address_max_retry=3)
    container = build(settings, db=database)
    now = datetime.now(UTC)
    container.accounts.clock = lambda: now  # the throttle's delays do not run out meanwhile
    limit = 3
    async with peer(container, "127.0.0.1") as local:
        for i in range(limit):
            await failed_login_from(local, f"203.0.113.{i}", f"user{i}@example.com")
        r = await local.post(
            "/api/v1/auth/local",
            json={"email": "another@example.com", "password": "guess"},
            headers={"X-Forwarded-For": "203.0.113.250"},
        )
        assert r.status_code == 429
    assert await audited_addresses(container, "user0@example.com") == ["127.0.0.1"]


@pytest.fixture
def server(settings: Settings, database: Database, tmp_path: Path) -> Iterator[ServerProcess]:
    """``edgefleet serve`` on the test's (emptied) database, on its default settings."""
    with edgefleet_server(settings, tmp_path) as running:
        yield running


async def test_a_server_ignores_forwarded_headers_by_default(
    server: ServerProcess, callers: Callers
) -> None:
    """uvicorn's own default believes X-Forwarded-For from 127.0.0.1: a local client could
    then write any address into the audit log and step around the per-address throttle."""
    admin = await callers.user(Role.ADMIN)
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post(
            "/api/v1/auth/local",
            json={"email": "mallory@example.com", "password": "guess"},
            headers={"X-Forwarded-For": "192.0.2.99", "X-Forwarded-Proto": "https"},
        )
        assert r.status_code == 401
        entries = (
            await http.get(
                "/api/v1/audit", headers=admin.headers, params={"actor": "mallory@example.com"}
            )
        ).json()["data"]
    assert [e["ip"] for e in entries] == ["127.0.0.1"]
