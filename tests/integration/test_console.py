"""The console's core pages over HTTP (the browser tests are in tests/e2e/): sessions,
what each role is offered, gateway pages, the map, files, and the vendored assets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container
from edgefleet.db.repos.events import EventRepo
from edgefleet.db.tables import Event
from edgefleet.domain.auth import Role
from edgefleet.domain.events import EventType, NewEvent
from edgefleet.services.fleet import Registration
from edgefleet.web import console
from tests.conftest import Callers

VENDOR = Path(__file__).parents[2] / "src" / "edgefleet" / "web" / "static" / "vendor"


@pytest.fixture
async def browser(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does."""
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def _log_in(c: Container, browser: httpx.AsyncClient, role: Role) -> str:
    caller = await Callers(c).user(role)
    r = await browser.post(
        "/api/v1/auth/login", json={"email": caller.email, "password": caller.password}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["csrfToken"])


async def test_pages_send_a_visitor_without_session_to_the_login_page(
    browser: httpx.AsyncClient,
) -> None:
    for path in ("/console/", "/console/devices", "/console/map", "/console/files"):
        r = await browser.get(path)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/console/login?next=")
    assert (await browser.get("/console/fragments/devices")).status_code == 401
    r = await browser.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    login = await browser.get("/console/login?next=https://evil.example/")
    assert login.status_code == 200 and 'data-next="/console/"' in login.text


async def test_a_one_time_password_leads_to_the_password_page(
    container: Container, browser: httpx.AsyncClient
) -> None:
    user, password = await container.accounts.create_user("new@example.com", None, Role.ADMIN)
    assert password is not None
    await browser.post("/api/v1/auth/login", json={"email": user.email, "password": password})
    r = await browser.get("/console/devices")
    assert r.status_code == 303 and r.headers["location"] == "/console/password"
    page = (await browser.get("/console/password")).text
    assert "Choose your password" in page
    # no fragment that would be refused (401 sends a browser to the login page), no live stream
    assert "hx-get" not in page and "data-live" not in page and "data-logout" in page


LIVE_AFTER = re.compile(r'<body [^>]*data-live="1" data-live-after="(\d+)"')


async def test_a_page_starts_its_live_stream_after_the_newest_event_it_was_rendered_with(
    container: Container, browser: httpx.AsyncClient
) -> None:
    """console.js opens the page's event stream with ``after`` = the page's data-live-after:
    an event stored between the page's rendering and the stream's subscription is replayed,
    not lost (the page would not refresh for it)."""

    async def newest() -> int:
        async with container.db.session() as s:
            return int(await s.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0)

    await _log_in(container, browser, Role.VIEWER)
    empty = (await browser.get("/console/events")).text
    assert (m := LIVE_AFTER.search(empty)) and int(m[1]) == await newest() == 0
    view, _ = await container.fleet.register_device(
        Registration(display_name="pump-7", mac="0090e8000007")
    )
    group = (await container.fleet.create_group("pumps")).group
    async with container.db.session() as s:
        stored = await EventRepo(s).insert(
            [NewEvent(EventType.GATEWAY_EVENT, datetime.now(UTC), text=f"e{i}") for i in range(3)]
        )
    pages = [
        "/console/", "/console/devices", "/console/events", "/console/groups", "/console/tasks",
        f"/console/devices/{view.device.uuid}", f"/console/groups/{group.id}", "/console/nowhere",
    ]  # fmt: skip
    # (no event writer runs in this container: the registration's own event is not stored)
    assert await newest() == stored[-1].id
    for path in pages:
        r = await browser.get(path)
        assert r.status_code in (200, 404), path
        m = LIVE_AFTER.search(r.text)
        assert m is not None and int(m[1]) == stored[-1].id, path
    # a fragment has no stream of its own: it reads no event id
    assert "data-live" not in (await browser.get("/console/fragments/devices")).text


