"""The console's events, API tokens, users, audit and settings pages (web/admin.py): who sees
which page and which controls, what the fragments list after changes made through the API,
and that no secret is ever rendered; on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container
from edgefleet.db.repos.events import EventRepo
from edgefleet.domain.auth import Role
from edgefleet.domain.events import EventType, NewEvent, Severity, StoredEvent
from edgefleet.services.fleet import Registration
from edgefleet.settings import HTTPSettings, MQTTSettings, Settings, StorageSettings
from edgefleet.web.views import PAGE_SIZE
from tests.conftest import Callers

PASSWORD = "correct horse battery"
NOT_ALLOWED = "Not allowed"


@dataclass
class Session:
    """A logged-in browser: its cookie jar, and the CSRF header its writes send."""

    http: httpx.AsyncClient
    csrf: str
    email: str
    user_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf}

    async def html(self, path: str, **params: str | list[str]) -> str:
        """A page as HTML: 200, or 403 with the "Not allowed" page."""
        r = await self.http.get(path, params=params or None, headers={"Accept": "text/html"})
        assert r.status_code in (200, 403), (path, r.status_code, r.text[:300])
        assert (r.status_code == 403) is (NOT_ALLOWED in r.text), (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html")
        return r.text


Login = Callable[[Role], Awaitable[Session]]


@pytest.fixture
def app(container: Container) -> FastAPI:
    return create_app(container)


@pytest.fixture
async def login(app: FastAPI, callers: Callers) -> AsyncIterator[Login]:
    """Log a new user of a role in, through the console's login call, in a browser of its own."""
    opened: list[httpx.AsyncClient] = []

    async def open_session(role: Role) -> Session:
        caller = await callers.user(role)
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("198.51.100.9", 40000)),
            base_url="http://testserver",
        )
        opened.append(http)
        r = await http.post(
            "/api/v1/auth/login", json={"email": caller.email, "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        return Session(http, r.json()["csrfToken"], caller.email, caller.user_id)

    yield open_session
    for http in opened:
        await http.aclose()


async def store(c: Container, *events: NewEvent) -> list[StoredEvent]:
    async with c.db.session() as s:
        return await EventRepo(s).insert(events)


def alarm(device: str, text: str, severity: Severity = Severity.MAJOR) -> NewEvent:
    return NewEvent(
        type=EventType.GATEWAY_EVENT,
        at=datetime.now(UTC),
        device_uuid=device,
        resource="/system/firmware",
        text=text,
        severity=severity,
    )


def note(device: str | None, text: str) -> NewEvent:
    return NewEvent(
        type=EventType.PROPERTY_UPDATE, at=datetime.now(UTC), device_uuid=device, text=text
    )


async def gateway(c: Container, name: str = "press-17") -> str:
    view, _ = await c.fleet.register_device(Registration(display_name=name, mac="0090e8000011"))
    return view.device.uuid


def start_tag(html: str, name: str, testid: str) -> str:
    """The start tag ``<name …>`` with ``data-testid=testid`` (attributes may hold ``>``)."""
    attrs = r"""(?:[^>"']|"[^"]*"|'[^']*')*"""
    m = re.search(rf'<{name}\b{attrs}data-testid="{re.escape(testid)}"{attrs}>', html, re.S)
    assert m, f"no <{name}> {testid}"
    return m.group(0)


def row_of(html: str, testid: str) -> str:
    """The ``<tr>`` with ``data-testid=testid``."""
    m = re.search(rf'<tr data-testid="{re.escape(testid)}".*?</tr>', html, re.S)
    assert m, f"no row {testid}"
    return m.group(0)


# --- who sees which page --------------------------------------------------------------------


PAGES = [
    "/console/events",
    "/console/tokens",
    "/console/users",
    "/console/audit",
    "/console/settings",
]
ADMIN_ONLY = {"/console/users", "/console/audit", "/console/settings"}


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.ADMIN])
async def test_each_page_renders_for_its_roles_and_refuses_the_others(
    login: Login, role: Role
) -> None:
    me = await login(role)
    for path in PAGES:
        html = await me.html(path)
        allowed = path not in ADMIN_ONLY or role is Role.ADMIN
        assert (NOT_ALLOWED in html) is not allowed, (path, role)
        assert ('aria-current="page"' in html) is allowed, (path, role)
    links = await me.html("/console/events")
    assert ('href="/console/users"' in links) is (role is Role.ADMIN)


