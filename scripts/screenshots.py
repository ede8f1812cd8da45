"""Screenshots of the web console for the docs.

    .venv/bin/python -m scripts.screenshots            # from the repository root
    .venv/bin/python -m scripts.screenshots --out /tmp/shots

Starts a throw-away server in this process (SQLite in a temporary directory, the embedded
Mosquitto on free ports, the app on a free port), connects simulated gateways, makes some
activity (groups, a finished group reboot and one still waiting for a gateway, offline alarms,
one acknowledged, an API token), logs in as an admin with Debian's Chromium (Playwright, no
browser download: ``scripts/setup-system.sh test`` installs ``chromium``) and saves PNGs of
the main pages at 1280x800, of the dashboard, the gateway list and the map at 390 px wide (a
phone, the whole page), and of the gateway list in Traditional Chinese, into
docs/screenshots/. The map uses no tile server (the browser reaches nothing but this server):
it shows the offline basemap. Takes about a minute; nothing is left running or on disk but the
PNGs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Page, async_playwright
from tests.brokers import free_port
from tests.e2e.harness import Account, Fleet, launch, log_in, make_accounts, settle
from tests.gateways import eventually
from tests.httpserver import bound_socket, serving

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade_async
from edgefleet.domain.auth import Role, Scope
from edgefleet.domain.eventfilter import EventFilter
from edgefleet.domain.events import AlarmState
from edgefleet.domain.tasks import TaskKind
from edgefleet.services.tasks import TaskSpec
from edgefleet.settings import ConsoleSettings, HTTPSettings, MQTTSettings, Settings
from edgefleet.simulator.fleet import MODELS, position_for

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

SITES = [  # (model, firmware, where)
    ("UC-8112-LX-CG", "2.4.1", (25.0330, 121.5654)),
    ("UC-8112-LX-CG", "2.4.1", (25.0478, 121.5319)),
    ("UC-8112-LX-CG", "2.5.0", (24.1477, 120.6736)),
    ("UC-8220-T-LX", "2.5.0", (22.6273, 120.3014)),
    ("UC-8220-T-LX", "2.5.0", (48.1351, 11.5820)),
    ("AIG-301-T-AZU-LX", "1.3.2", (52.5200, 13.4050)),
    ("AIG-301-T-AZU-LX", "1.3.2", (45.4642, 9.1900)),
    ("UC-8112-LX-CG", "2.4.1", (35.6762, 139.6503)),
]


@asynccontextmanager
async def server(tmp: Path) -> AsyncIterator[tuple[Container, str]]:
    url = f"sqlite+aiosqlite:///{tmp / 'edgefleet.db'}"
    await upgrade_async(url)
    sock = bound_socket()
    settings = Settings(
        data_dir=tmp,
        database_url=url,
        secret_key=secrets.token_urlsafe(32),
        http=HTTPSettings(public_url=f"http://127.0.0.1:{sock.getsockname()[1]}"),
        mqtt=MQTTSettings(
            gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port()
        ),
        console=ConsoleSettings(map_tiles_url=""),  # the offline basemap: no internet here
    )
    c = build(settings, db=Database(make_engine(url)))
    await c.start_messaging()
    try:
        await c.messaging.link.wait_connected(10)
        async with serving(create_app(c), sock) as base:
            yield c, base
    finally:
        await c.close()
        sock.close()


async def activity(c: Container, fleet: Fleet, admin: Account) -> str:
    """Gateways, groups, tasks, alarms, a token; answers the uuid of the finished task."""
    online = await fleet.register(len(SITES), prefix="press")
    for uuid, (model, version, (lat, lng)) in zip(online, SITES, strict=True):
        props = {"modelName": model, "softwareVersion": version, "gps": {"lat": lat, "lng": lng}}
        fleet.start([uuid], props=props)
    flaky = await fleet.register(3, prefix="pack")
    fleet.start(flaky, stay=False, props={"gps": {"lat": 51.5072, "lng": -0.1276}})
    await fleet.register(2, prefix="spare")  # never connected
    # a fleet spread over industrial regions, as `edgefleet simulate` reports it
    spread = await fleet.register(32, prefix="site")
    for i, uuid in enumerate(spread):
        model = MODELS[i % len(MODELS)]
        fleet.start([uuid], props={"modelName": model, "gps": position_for(uuid)})
    await fleet.connected(online + flaky + spread)

    line1 = (await c.fleet.create_group("Press line 1", "hall A, presses 1-5")).group.id
    await c.fleet.add_to_group(line1, online[:5])
    packing = (await c.fleet.create_group("Packaging", "hall B")).group.id
    await c.fleet.add_to_group(packing, flaky + online[5:7])
    await c.fleet.create_group("Spares", "not deployed yet")

    def reboot(group: int) -> TaskSpec:
        return TaskSpec(
            kind=TaskKind.GROUP,
            method="post",
            resource="/system/reboot",
            group_id=group,
            created_by=admin.email,
        )

    done = (await c.tasks.create(reboot(line1))).task.uuid

    async def finished() -> bool:
        return (await c.tasks.get(done)).by_state().get("SUCCESS", 0) == 5

    await eventually(finished, 30)

    # single-session gateways: one crashes (an alarm), two reboot and stay away (a task that
    # waits for them, and their alarms)
    fleet.crash(flaky[0])
    await c.tasks.create(reboot(packing))

    async def alarms() -> bool:
        found = await c.event_log.query(
            EventFilter(alarm=AlarmState.OPEN), before_id=None, limit=10
        )
        return len({e.device_uuid for e in found}) >= 3

    await eventually(alarms, 30)
    found = await c.event_log.query(EventFilter(alarm=AlarmState.OPEN), before_id=None, limit=10)
    await c.event_log.acknowledge(found[-1].id, admin.email)

    owner = await c.accounts.login(admin.email, admin.password)
    principal = await c.accounts.principal_for_bearer(owner.secret)
    assert principal is not None
    await c.accounts.create_token(principal, "SCADA export (nightly)", Scope.READ)
    await c.accounts.create_token(principal, "rollout script", Scope.READ_WRITE)
    return done


async def settled(page: Page) -> None:
    """Every fragment loaded, then the fonts and one frame (charts are drawn on the swap)."""
    await settle(page)
    await page.wait_for_function(  # the map: its markers and its basemap drawn
        """() => { const m = document.getElementById("map-canvas");
                   return !m || (m.dataset.markers && m.dataset.basemapLoaded); }"""
    )
    await page.evaluate("document.fonts.ready.then(() => true)")
    await page.evaluate("new Promise((r) => requestAnimationFrame(() => setTimeout(r, 100)))")


async def shoot(page: Page, path: str, name: str, out: Path, *, full: bool = False) -> Path | None:
    r = await page.goto(path)
    if r is None or r.status >= 400:
        print(f"  skipped {path}: HTTP {r.status if r else '-'}")
        return None
    await settled(page)
    file = out / f"{name}.png"
    await page.screenshot(path=file, full_page=full)
    return file


async def main(out: Path) -> list[Path]:
    made: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-shots-") as tmp:
        async with server(Path(tmp)) as (c, base):
            accounts = await make_accounts(c)
            admin = accounts[Role.ADMIN]
            fleet = Fleet(c)
            try:
                task = await activity(c, fleet, admin)
                some_gateway = next(iter(fleet.gateways))
                async with async_playwright() as pw:
                    browser = await launch(pw)
                    ctx = await browser.new_context(base_url=base, viewport=DESKTOP)  # type: ignore[arg-type]
                    page = await ctx.new_page()
                    page.on("dialog", lambda d: d.dismiss())
                    made.append(out / "login.png")
                    await page.goto("/console/login")
                    await settled(page)
                    await page.screenshot(path=made[-1])
                    await log_in(page, admin)
                    pages = [
                        ("/console/", "dashboard"),
                        ("/console/devices", "devices"),
                        (f"/console/devices/{some_gateway}", "device"),
                        ("/console/map", "map"),
                        ("/console/groups", "groups"),
                        ("/console/tasks", "tasks"),
                        (f"/console/tasks/{task}", "task"),
                        ("/console/events", "events"),
                        ("/console/files", "files"),
                        ("/console/tokens", "tokens"),
                        ("/console/users", "users"),
                        ("/console/audit", "audit"),
                        ("/console/settings", "settings"),
                    ]
                    for path, name in pages:
                        if (file := await shoot(page, path, name, out)) is not None:
                            made.append(file)
                    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
                    for path, name in [
                        ("/", "dashboard-phone"),
                        ("/console/devices", "devices-phone"),
                        ("/console/map", "map-phone"),
                    ]:
                        if (file := await shoot(page, path, name, out, full=True)) is not None:
                            made.append(file)
                    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
                    await page.goto("/console/devices")
                    await page.get_by_test_id("language").select_option("zh_TW")
                    await page.wait_for_function("document.documentElement.lang === 'zh-Hant-TW'")
                    if (
                        file := await shoot(page, "/console/devices", "devices-zh", out)
                    ) is not None:
                        made.append(file)
                    await ctx.close()  # its event streams closed before the server stops
                    await browser.close()
            finally:
                await fleet.stop()
    return made


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the PNGs go ({OUT})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    for file in asyncio.run(main(args.out)):
        print(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file)


if __name__ == "__main__":
    cli()