async def test_a_viewer_is_offered_no_write_control_and_an_operator_is(
    container: Container, browser: httpx.AsyncClient
) -> None:
    view, _ = await container.fleet.register_device(
        Registration(display_name="pump-7", mac="0090e8000007")
    )
    uuid = view.device.uuid
    await _log_in(container, browser, Role.VIEWER)
    listing = await browser.get("/console/fragments/devices")
    assert "pump-7" in listing.text and "offline" not in listing.text  # never connected
    assert "data-select" not in listing.text
    assert "data-bulk" not in (await browser.get("/console/devices")).text
    detail = await browser.get(f"/console/devices/{uuid}")
    assert detail.status_code == 200 and "pump-7" in detail.text
    assert "data-device-request" not in detail.text and "Remote actions" not in detail.text
    files = await browser.get("/console/files")
    assert "data-upload" not in files.text
    await browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": "x"})

    browser.cookies.clear()
    csrf = await _log_in(container, browser, Role.OPERATOR)
    listing = await browser.get("/console/fragments/devices")
    assert f'data-select value="{uuid}"' in listing.text
    assert 'data-bulk="reboot"' in (await browser.get("/console/devices")).text
    detail = await browser.get(f"/console/devices/{uuid}")
    assert 'data-testid="device-reboot"' in detail.text
    assert f'<meta name="csrf-token" content="{csrf}">' in detail.text
    assert "data-upload" in (await browser.get("/console/files")).text


async def test_the_fleet_query_filters_the_list_and_a_bad_one_is_explained(
    container: Container, browser: httpx.AsyncClient
) -> None:
    for i in range(3):
        await container.fleet.register_device(
            Registration(display_name=f"gw-{i}", mac=f"0090e80000a{i}")
        )
    await _log_in(container, browser, Role.VIEWER)
    r = await browser.get("/console/fragments/devices", params={"q": 'name = "gw-1"'})
    assert "gw-1" in r.text and "gw-0" not in r.text and "gw-2" not in r.text
    bad = await browser.get("/console/fragments/devices", params={"q": "model >"})
    assert bad.status_code == 200 and 'role="alert"' in bad.text
    assert "invalid fleet query" in bad.text


async def test_an_unknown_gateway_has_a_clear_not_found_page(
    container: Container, browser: httpx.AsyncClient
) -> None:
    await _log_in(container, browser, Role.VIEWER)
    r = await browser.get("/console/devices/no-such-gateway")
    assert r.status_code == 404 and "Gateway not found" in r.text


async def test_the_map_places_gateways_by_their_reported_position(
    container: Container, browser: httpx.AsyncClient
) -> None:
    placed, _ = await container.fleet.register_device(
        Registration(display_name="placed", mac="0090e80000b1")
    )
    await container.fleet.register_device(Registration(display_name="nowhere", mac="0090e80000b2"))
    presence = container.messaging.presence
    writer = asyncio.create_task(presence.run())
    try:
        presence.replace_properties(placed.device.uuid, {"gps": {"lat": 25.033, "lng": 121.565}})
        await asyncio.wait_for(presence.drained(), 10)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    await _log_in(container, browser, Role.VIEWER)
    r = await browser.get("/console/fragments/map-points")
    assert r.json() == {
        "points": [
            {
                "uuid": placed.device.uuid,
                "name": "placed",
                "status": "created",
                "model": "",
                "lat": 25.033,
                "lng": 121.565,
            }
        ],
        "unplaced": 1,
        "beyond": 0,
    }
    page = await browser.get("/console/map")
    tiles = 'data-tiles="https://tile.openstreetmap.org/{z}/{x}/{y}.png"'
    assert tiles in page.text and 'data-attribution="© OpenStreetMap contributors"' in page.text
    container.settings.console.map_tiles_url = ""  # no tiles: the offline basemap only
    assert 'data-tiles=""' in (await browser.get("/console/map")).text


async def test_vendored_browser_files_are_the_pinned_ones_and_served_locally(
    browser: httpx.AsyncClient,
) -> None:
    sums = (VENDOR / "SHA256SUMS").read_text().split("\n")
    pinned = {name: digest for digest, name in (line.split() for line in sums if line.strip())}
    assert set(pinned) == {
        "htmx.min.js",
        "json-enc.min.js",
        "chart.umd.min.js",
        "leaflet.js",
        "leaflet.css",
        "leaflet.markercluster.js",
        "MarkerCluster.css",
        "countries-50m.json",
        "topojson-client.min.js",
    }
    assert {p.name for p in VENDOR.iterdir()} == {*pinned, "SHA256SUMS"}
    for name, digest in pinned.items():
        r = await browser.get(f"/static/vendor/{name}")
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == digest
    page = (await browser.get("/console/login")).text
    assert "http://" not in page.replace("http://testserver", "")
    assert "https://" not in page  # no CDN
    assert not re.search(r'(src|href)="(https?:)?//', page)