async def test_pages_send_strangers_to_the_login_and_fragments_answer_401(
    client: httpx.AsyncClient, login: Login
) -> None:
    for path in PAGES:
        r = await client.get(path, params={"alarm": "open"})
        assert r.status_code == 303
        assert r.headers["location"].startswith("/console/login?next=")
    fragments = ["events", "tokens", "users", "audit"]
    for name in fragments:
        assert (await client.get(f"/console/fragments/{name}")).status_code == 401
    operator = await login(Role.OPERATOR)
    for name in fragments:
        r = await operator.http.get(f"/console/fragments/{name}")
        assert r.status_code == (401 if name in ("users", "audit") else 200), name


# --- events and alarms ----------------------------------------------------------------------


async def test_viewer_sees_alarms_without_controls_operator_with(
    container: Container, login: Login
) -> None:
    uuid = await gateway(container)
    stored = await store(container, alarm(uuid, "FW_UPGRADE_FAIL"), note(uuid, "cpu = 3"))
    a, n = stored[0].id, stored[1].id
    viewer, operator = await login(Role.VIEWER), await login(Role.OPERATOR)

    html = await viewer.html("/console/fragments/events")
    assert f'data-testid="event-{a}"' in html and f'data-testid="event-{n}"' in html
    assert "press-17" in html and f'href="/console/devices/{uuid}"' in html
    assert "Unacknowledged" in row_of(html, f"event-{a}")
    for control in (f"ack-{a}", f"clear-{a}", f"select-{a}", "events-ack-selected", "hx-post"):
        assert control not in html, control

    html = await operator.html("/console/fragments/events")
    assert f'data-testid="ack-{a}"' in html and f'data-testid="clear-{a}"' in html
    assert f'hx-post="/api/v1/events/{a}/acknowledge"' in html
    assert f'hx-post="/api/v1/events/{a}/clear"' in html
    assert (
        'data-testid="events-ack-selected"' in html
        and 'hx-post="/api/v1/events/acknowledge"' in html
    )
    assert f'data-testid="select-{a}"' in html
    # a plain event is no alarm: nothing to acknowledge
    plain = row_of(html, f"event-{n}")
    assert "ack-" not in plain and "clear-" not in plain and "not an alarm" in plain
    # every write control goes to the API and reports through console.js
    posts = [
        t for t in re.findall(r"""<button\b(?:[^>"']|"[^"]*"|'[^']*')*>""", html) if "hx-post" in t
    ]
    assert len(posts) >= 4
    for tag in posts:
        assert "data-api" in tag and 'hx-swap="none"' in tag


async def test_unacknowledged_filter_and_an_acknowledged_alarm_after_the_api_call(
    container: Container, login: Login
) -> None:
    uuid = await gateway(container)
    first, second, plain = await store(
        container, alarm(uuid, "REBOOT_FAIL"), alarm(uuid, "FW_UPGRADE_FAIL"), note(uuid, "x = 1")
    )
    operator = await login(Role.OPERATOR)

    # the bell's link: the page keeps the filter for its fragment and shows it chosen
    page = await operator.html("/console/events", alarm="unacknowledged")
    assert 'hx-get="/console/fragments/events?alarm=unacknowledged"' in page
    assert '<option value="unacknowledged" selected>' in page
    assert 'hx-trigger="load, refresh from:body' in page

    html = await operator.html("/console/fragments/events", alarm="unacknowledged")
    assert f"event-{first.id}" in html and f"event-{second.id}" in html
    assert f"event-{plain.id}" not in html

    r = await operator.http.post(f"/api/v1/events/{first.id}/acknowledge", headers=operator.headers)
    assert r.status_code == 200 and r.json()["acknowledged"] is True

    html = await operator.html("/console/fragments/events", alarm="unacknowledged")
    assert f"event-{first.id}" not in html and f"event-{second.id}" in html
    html = await operator.html("/console/fragments/events")
    acked = row_of(html, f"event-{first.id}")
    assert 'data-alarm="acknowledged"' in acked and "Acknowledged" in acked
    assert operator.email in acked
    assert f"ack-{first.id}" not in acked and f'data-testid="clear-{first.id}"' in acked

    # the bulk call the "Acknowledge selected" button makes, then a clear
    r = await operator.http.post(
        "/api/v1/events/acknowledge", json={"ids": [second.id]}, headers=operator.headers
    )
    assert r.status_code == 200 and r.json() == {"changed": 1}
    r = await operator.http.post(f"/api/v1/events/{first.id}/clear", headers=operator.headers)
    assert r.status_code == 200
    html = await operator.html("/console/fragments/events", alarm="unacknowledged")
    assert 'data-testid="events-empty"' in html and "No event matches" in html
    html = await operator.html("/console/fragments/events", alarm="cleared")
    cleared = row_of(html, f"event-{first.id}")
    assert "Cleared" in cleared and "clear-" not in cleared and "select-" not in cleared
    assert f"event-{second.id}" not in html


