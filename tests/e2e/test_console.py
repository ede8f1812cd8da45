"""The console in a real browser, end to end: log in with the form, watch gateways come online
and a group task reach 100 % without reloading, acknowledge an alarm, create and revoke a token,
a viewer offered no write and refused one by the API, a phone-width layout, the keyboard.

Each test waits for conditions (Playwright's auto-waiting ``expect``), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from playwright.async_api import Page, Route, expect

from edgefleet.db.tables import Event
from edgefleet.domain.auth import Role, Scope
from edgefleet.domain.eventfilter import EventFilter
from edgefleet.domain.events import AlarmState, EventType
from edgefleet.domain.tasks import TaskKind
from edgefleet.services.fleet import Registration
from edgefleet.services.tasks import TaskSpec
from tests.e2e.conftest import Console
from tests.e2e.harness import Account, log_in, settle
from tests.gateways import eventually

PHONE = {"width": 390, "height": 844}
WRITE_CONTROLS = ", ".join(
    [
        "form:not([method=get]):not([hx-get]):not([data-language])", "[hx-post]", "[hx-put]",
        "[hx-patch]",
        "[hx-delete]", "[data-api]", "[data-api-json]", "[data-select]", "[data-group-action]",
        "[data-device-request]",
    ]
)  # fmt: skip
"""What makes a change: a form that is not a search (nor one's own language), an htmx or
console.js call to the API, a gateway selection, a group task or a request to a gateway."""


async def mark(page: Page) -> None:
    """Mark the loaded document: :func:`not_reloaded` then proves what changed came live."""
    await page.evaluate("window.__e2eMark = true")


async def not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__e2eMark === true"), "the page was reloaded"


async def fetch(page: Page, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """A call to the API from the page, as its script makes them: the session cookie and the
    page's CSRF token. Answers ``{"status": …, "body": …}``."""
    result: dict[str, Any] = await page.evaluate(
        """async ([method, path, body]) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(path, {
                method, credentials: "same-origin",
                headers: {"Content-Type": "application/json", "Accept": "application/json",
                          "X-CSRF-Token": csrf},
                body: body === null ? undefined : JSON.stringify(body),
            });
            const text = await r.text();
            let parsed = text;
            try { parsed = JSON.parse(text); } catch (e) { /* not JSON */ }
            return {status: r.status, body: parsed};
        }""",
        [method, path, body],
    )
    return result


# --- logging in -----------------------------------------------------------------------------------


async def test_log_in_with_the_form_then_log_out(console: Console, page: Page) -> None:
    await page.goto("/console/devices")
    await expect(page).to_have_url(
        re.compile(r"/console/login\?next=(/|%2F)console(/|%2F)devices$")
    )

    await page.get_by_label("Email").fill(console.operator.email)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#login-error")).to_have_text("wrong email or password")
    await expect(page).to_have_url(re.compile(r"/console/login"))

    await page.get_by_label("Password").fill(console.operator.password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/console/devices$"))
    await expect(page.get_by_role("heading", name="Gateways")).to_be_visible()
    await expect(page.locator("header .user")).to_contain_text(console.operator.email)
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["edgefleet_session"]["httpOnly"] is True

    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/console/login$"))
    await page.goto("/console/")
    await expect(page).to_have_url(re.compile(r"/console/login\?next="))


async def test_a_one_time_password_must_be_changed_first(console: Console, page: Page) -> None:
    user, one_time = await console.c.accounts.create_user("new@example.com", None, Role.OPERATOR)
    assert one_time is not None
    await log_in(page, Account(user.email, one_time, Role.OPERATOR), next="/console/password")
    await expect(page.get_by_role("heading", name="Choose your password")).to_be_visible()
    await page.goto("/console/devices")
    await expect(page).to_have_url(re.compile(r"/console/password$"))
    await page.get_by_label("Current password").fill(one_time)
    await page.get_by_label("New password").fill("a much longer password")
    await page.get_by_role("button", name="Save").click()
    await expect(page).to_have_url(re.compile(r"/console/$"))
    await expect(page.locator('[data-count="online"]')).to_have_text("0")


# --- live fleet -----------------------------------------------------------------------------------


async def test_gateways_come_online_on_the_open_page(console: Console, page: Page) -> None:
    uuids = await console.fleet.register(3)
    await log_in(page, console.operator, next="/console/devices")
    rows = page.locator("tr[data-device]")
    await expect(rows).to_have_count(3)
    for uuid in uuids:
        await expect(page.locator(f'tr[data-device="{uuid}"] [data-state]')).not_to_have_text(
            "online"
        )
    await mark(page)

    console.fleet.start(uuids, stay=False)  # only now, with the page open
    for uuid in uuids:
        await expect(page.locator(f'tr[data-device="{uuid}"] [data-state]')).to_have_text("online")
    await not_reloaded(page)

    # the dashboard counts them, and counts one going offline, live as well
    await page.goto("/console/")
    await expect(page.locator('[data-count="online"]')).to_have_text("3")
    await mark(page)
    console.fleet.crash(uuids[0])  # single-session gateways: it stays away
    await expect(page.locator('[data-count="offline"]')).to_have_text("1")
    await expect(page.locator('[data-count="online"]')).to_have_text("2")
    await not_reloaded(page)


# --- group tasks ----------------------------------------------------------------------------------


async def test_a_group_reboot_reaches_100_percent_live(console: Console, page: Page) -> None:
    c, fleet = console.c, console.fleet
    uuids = await fleet.register(3)
    fleet.start(uuids[:2])  # these two come back from their reboot at once
    fleet.start(uuids[2:], stay=False)  # this one stays away until started again
    await fleet.connected(uuids)
    group = await c.fleet.create_group("line 1", "press shop")
    gid = group.group.id
    await c.fleet.add_to_group(gid, uuids)

    await log_in(page, console.operator, next="/console/groups")
    await expect(page.get_by_test_id(f"group-{gid}")).to_contain_text("line 1")
    await page.get_by_test_id(f"group-reboot-{gid}").click()
    form = page.get_by_test_id("group-task-form")  # what to run, and the policy
    await expect(form).to_be_visible()
    await expect(form.get_by_test_id("policy-none")).to_be_checked()
    await form.get_by_test_id("group-task-submit").click()

    async def created() -> bool:
        total, _ = await c.tasks.list_tasks(kinds=[TaskKind.GROUP], group_id=gid, limit=1)
        return total == 1

    await eventually(created, 10)
    _, (view,) = await c.tasks.list_tasks(kinds=[TaskKind.GROUP], group_id=gid, limit=1)
    uuid = view.task.uuid
    if "/console/tasks/" not in page.url:
        await page.goto(f"/console/tasks/{uuid}")
    progress = page.get_by_test_id(f"task-progress-{uuid}").first
    await expect(progress).to_be_visible()
    await mark(page)

    async def two_back() -> bool:
        return (await c.tasks.get(uuid)).by_state().get("SUCCESS", 0) == 2

    await eventually(two_back, 15)
    await expect(progress).to_have_attribute("data-percent", re.compile(r"^6[67]$"))
    assert fleet.gateways[uuids[2]].reboots == 1
    fleet.start(uuids[2:])  # back from its reboot: the task completes
    await expect(progress).to_have_attribute("data-percent", "100")
    await not_reloaded(page)
    assert all(fleet.gateways[u].reboots == 1 for u in uuids[:2])


# --- alarms ---------------------------------------------------------------------------------------


async def test_an_offline_alarm_is_acknowledged_on_the_events_page(
    console: Console, page: Page
) -> None:
    c = console.c
    (uuid,) = await console.fleet.register(1)
    console.fleet.start([uuid], stay=False)
    await console.fleet.connected([uuid])
    await log_in(page, console.operator, next="/console/events")
    await mark(page)

    console.fleet.crash(uuid)

    async def raised() -> bool:
        found = await c.event_log.query(
            EventFilter(alarm=AlarmState.OPEN), before_id=None, limit=10
        )
        return any(e.type == EventType.DEVICE_OFFLINE for e in found)

    await eventually(raised, 10)
    (alarm,) = await c.event_log.query(EventFilter(alarm=AlarmState.OPEN), before_id=None, limit=10)
    row = page.get_by_test_id(f"event-{alarm.id}")
    await expect(row).to_be_visible()  # came in live
    await expect(row).to_contain_text("offline")
    await expect(page.locator("[data-unacknowledged]")).to_have_text("1")  # the bell
    await not_reloaded(page)

    await expect(page.get_by_test_id(f"event-state-{alarm.id}")).to_contain_text("Unacknowledged")
    await page.get_by_test_id(f"ack-{alarm.id}").click()
    await expect(page.get_by_test_id(f"event-state-{alarm.id}")).to_contain_text(
        f"Acknowledged by {console.operator.email}"
    )
    await expect(page.get_by_test_id(f"ack-{alarm.id}")).to_have_count(0)
    await expect(page.locator("[data-unacknowledged]")).to_have_count(0)
    stored = await c.event_log.get(alarm.id)
    assert stored.acked_by == console.operator.email


async def test_an_event_stored_while_the_stream_connects_still_comes_live(
    console: Console, page: Page
) -> None:
    """The page's stream starts after the newest event the page was rendered with: an event
    stored before the stream is subscribed (held back here until it is stored) is replayed.
    Without that the page missed it and never refreshed (a race the offline alarm test lost
    now and then: the gateway's crash came before the stream of the page had subscribed)."""
    c = console.c
    stored = asyncio.Event()

    async def held(route: Route) -> None:
        await stored.wait()
        await route.continue_()

    await page.route("**/api/v1/events/stream*", held)
    await log_in(page, console.operator, next="/console/events")
    await mark(page)
    view, _ = await c.fleet.register_device(Registration(display_name="gw", mac="0090e8000001"))

    async def registered() -> list[Event]:
        found = await c.event_log.query(EventFilter(), before_id=None, limit=10)
        return [e for e in found if e.device_uuid == view.device.uuid]

    async def any_registered() -> bool:
        return bool(await registered())

    await eventually(any_registered, 10)
    stored.set()
    (event,) = await registered()
    await expect(page.get_by_test_id(f"event-{event.id}")).to_be_visible()  # came in live
    await not_reloaded(page)


# --- API tokens -----------------------------------------------------------------------------------


async def test_a_token_is_shown_once_and_revoked(console: Console, page: Page) -> None:
    await log_in(page, console.operator, next="/console/tokens")
    form = page.get_by_test_id("token-create")
    await form.get_by_label("Description").fill("nightly export")
    await form.get_by_label("Read/Write").check()
    await form.get_by_role("button", name="Create token").click()

    dialog = page.locator("#secret-dialog")
    await expect(dialog).to_be_visible()
    secret = (await dialog.locator("[data-secret]").text_content() or "").strip()
    assert len(secret) >= 20
    (token,) = await console.c.accounts.list_tokens(
        await _principal(console, console.operator), all_users=False
    )
    assert token.prefix == secret[:10]
    await dialog.get_by_role("button", name="Done").click()
    await expect(dialog).to_be_hidden()

    row = page.get_by_test_id(f"token-{token.id}")
    await expect(row).to_contain_text("nightly export")
    await expect(row).to_contain_text(secret[:10])  # the list shows the prefix only
    assert secret not in (await page.locator("#tokens").inner_html())
    await page.reload()  # shown once: never again
    await expect(row).to_contain_text("nightly export")
    assert secret not in await page.content()

    # the token works against the API (no cookie here) until it is revoked
    async with httpx.AsyncClient(base_url=console.url) as api:
        r = await api.get("/api/v1/devices", headers={"mx-api-token": secret})
        assert r.status_code == 200
        await page.get_by_test_id(f"token-revoke-{token.id}").click()  # confirmed
        await expect(page.get_by_test_id(f"token-state-{token.id}")).to_contain_text("revoked")
        await expect(page.get_by_test_id(f"token-revoke-{token.id}")).to_have_count(0)
        r = await api.get("/api/v1/devices", headers={"mx-api-token": secret})
        assert r.status_code == 401


async def _principal(console: Console, account: Account) -> Any:
    login = await console.c.accounts.login(account.email, account.password)
    principal = await console.c.accounts.principal_for_bearer(login.secret)
    assert principal is not None
    return principal


# --- roles ----------------------------------------------------------------------------------------


async def test_a_viewer_is_offered_no_write_and_the_api_refuses_one(
    console: Console, page: Page
) -> None:
    c = console.c
    uuids = await console.fleet.register(2)
    group = await c.fleet.create_group("line 2")
    gid = group.group.id
    await c.fleet.add_to_group(gid, uuids)
    console.fleet.start(uuids[:1], stay=False)
    await console.fleet.connected(uuids[:1])
    console.fleet.crash(uuids[0])

    async def alarmed() -> bool:
        found = await c.event_log.query(EventFilter(alarm=AlarmState.OPEN), before_id=None, limit=1)
        return bool(found)

    await eventually(alarmed, 10)
    (alarm,) = await c.event_log.query(EventFilter(alarm=AlarmState.OPEN), before_id=None, limit=1)

    task = await c.tasks.create(
        TaskSpec(kind=TaskKind.GROUP, method="post", resource="/system/reboot", group_id=gid)
    )

    await log_in(page, console.viewer, next="/console/devices")
    await expect(page.locator("tr[data-device]")).to_have_count(2)
    assert await page.locator("[data-bulk], [data-select], [data-select-all]").count() == 0
    await page.goto("/console/groups")
    await expect(page.get_by_test_id(f"group-{gid}")).to_be_visible()
    assert await page.locator('[data-testid^="group-reboot-"], #group-task-dialog').count() == 0
    await page.goto("/console/events")
    await expect(page.get_by_test_id(f"event-{alarm.id}")).to_contain_text("Unacknowledged")
    assert await page.locator('[data-testid^="ack-"], [data-testid^="clear-"]').count() == 0

    # no page of the fleet has a control that changes anything
    fleet_pages = ["/console/", "/console/devices", f"/console/devices/{uuids[0]}"]
    fleet_pages += ["/console/map", "/console/groups", f"/console/groups/{gid}"]
    fleet_pages += ["/console/tasks", f"/console/tasks/{task.task.uuid}", "/console/events"]
    fleet_pages += ["/console/files"]
    for path in fleet_pages:
        await page.goto(path)
        await settle(page)
        assert await page.locator("main h1").count() == 1, path
        assert await page.locator("main").get_by_text("Not allowed").count() == 0, path
        found = await page.locator(WRITE_CONTROLS).evaluate_all(
            "(els) => els.map((e) => e.outerHTML.slice(0, 120))"
        )
        assert not found, f"{path} offers a viewer write controls: {found}"
    await page.goto("/console/users")  # an admin's page
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()

    # with the session and its CSRF token, the API still refuses every fleet write
    writes = [
        ("POST", "/api/v1/groups", {"name": "mine"}),
        ("POST", f"/api/v1/groups/{gid}/devices", uuids),
        ("POST", "/api/v1/groupTasks",
         {"groupId": gid, "payload": {"method": "post", "resource": "/system/reboot"}}),
        ("POST", f"/api/v1/events/{alarm.id}/acknowledge", None),
        ("DELETE", f"/api/v1/devices/{uuids[1]}", None),
    ]  # fmt: skip
    for method, path, body in writes:
        r = await fetch(page, method, path, body)
        assert r["status"] == 403, (method, path, r)
        assert "CSRF" not in str(r["body"]), r  # refused for the role, not for the token
    assert (await fetch(page, "GET", "/api/v1/groups"))["status"] == 200
    assert len(await c.fleet.group_device_uuids(gid)) == 2
    assert (await c.event_log.get(alarm.id)).acked_by is None


# --- layout and keyboard --------------------------------------------------------------------------


async def _fits(page: Page) -> None:
    width = await page.evaluate("window.innerWidth")
    scroll = await page.evaluate("document.scrollingElement.scrollWidth")
    assert scroll <= width, f"{page.url}: {scroll} px wide in a {width} px window"


async def test_login_and_dashboard_fit_a_phone(console: Console, page: Page) -> None:
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    uuids = await console.fleet.register(4)
    console.fleet.start(uuids)
    await console.fleet.connected(uuids)

    await page.goto("/console/login")
    await expect(page.get_by_label("Email")).to_be_visible()
    await _fits(page)
    await log_in(page, console.admin)
    await expect(page.locator('[data-count="online"]')).to_have_text("4")
    await expect(page.locator("canvas[data-chart]").first).to_be_visible()
    await _fits(page)
    await page.goto("/console/devices")
    await expect(page.locator("tr[data-device]")).to_have_count(4)
    await _fits(page)


async def _activity(console: Console) -> tuple[str, str]:
    """Gateways in a group after a finished group reboot, an offline alarm, a token: pages with
    their long content (uuids, task names). Answers a gateway's uuid and the task's."""
    c, fleet = console.c, console.fleet
    uuids = await fleet.register(3)
    fleet.start(uuids[:2])
    fleet.start(uuids[2:], stay=False)
    await fleet.connected(uuids)
    gid = (await c.fleet.create_group("a group with a rather long name", "hall A")).group.id
    await c.fleet.add_to_group(gid, uuids[:2])
    task = await c.tasks.create(
        TaskSpec(kind=TaskKind.GROUP, method="post", resource="/system/reboot", group_id=gid)
    )
    fleet.crash(uuids[2])

    async def settled() -> bool:
        done = (await c.tasks.get(task.task.uuid)).by_state().get("SUCCESS", 0) == 2
        alarms = await c.event_log.query(
            EventFilter(alarm=AlarmState.OPEN), before_id=None, limit=1
        )
        return done and bool(alarms)

    await eventually(settled, 15)
    await c.accounts.create_token(
        await _principal(console, console.admin), "a token for the nightly export", Scope.READ
    )
    return uuids[0], task.task.uuid


async def _fits_everywhere(page: Page, paths: list[str]) -> None:
    overflowing = []
    for path in paths:
        await page.goto(path)
        await settle(page)
        width = await page.evaluate("window.innerWidth")
        scroll = await page.evaluate("document.scrollingElement.scrollWidth")
        if scroll > width:
            overflowing.append(f"{path}: {scroll} px")
    assert not overflowing, f"wider than a {PHONE['width']} px phone: {overflowing}"


async def test_every_main_page_fits_a_phone(console: Console, page: Page) -> None:
    _, task = await _activity(console)
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await log_in(page, console.admin)
    pages = ["/console/", "/console/devices", "/console/map", "/console/groups"]
    pages += ["/console/tasks", f"/console/tasks/{task}", "/console/events", "/console/files"]
    pages += ["/console/tokens", "/console/users", "/console/audit", "/console/settings"]
    await _fits_everywhere(page, pages)


async def test_a_gateway_page_fits_a_phone(console: Console, page: Page) -> None:
    gateway, _ = await _activity(console)
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await log_in(page, console.admin)
    await _fits_everywhere(page, [f"/console/devices/{gateway}"])


async def _tab_to(page: Page, selector: str, presses: int = 40) -> None:
    """Press Tab until ``selector`` has the focus."""
    target = page.locator(selector)
    for _ in range(presses):
        await page.keyboard.press("Tab")
        if await target.evaluate("e => e === document.activeElement"):
            return
    raise AssertionError(f"{selector} not reached with {presses} Tab presses")


async def test_the_keyboard_alone_logs_in_and_reaches_the_menu(
    console: Console, page: Page
) -> None:
    await page.goto("/console/login")
    await page.evaluate("document.activeElement && document.activeElement.blur()")
    await _tab_to(page, "#email")
    await page.keyboard.type(console.viewer.email)
    await _tab_to(page, "#password", presses=1)
    await page.keyboard.type(console.viewer.password)
    await _tab_to(page, "#login-form button[type=submit]", presses=1)
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/console/$"))

    await page.evaluate("document.activeElement && document.activeElement.blur()")
    await _tab_to(page, "a.skip")  # the skip link comes first
    await _tab_to(page, 'nav a[href="/console/devices"]')
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/console/devices$"))
    await _tab_to(page, "button[data-logout]")
    focused = await page.evaluate(
        "getComputedStyle(document.activeElement).outlineStyle"
        " + ' ' + getComputedStyle(document.activeElement).boxShadow"
    )
    assert focused != "none none", "the focused control shows no focus ring"
