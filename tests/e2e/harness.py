"""What the browser tests (tests/e2e) and the screenshot command (scripts/screenshots.py) share:
Debian's Chromium driven by Playwright, accounts with known passwords, simulated gateways,
and logging in through the login form.

The browser is the system's ``/usr/bin/chromium`` (``scripts/setup-system.sh test`` installs
the Debian package); Playwright's own browser download (``playwright install``) is never used.
``EDGEFLEET_TEST_CHROMIUM`` points at another Chromium binary.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from playwright.async_api import Browser, Page, Playwright

from edgefleet.bootstrap import Container
from edgefleet.domain.auth import Role
from edgefleet.services.fleet import Registration
from edgefleet.simulator.gateway import Behaviour, VirtualGateway

CHROMIUM = os.environ.get("EDGEFLEET_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these Chromium's own background connections (updates, sync, field trials) get
    # refused by the sandboxed network, many at a time, and slow every page down
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"
PROPS = {"modelName": "UC-8112-LX-CG", "softwareVersion": "2.4.1", "defaultRoute": "eth0"}
FAST = Behaviour(reboot_delay=0.2, boot_seconds=0.3)
"""Gateways that reboot at once and are back 0.3 s later (a reboot task completes when they
return), so a task runs to 100 % in about a second."""


class ChromiumMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """The Chromium binary, or a clear error saying how to install it."""
    if not os.access(CHROMIUM, os.X_OK):
        raise ChromiumMissing(
            f"no Chromium at {CHROMIUM}: the browser tests drive Debian's chromium package; "
            "install it with `scripts/setup-system.sh test` (as root or with sudo), or set "
            "EDGEFLEET_TEST_CHROMIUM to a Chromium binary. (`playwright install` is not used.)"
        )
    return CHROMIUM


async def launch(pw: Playwright) -> Browser:
    return await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


@dataclass(frozen=True)
class Account:
    email: str
    password: str
    role: Role


async def make_accounts(c: Container) -> dict[Role, Account]:
    """An admin, an operator and a viewer, each with ``PASSWORD`` (so no password change is
    asked at login: only generated one-time passwords must be changed)."""
    out = {}
    for role in (Role.ADMIN, Role.OPERATOR, Role.VIEWER):
        email = f"{role.value}@example.com"
        user, generated = await c.accounts.create_user(email, PASSWORD, role)
        assert generated is None and not user.must_change_password
        out[role] = Account(email, PASSWORD, role)
    return out


async def log_in(page: Page, account: Account, next: str = "/console/") -> None:
    """Log in with the login form, as a person does, and land on ``next``."""
    await page.goto(f"/console/login?next={quote(next)}")
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill(account.password)
    await page.get_by_role("button", name="Log in").click()
    # (a glob would match the login page itself: its ?next= ends with the same path)
    await page.wait_for_url(lambda url: urlsplit(url).path == urlsplit(next).path)


SETTLED = """() => window.htmx !== undefined
    && document.querySelectorAll(".htmx-request").length === 0
    && [...document.querySelectorAll('[hx-trigger*="load"]')].every(
        (e) => !["…", "Loading…"].includes(e.textContent.trim()))"""


async def settle(page: Page) -> None:
    """Wait until every fragment a page loads has come (no placeholder left, no htmx request
    in flight)."""
    await page.wait_for_function(SETTLED, timeout=10_000)


@dataclass
class Fleet:
    """Simulated gateways on the server's embedded broker (its gateway port, TLS-PSK)."""

    c: Container
    gateways: dict[str, VirtualGateway] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    _psks: dict[str, str] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def register(self, n: int, prefix: str = "gw") -> list[str]:
        """Register ``n`` gateways (never connected yet); their uuids, once the broker knows
        their keys."""
        uuids = []
        start = len(self._psks)
        for i in range(start, start + n):
            name = f"{prefix}-{i:02d}"
            view, psk = await self.c.fleet.register_device(
                Registration(display_name=name, mac=f"0090e8{i:06x}")
            )
            uuids.append(view.device.uuid)
            self._psks[view.device.uuid] = psk
            self.names[view.device.uuid] = name
        if self.c.messaging.broker is not None:
            await self.c.messaging.broker.reloaded()
        return uuids

    def start(
        self,
        uuids: list[str],
        *,
        stay: bool = True,
        props: dict[str, Any] | None = None,
        behaviour: Behaviour = FAST,
    ) -> None:
        """Connect these gateways, reporting ``props`` over the defaults. ``stay``: reconnect
        as a real gateway does (and come back after a reboot); otherwise one session only, so a
        :meth:`crash` leaves it offline."""
        port = self.c.settings.mqtt.gateway_port
        for uuid in uuids:
            properties = {**PROPS, **(props or {})}
            gw = VirtualGateway(
                uuid, self._psks[uuid], "127.0.0.1", port, properties, behaviour=behaviour
            )
            self.gateways[uuid] = gw
            if stay:
                task = asyncio.create_task(gw.serve(self._stop), name=f"e2e-serve-{uuid}")
            else:
                task = asyncio.create_task(gw.run(), name=f"e2e-run-{uuid}")
            self._tasks.append(task)

    async def connected(self, uuids: list[str], seconds: float = 10) -> None:
        async with asyncio.timeout(seconds):
            await asyncio.gather(*(self.gateways[u].connected.wait() for u in uuids))

    def crash(self, uuid: str) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the will, the server
        marks the gateway offline and raises a ``device_offline`` warning alarm."""
        self.gateways[uuid].crash()

    async def stop(self) -> None:
        """Gateways that stay say goodbye and stop (cancelling ``serve`` could leave its
        session task behind); single-session ones are cancelled."""
        self._stop.set()
        staying = [t for t in self._tasks if t.get_name().startswith("e2e-serve-")]
        if staying:
            await asyncio.wait(staying, timeout=5)
        for t in self._tasks:
            t.cancel()
        # a crashed single-session gateway ended with the broker's error: expected here
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 10)
        self._tasks.clear()