async def test_event_filters_by_type_severity_device_name_or_uuid_and_text(
    container: Container, login: Login
) -> None:
    a = await gateway(container, "alpha")
    view, _ = await container.fleet.register_device(
        Registration(display_name="beta", mac="0090e8000022")
    )
    b = view.device.uuid
    warn, crit, prop, server = await store(
        container,
        alarm(a, "offline for a while", Severity.WARNING),
        alarm(b, "disk FULL", Severity.CRITICAL),
        note(b, "firmware = 1.2"),
        note(None, "registered"),
    )
    viewer = await login(Role.VIEWER)

    async def shown(**params: str) -> set[int]:
        html = await viewer.html("/console/fragments/events", **params)
        return {int(i) for i in re.findall(r'data-testid="event-(\d+)"', html)}

    every = {warn.id, crit.id, prop.id, server.id}
    assert await shown() == every
    assert await shown(severity="major") == {crit.id}
    assert await shown(severity="warning") == {warn.id, crit.id}
    assert await shown(type="property_update") == {prop.id, server.id}
    assert await shown(device=b) == {crit.id, prop.id}
    assert await shown(q="full") == {crit.id}
    assert await shown(alarm="open", device=a) == {warn.id}
    assert await shown(type="", severity="", alarm="", device="", q="") == every
    # newest first
    html = await viewer.html("/console/fragments/events")
    order = [int(i) for i in re.findall(r'data-testid="event-(\d+)"', html)]
    assert order == sorted(order, reverse=True)
    # a wrong filter is said, not a server error
    html = await viewer.html("/console/fragments/events", severity="loud")
    assert 'data-testid="events-error"' in html and "severity must be one of" in html
    html = await viewer.html("/console/fragments/events", device="not-a-gateway")
    assert 'data-testid="events-error"' in html and "No gateway is named not-a-gateway." in html
    # by name: the whole name in any letter case, else a part of it
    assert await shown(device="ALPHA") == {warn.id}
    assert await shown(device="et") == {crit.id, prop.id}
    assert await shown(device="alpha", severity="warning") == {warn.id}
    html = await viewer.html("/console/fragments/events", cursor="garbage")
    assert 'data-testid="events-error"' in html
    # the page keeps what was asked in its form
    page = await viewer.html("/console/events", q="full", severity="major")
    assert 'value="full"' in page and '<option value="major" selected>' in page


async def test_older_link_pages_through_events_by_cursor(
    container: Container, login: Login
) -> None:
    uuid = await gateway(container)
    start = datetime.now(UTC) - timedelta(hours=1)
    stored = await store(
        container,
        *[
            NewEvent(
                type=EventType.PROPERTY_UPDATE,
                at=start + timedelta(seconds=i),
                device_uuid=uuid,
                text=f"n = {i}",
            )
            for i in range(PAGE_SIZE + 7)
        ],
    )
    viewer = await login(Role.VIEWER)
    html = await viewer.html("/console/fragments/events", type="property_update")
    first = [int(i) for i in re.findall(r'data-testid="event-(\d+)"', html)]
    assert len(first) == PAGE_SIZE and "events-newest" not in html
    m = re.search(r'href="(/console/events\?[^"]+)" data-testid="events-older"', html)
    assert m, "no older link"
    older = m.group(1).replace("&amp;", "&")
    assert older.startswith("/console/events?type=property_update&cursor=")
    # the page hands the cursor on to its fragment
    page = await viewer.html(older)
    query = older.split("?", 1)[1].replace("&", "&amp;")
    assert f'hx-get="/console/fragments/events?{query}"' in page
    html = await viewer.html(older.replace("/console/events", "/console/fragments/events"))
    rest = [int(i) for i in re.findall(r'data-testid="event-(\d+)"', html)]
    assert len(rest) == 7 and max(rest) < min(first)
    assert sorted(first + rest) == sorted(e.id for e in stored)
    assert "events-older" not in html and 'data-testid="events-newest"' in html


# --- API tokens -----------------------------------------------------------------------------


