"""Browser tests: the console in Debian's Chromium (Playwright's async API, no browser download),
against the app served over real HTTP (uvicorn in the test's event loop) with the gateway side
running (the ``live`` container: embedded Mosquitto on free ports) and simulated gateways.

Everything is per test: a fresh SQLite database, broker, server port and browser context; the
browser process is shared by the tests of a file. The sync Playwright API cannot run inside
pytest-asyncio's loop, hence the async one. A missing Chromium fails the tests (never skips):
``scripts/setup-system.sh test`` installs it. The console reads through the same services on
both databases, so these tests run on SQLite only (the services have their own tests on both).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade_async
from edgefleet.domain.auth import Role
from tests.e2e.harness import (
    Account,
    ChromiumMissing,
    Fleet,
    chromium_path,
    launch,
    make_accounts,
)
from tests.httpserver import bound_socket, serving

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Route,
        async_playwright,
        expect,
    )
except ImportError as exc:  # pragma: no cover - a setup error, said clearly
    raise ImportError(
        "the browser tests need Playwright for Python: .venv/bin/pip install -e '.[test]'"
    ) from exc

expect.set_options(timeout=10_000)
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
async def _session_database(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Database, str]]:
    """SQLite only (replaces the SQLite/PostgreSQL pair of tests/conftest.py here)."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('e2e') / 'e2e.db'}"
    await upgrade_async(url)
    db = Database(make_engine(url))
    try:
        yield db, url
    finally:
        await db.dispose()


@dataclass
class Console:
    """The server a test's browser talks to."""

    url: str
    c: Container = field(repr=False)
    accounts: dict[Role, Account] = field(repr=False)
    fleet: Fleet = field(repr=False)

    @property
    def admin(self) -> Account:
        return self.accounts[Role.ADMIN]

    @property
    def operator(self) -> Account:
        return self.accounts[Role.OPERATOR]

    @property
    def viewer(self) -> Account:
        return self.accounts[Role.VIEWER]


@pytest.fixture
async def console(live: Container) -> AsyncIterator[Console]:
    live.settings.console.map_tiles_url = ""  # no tile server: the browser stays on this host
    accounts = await make_accounts(live)
    fleet = Fleet(live)
    sock = bound_socket()
    try:
        async with serving(create_app(live), sock) as url:
            yield Console(url, live, accounts, fleet)
            await fleet.stop()
    finally:
        sock.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    try:
        chromium_path()
    except ChromiumMissing as exc:
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)  # fails, never skips: CI must have the browser
    pw = await async_playwright().start()
    try:
        b = await launch(pw)
        yield b
        await b.close()
    finally:
        await pw.stop()


@pytest.fixture
async def context(browser: Browser, console: Console) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (no cookies) at desktop size; closed before the server stops
    (its event streams would hold the server's shutdown)."""
    ctx = await browser.new_context(base_url=console.url, viewport=DESKTOP)  # type: ignore[arg-type]
    ctx.set_default_timeout(10_000)
    outside: list[str] = []

    async def local_only(route: Route) -> None:
        """Nothing leaves this host (tiles, fonts, a CDN): such a request is refused and
        fails the test."""
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await ctx.route("**/*", local_only)
    try:
        yield ctx
    finally:
        await ctx.close()
    assert not outside, f"the page asked for something outside this host: {outside[:5]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
async def page(
    context: BrowserContext, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Page]:
    """A tab that accepts confirmation dialogs and fails the test on an uncaught script error;
    a failed test leaves a screenshot of the tab (its path is printed)."""
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on("dialog", lambda d: d.accept())
    yield p
    shot = tmp_path / "failure.png"
    if errors or request.node.stash.get(CALL_FAILED, False):
        await p.screenshot(path=shot, full_page=True)
        print(f"screenshot of the page at the failure: {shot}")
    if errors:
        pytest.fail(f"script errors in the page (see {shot}): {errors}")