async def test_the_dashboard_counts_gateways_by_state_model_and_firmware(
    container: Container, browser: httpx.AsyncClient
) -> None:
    for i in range(3):
        await container.fleet.register_device(
            Registration(display_name=f"d{i}", mac=f"0090e80000c{i}")
        )
    await _log_in(container, browser, Role.VIEWER)
    r = await browser.get("/console/fragments/fleet-summary")
    assert r.status_code == 200
    assert '<span class="n" data-count="created">3</span>' in r.text
    assert '<span class="n" data-count="online">0</span>' in r.text
    start = r.text.index('id="dashboard-data">') + len('id="dashboard-data">')
    data = json.loads(r.text[start : r.text.index("</script>", start)])
    assert data["status"] == [["created", 3]] and data["model"] == [["unknown", 3]]
    assert "No task is running." in r.text and "No open alarm." in r.text


async def test_a_file_uploaded_from_the_console_session_is_listed_with_its_metadata(
    container: Container, browser: httpx.AsyncClient
) -> None:
    csrf = await _log_in(container, browser, Role.OPERATOR)
    files = {"file": ("settings.ini", b"[net]\nmtu=1400\n", "text/plain")}
    refused = await browser.post("/api/v1/filebin/upload", files=files)
    assert refused.status_code == 403  # a cookie session's write needs its CSRF token
    r = await browser.post("/api/v1/filebin/upload", files=files, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    listing = await browser.get("/console/fragments/files")
    digest = hashlib.sha256(b"[net]\nmtu=1400\n").hexdigest()
    assert "settings.ini" in listing.text and digest[:12] in listing.text
    assert "No file stored yet." not in listing.text


async def test_an_account_on_its_one_time_password_reads_nothing_through_the_console(
    container: Container, browser: httpx.AsyncClient
) -> None:
    """As the API refuses it everything but the password change, every console fragment
    refuses it too (they used to list gateways, files and firmware to it), and every page
    leads to the password page."""
    view, _ = await container.fleet.register_device(
        Registration(display_name="pump-9", mac="0090e8000009")
    )
    group = await container.fleet.create_group("plant-a")
    params = {
        "uuid": view.device.uuid,
        "group_id": str(group.group.id),
        "ref": str(group.group.id),
    }
    user, password = await container.accounts.create_user("otp@example.com", None, Role.ADMIN)
    assert password is not None
    r = await browser.post("/api/v1/auth/login", json={"email": user.email, "password": password})
    csrf = r.json()["csrfToken"]
    paths = [
        route.path.format(**params)
        for router in console.PAGES
        for route in router.routes
        if isinstance(route, APIRoute) and route.path not in ("/console/login", "/console/password")
    ]
    fragments = [p for p in paths if p.startswith("/console/fragments/")]
    assert len(fragments) >= 15
    for path in paths:
        r = await browser.get(path)
        if path in fragments:
            assert r.status_code == 401, (path, r.status_code)
            assert "pump-9" not in r.text and "plant-a" not in r.text
        else:
            assert r.status_code == 303 and r.headers["location"] == "/console/password", path
    r = await browser.put(
        "/api/v1/users/me/password",
        headers={"X-CSRF-Token": csrf},
        json={"currentPassword": password, "newPassword": "a long new passphrase"},
    )
    assert r.status_code == 200
    # the same session, its password changed, reads them
    for path in ("/console/fragments/devices", "/console/fragments/groups"):
        r = await browser.get(path)
        assert r.status_code == 200, path
    assert "pump-9" in (await browser.get("/console/fragments/devices")).text


# --- the gateway list, a gateway's page, unknown pages, languages ----------------------------


async def test_the_gateway_list_pages_and_sorts_on_the_server(
    container: Container, browser: httpx.AsyncClient
) -> None:
    for i in range(30):
        await container.fleet.register_device(
            Registration(display_name=f"gw-{i:02d}", mac=f"0090e80001{i:02x}")
        )
    await _log_in(container, browser, Role.VIEWER)

    async def names(**params: str | int) -> list[str]:
        r = await browser.get("/console/fragments/devices", params=params)
        assert r.status_code == 200
        return re.findall(r'data-name="([^"]+)"', r.text)

    assert await names(size=25) == [f"gw-{i:02d}" for i in range(25)]
    assert await names(size=25, page=2) == [f"gw-{i:02d}" for i in range(25, 30)]
    assert await names(sort="-name", size=25, page=1) == [f"gw-{i:02d}" for i in range(29, 4, -1)]
    r = await browser.get("/console/fragments/devices", params={"q": 'name ~ "gw-1"', "size": 25})
    assert 'data-total="10"' in r.text and "1\u201310 of 10 gateways" in r.text
    assert 'aria-sort="ascending"' not in r.text  # the default order is registration time
    r = await browser.get("/console/fragments/devices", params={"sort": "-name", "size": 100})
    assert 'aria-sort="descending"' in r.text and "Page 1 of 1" in r.text
    # nonsense is read as the defaults, not an error
    assert len(await names(sort="colour", size=7, page=-3)) == 30  # 50 a page
    page = await browser.get("/console/devices", params={"q": "tag:x", "sort": "-mac", "page": 2})
    state = re.search(r"data-state='([^']+)'", page.text)
    assert state and json.loads(state.group(1)) == {
        "q": "tag:x",
        "sort": "-mac",
        "page": 2,
        "size": 50,
    }


async def test_a_gateway_page_has_a_live_summary_and_says_when_the_gateway_is_gone(
    container: Container, browser: httpx.AsyncClient
) -> None:
    view, _ = await container.fleet.register_device(
        Registration(display_name="press-9", mac="0090e8000099", tags=("line-3",))
    )
    uuid = view.device.uuid
    await _log_in(container, browser, Role.OPERATOR)
    page = await browser.get(f"/console/devices/{uuid}")
    assert f'hx-get="/console/fragments/devices/{uuid}"' in page.text
    assert 'data-testid="device-edit"' in page.text and 'data-testid="device-delete"' in page.text
    await container.fleet.update_device(uuid, display_name="press-10", attributes={"rack": 4})
    summary = await browser.get(f"/console/fragments/devices/{uuid}")
    assert '<span data-testid="device-name">press-10</span>' in summary.text
    assert "rack" in summary.text and '<span class="tag">line-3</span>' in summary.text
    await container.fleet.delete_devices([uuid])
    gone = await browser.get(f"/console/fragments/devices/{uuid}")
    assert gone.status_code == 200 and 'data-testid="device-gone"' in gone.text


async def test_an_unknown_console_url_answers_an_html_page(
    container: Container, browser: httpx.AsyncClient
) -> None:
    r = await browser.get("/console/no/such/page")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "Page not found" in r.text and 'href="/console/login"' in r.text
    await _log_in(container, browser, Role.VIEWER)
    r = await browser.get("/console/gateways")
    assert r.status_code == 404 and "Page not found" in r.text
    assert "<code>/console/gateways</code>" in r.text and 'nav aria-label="Main"' in r.text
    api = await browser.get("/api/v1/no-such-thing")  # the API keeps its JSON problems
    assert api.status_code == 404 and api.headers["content-type"] == "application/problem+json"


async def test_the_console_speaks_the_users_language_or_the_browsers(
    container: Container, browser: httpx.AsyncClient
) -> None:
    zh = {"Accept-Language": "zh-TW,zh;q=0.9,en;q=0.8"}
    login = await browser.get("/console/login", headers=zh)
    assert '<html lang="zh-Hant-TW">' in login.text and "登入 edgefleet" in login.text
    assert "Log in to edgefleet" in (await browser.get("/console/login")).text
    fr_then_zh = {"Accept-Language": "fr-CH, fr;q=0.9, zh-HK;q=0.5"}
    assert "登入 edgefleet" in (await browser.get("/console/login", headers=fr_then_zh)).text
    csrf = await _log_in(container, browser, Role.VIEWER)
    page = await browser.get("/console/devices", headers=zh)
    assert "<h1>閘道器</h1>" in page.text and '"plurals": ["other"]' in page.text
    catalog = re.search(r'id="i18n-catalog">(.*?)</script>', page.text, re.S)
    assert catalog and json.loads(catalog.group(1))["messages"]["Select gateways first"]
    # the user's choice wins over the browser's, and is kept with the account
    r = await browser.patch(
        "/api/v1/users/me", json={"locale": "en"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 200 and r.json()["locale"] == "en"
    assert "<h1>Gateways</h1>" in (await browser.get("/console/devices", headers=zh)).text
    r = await browser.patch(
        "/api/v1/users/me", json={"locale": "zh_TW"}, headers={"X-CSRF-Token": csrf}
    )
    fragment = await browser.get("/console/fragments/devices")
    assert r.status_code == 200 and "尚無閘道器" in fragment.text
    bad = await browser.patch(
        "/api/v1/users/me", json={"locale": "xx"}, headers={"X-CSRF-Token": csrf}
    )
    assert bad.status_code == 400 and "locale must be one of en, zh_TW" in bad.json()["detail"]
    # back to the browser's: empty
    await browser.patch("/api/v1/users/me", json={"locale": ""}, headers={"X-CSRF-Token": csrf})
    assert "<h1>Gateways</h1>" in (await browser.get("/console/devices")).text