async def test_tokens_page_lists_own_tokens_and_never_shows_a_secret(login: Login) -> None:
    operator, other = await login(Role.OPERATOR), await login(Role.OPERATOR)
    page = await operator.html("/console/tokens")
    form = start_tag(page, "form", "token-create")
    assert 'hx-post="/api/v1/tokens"' in form and 'hx-swap="none"' in form
    assert 'data-secret-field="token"' in form and "data-api" in form
    assert "expiresAt" in form and "toISOString()" in form
    assert 'maxlength="150"' in page
    assert 'value="read"' in page and 'value="read/write"' in page and 'value="broker"' not in page
    html = await operator.html("/console/fragments/tokens")
    assert 'data-testid="tokens-empty"' in html

    # what the form sends (json-enc): description, scope, expiresAt from the chosen expiry
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    r = await operator.http.post(
        "/api/v1/tokens",
        json={"description": "line 4 dashboard", "scope": "read/write", "expiresAt": expires},
        headers=operator.headers,
    )
    assert r.status_code == 201, r.text
    made = r.json()
    secret, token_id = made["token"], made["id"]
    r = await operator.http.post(
        "/api/v1/tokens",
        json={"description": "", "scope": "read", "expiresAt": None},
        headers=operator.headers,
    )
    assert r.status_code == 201, r.text
    second = r.json()
    r = await other.http.post(
        "/api/v1/tokens", json={"description": "not yours", "scope": "read"}, headers=other.headers
    )
    assert r.status_code == 201

    for html in (
        await operator.html("/console/tokens"),
        await operator.html("/console/fragments/tokens"),
    ):
        assert secret not in html and second["token"] not in html
    html = await operator.html("/console/fragments/tokens")
    row = row_of(html, f"token-{token_id}")
    assert "line 4 dashboard" in row and "Read/Write" in row and made["prefix"] in row
    assert f'hx-delete="/api/v1/tokens/{token_id}"' in row
    assert f'data-testid="token-revoke-{token_id}"' in row and "hx-confirm" in row
    assert "never" in row  # not used yet
    assert "(no description)" in row_of(html, f"token-{second['id']}")
    assert "not yours" not in html

    r = await operator.http.delete(f"/api/v1/tokens/{token_id}", headers=operator.headers)
    assert r.status_code == 200
    html = await operator.html("/console/fragments/tokens")
    row = row_of(html, f"token-{token_id}")
    assert "revoked" in row and "token-revoke-" not in row
    assert f'data-testid="token-revoke-{second["id"]}"' in html


async def test_a_viewer_manages_read_tokens_and_an_admin_sees_everyones(login: Login) -> None:
    viewer = await login(Role.VIEWER)
    page = await viewer.html("/console/tokens")
    assert 'data-testid="token-create"' in page
    assert 'value="read"' in page and 'value="read/write"' not in page
    r = await viewer.http.post(
        "/api/v1/tokens", json={"description": "report", "scope": "read"}, headers=viewer.headers
    )
    assert r.status_code == 201
    viewer_token = r.json()
    html = await viewer.html("/console/fragments/tokens", all="true")  # not an admin: own only
    assert f'data-testid="token-revoke-{viewer_token["id"]}"' in html
    assert viewer_token["token"] not in html

    admin = await login(Role.ADMIN)
    page = await admin.html("/console/tokens")
    assert 'value="broker"' in page and 'data-testid="tokens-toggle-all"' in page
    html = await admin.html("/console/fragments/tokens")
    assert f"token-{viewer_token['id']}" not in html
    html = await admin.html("/console/fragments/tokens", all="true")
    row = row_of(html, f"token-{viewer_token['id']}")
    assert viewer.email in row and f"token-revoke-{viewer_token['id']}" in row
    assert viewer_token["token"] not in html


# --- users ----------------------------------------------------------------------------------


async def test_admin_creates_changes_and_disables_users(login: Login) -> None:
    admin = await login(Role.ADMIN)
    page = await admin.html("/console/users")
    form = start_tag(page, "form", "user-create")
    assert 'hx-post="/api/v1/users"' in form and "data-api" in form
    assert 'data-secret-field="oneTimePassword"' in form
    html = await admin.html("/console/fragments/users")
    me = row_of(html, f"user-{admin.user_id}")
    assert "(you)" in me and f"user-disable-{admin.user_id}" not in me

    r = await admin.http.post(
        "/api/v1/users", json={"email": "new@example.com", "role": "viewer"}, headers=admin.headers
    )
    assert r.status_code == 201, r.text
    new = r.json()
    password = new["oneTimePassword"]
    html = await admin.html("/console/fragments/users")
    row = row_of(html, f"user-{new['id']}")
    assert "new@example.com" in row and "one-time password" in row
    assert '<option value="viewer" selected>' in row
    assert f'hx-patch="/api/v1/users/{new["id"]}"' in row
    assert f'data-testid="user-role-{new["id"]}"' in row
    assert f'data-testid="user-disable-{new["id"]}"' in row
    assert password not in html and password not in await admin.html("/console/users")

    # the role form and the disable button, as the browser sends them
    r = await admin.http.patch(
        f"/api/v1/users/{new['id']}", json={"role": "operator"}, headers=admin.headers
    )
    assert r.status_code == 200
    r = await admin.http.patch(
        f"/api/v1/users/{new['id']}", json={"disabled": True}, headers=admin.headers
    )
    assert r.status_code == 200
    row = row_of(await admin.html("/console/fragments/users"), f"user-{new['id']}")
    assert '<option value="operator" selected>' in row and "disabled" in row
    assert f'data-testid="user-enable-{new["id"]}"' in row and "user-disable-" not in row


# --- audit ----------------------------------------------------------------------------------


async def test_audit_lists_changes_with_filters_and_cursor(
    container: Container, login: Login
) -> None:
    admin = await login(Role.ADMIN)
    for n in range(3):
        r = await admin.http.post(
            "/api/v1/tokens", json={"description": f"t{n}", "scope": "read"}, headers=admin.headers
        )
        assert r.status_code == 201
    r = await admin.http.post(
        "/api/v1/tokens", json={"description": "x" * 151, "scope": "read"}, headers=admin.headers
    )
    assert r.status_code in (400, 422)
    r = await admin.http.delete("/api/v1/tokens/999999", headers=admin.headers)
    assert r.status_code == 404

    html = await admin.html("/console/fragments/audit")
    assert html.count('<tr data-testid="audit-') >= 5
    assert "tokens.create" in html and admin.email in html
    html = await admin.html("/console/fragments/audit", outcome="failure")
    assert "tokens.revoke" in html and "success" not in html
    html = await admin.html("/console/fragments/audit", action="tokens.rev")
    assert html.count('<tr data-testid="audit-') == 1
    html = await admin.html("/console/fragments/audit", actor="nobody@example.com")
    assert 'data-testid="audit-empty"' in html and "No entry matches" in html
    html = await admin.html("/console/fragments/audit", outcome="maybe")
    assert 'data-testid="audit-error"' in html

    page = await admin.html("/console/audit", outcome="failure")
    assert 'hx-get="/console/fragments/audit?outcome=failure"' in page
    assert '<option value="failure" selected>' in page

    # more than a page: an Older link with the id cursor
    for _ in range(PAGE_SIZE):
        r = await admin.http.delete("/api/v1/tokens/999999", headers=admin.headers)
    html = await admin.html("/console/fragments/audit", action="tokens.revoke")
    assert html.count('<tr data-testid="audit-') == PAGE_SIZE
    m = re.search(r'href="(/console/audit\?[^"]+)" data-testid="audit-older"', html)
    assert m
    older = m.group(1).replace("&amp;", "&").replace("/console/audit", "/console/fragments/audit")
    html = await admin.html(older)
    assert html.count('<tr data-testid="audit-') == 1 and "audit-newest" in html


# --- settings -------------------------------------------------------------------------------


async def test_settings_show_facts_and_no_secret(
    container: Container, login: Login, tmp_path: Path
) -> None:
    admin = await login(Role.ADMIN)
    html = await admin.html("/console/settings")
    assert "test-secret-key-not-for-production" not in html
    assert 'data-testid="settings-version"' in html and "EDGEFLEET_SECRET_KEY (configured)" in html

    db_password = "pg-Pa55-word-in-url"
    mqtt_password = "mqtt-server-password-xyz"
    container.settings = Settings(
        data_dir=tmp_path,
        database_url=f"postgresql+asyncpg://edge:{db_password}@db.internal:5433/fleet?password={db_password}",
        secret_key="another-configured-secret-key",
        http=HTTPSettings(public_url="https://fleet.example.com"),
        mqtt=MQTTSettings(gateway_port=8883, psk_hint="plant-a", server_password=mqtt_password),
        storage=StorageSettings(
            url="s3://edge-files/fleet", s3_endpoint_url="https://key:s3secret@minio.internal:9000"
        ),
    )
    html = await admin.html("/console/settings")
    for secret in (db_password, "another-configured-secret-key", mqtt_password, "s3secret"):
        assert secret not in html, secret
    for fact in (
        "POST https://fleet.example.com/api/v1/devices",
        "fleet.example.com:8883",
        "plant-a",
        "PostgreSQL",
        "db.internal:5433",
        "fleet",
        "edge-files",
        "https://minio.internal:9000",
        "embedded Mosquitto",
        "30 days",
    ):
        assert fact in html, fact

    for role in (Role.OPERATOR, Role.VIEWER):
        other = await login(role)
        html = await other.html("/console/settings")
        assert NOT_ALLOWED in html and "db.internal" not in html
