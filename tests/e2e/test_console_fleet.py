"""The console for real fleets, in Chromium: live updates that never touch what the operator
is doing (a filtered, paged selection and an unsaved role keep through live events), bulk
actions on exactly what was selected, paging and sorting at 1,000 gateways, the map, managing
a gateway, the 404 page, the language switch, a navigation that fits 1280 px and tables that
wrap between words.

Live events come from simulated gateways that report a property every half second or so;
each test checks that the page did refresh while they arrived (else "intact" proves
nothing). Tests wait on conditions, never on fixed sleeps, except where a span of time with
events arriving is the point (the 5 s of the issue), measured with the page's own refreshes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from playwright.async_api import Page, Request, expect
from sqlalchemy import update

from edgefleet.db.tables import Device
from edgefleet.domain.auth import Role
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.devices import indexed_properties
from edgefleet.domain.tasks import TaskKind
from edgefleet.services.fleet import Registration
from edgefleet.simulator.gateway import Behaviour
from tests.e2e.conftest import Console
from tests.e2e.harness import log_in, settle
from tests.gateways import eventually

MODEL = "UC-8112-LX-CG"
CHATTY = Behaviour(event_interval=0.5, reboot_delay=0.2, boot_seconds=0.3)
"""Gateways that report a property change about twice a second: the live stream's events."""


async def set_properties(console: Console, props: dict[str, dict[str, Any]]) -> None:
    """Store reported properties as if the gateways had sent them (uuid → properties)."""
    async with console.c.db.session() as s:
        for uuid, p in props.items():
            await s.execute(
                update(Device)
                .where(Device.uuid == uuid)
                .values(properties=p, **indexed_properties(p))
            )


@asynccontextmanager
async def live_events(console: Console, n: int = 3) -> AsyncIterator[list[str]]:
    """Chatty gateways of another model, connected for the block."""
    uuids = await console.fleet.register(n, prefix="chatty")
    console.fleet.start(uuids, props={"modelName": "UC-3111-T-US-LX"}, behaviour=CHATTY)
    await console.fleet.connected(uuids)
    yield uuids


class Refreshes:
    """Counts the page's requests for a fragment (its live refreshes)."""

    def __init__(self, page: Page, path: str) -> None:
        self.path = path
        self.count = 0
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if self.path in request.url:
            self.count += 1


async def during(page: Page, seconds: float) -> None:
    """Let ``seconds`` of the page's life pass (events arriving): the span is the point."""
    await page.wait_for_timeout(seconds * 1000)


# --- the Done-when of issue 16 -----------------------------------------------------------------


async def test_a_filtered_page_and_its_selection_survive_live_events_and_a_reboot_targets_them(
    console: Console, page: Page
) -> None:
    c = console.c
    uuids = await console.fleet.register(60, prefix="gw")
    ours = uuids[::2]  # 30 of the model filtered for, the others of another
    await set_properties(
        console,
        {u: {"modelName": MODEL if u in ours else "UC-8220-T-LX"} for u in uuids},
    )
    async with live_events(console):
        await log_in(page, console.operator, next="/console/devices?size=25")
        await settle(page)
        query = f'model = "{MODEL}"'
        await page.get_by_label("Fleet query").fill(query)
        await page.get_by_role("button", name="Search").click()
        await expect(page.get_by_test_id("device-total")).to_contain_text("of 30 gateways")
        await page.get_by_test_id("page-next").click()
        await expect(page.get_by_test_id("page-of")).to_have_text("Page 2 of 2")
        rows = page.locator("tr[data-device]")
        await expect(rows).to_have_count(5)
        await page.get_by_test_id("select-page").check()
        await page.get_by_test_id("select-matching").click()
        count = page.get_by_test_id("selection-count")
        await expect(count).to_have_text("Every gateway that matches: 30 selected")

        refreshes = Refreshes(page, "/console/fragments/devices")
        await during(page, 5)
        assert refreshes.count >= 3, "no live refresh happened in 5 s"
        await expect(page.get_by_label("Fleet query")).to_have_value(query)
        await expect(page.get_by_test_id("page-of")).to_have_text("Page 2 of 2")
        await expect(rows).to_have_count(5)
        assert re.search(r"[?&]page=2(&|$)", page.url) and "size=25" in page.url
        boxes = page.locator("tr[data-device] [data-select]")
        assert await boxes.evaluate_all("(bs) => bs.every((b) => b.checked)")
        await expect(count).to_have_text("Every gateway that matches: 30 selected")
        shown = await rows.evaluate_all("(rs) => rs.map((r) => r.dataset.device)")
        assert set(shown) <= set(ours)

        await page.get_by_test_id("bulk-reboot").click()
        dialog = page.get_by_test_id("bulk-dialog")
        await expect(dialog.get_by_role("heading")).to_have_text("Reboot 30 gateways")
        await expect(dialog.get_by_test_id("bulk-targets").locator("li")).to_have_count(30)
        listed = await dialog.locator("li[data-target]").evaluate_all(
            "(ls) => ls.map((l) => l.dataset.target)"
        )
        assert sorted(listed) == sorted(ours)
        await dialog.get_by_test_id("bulk-confirm").click()
        await page.wait_for_url(re.compile(r"/console/tasks/[0-9a-f-]{36}$"))
    task_uuid = page.url.rsplit("/", 1)[1]
    view = await c.tasks.get(task_uuid)
    assert view.task.kind == TaskKind.ROLLOUT.value
    assert view.task.payload == {"method": "post", "resource": "/system/reboot"}
    assert sorted(view.task.target["devices"]) == sorted(ours)  # exactly the filtered ones
    assert view.task.target["selectedFrom"] == query
    _, executions = await c.tasks.executions(task_uuid, states=[], offset=0, limit=100)
    assert sorted(e.device_uuid for e in executions) == sorted(ours)


async def test_a_bulk_action_is_refused_when_the_list_changed_under_the_selection(
    console: Console, page: Page
) -> None:
    uuids = await console.fleet.register(4, prefix="gw")
    await set_properties(console, {u: {"modelName": MODEL} for u in uuids})
    await log_in(page, console.operator, next=f'/console/devices?q=model+%3D+"{MODEL}"')
    await settle(page)
    await page.get_by_test_id("select-page").check()
    await expect(page.get_by_test_id("selection-count")).to_have_text("4 gateways selected")
    await page.get_by_test_id("bulk-tags").click()
    dialog = page.get_by_test_id("bulk-dialog")
    await dialog.get_by_test_id("bulk-add-tags").fill("line-3 checked")
    # meanwhile one of them is changed elsewhere: it no longer matches the list's query
    await set_properties(console, {uuids[1]: {"modelName": "UC-8220-T-LX"}})
    await dialog.get_by_test_id("bulk-confirm").click()
    error = dialog.get_by_test_id("bulk-error")
    await expect(error).to_contain_text("no longer match")
    await expect(error).to_contain_text(uuids[1])
    await expect(dialog).to_be_visible()  # nothing happened; the user decides
    for uuid in uuids:
        assert (await console.c.fleet.get_device(uuid)).tags == []


async def test_a_role_picked_while_live_events_arrive_is_the_role_stored(
    console: Console, page: Page
) -> None:
    c = console.c
    user, _ = await c.accounts.create_user("later@example.com", "a long enough pass", Role.VIEWER)
    async with live_events(console):
        await log_in(page, console.admin, next="/console/users")
        await settle(page)
        form = page.get_by_test_id(f"user-role-{user.id}")
        await form.get_by_label("Role of later@example.com", exact=True).select_option("operator")
        refreshes = Refreshes(page, "/console/fragments/users")
        # the list does not reload under the choice: it says so, and keeps it
        await expect(page.locator("[data-paused-note]")).to_contain_text("paused")
        await during(page, 2.5)
        await expect(form.get_by_label("Role of later@example.com", exact=True)).to_have_value(
            "operator"
        )
        assert refreshes.count == 0
        await form.get_by_role("button", name="Save").click()
        await expect(page.locator("#flash")).to_have_text("Role of later@example.com changed")
    assert (await c.accounts.get_user(user.id)).role == "operator"
    # saved: live again, and the list shows the stored role
    await expect(page.locator("[data-paused-note]")).to_be_hidden()
    await expect(
        page.get_by_test_id(f"user-role-{user.id}").get_by_label(
            "Role of later@example.com", exact=True
        )
    ).to_have_value("operator")


async def test_paging_and_sorting_a_list_of_1000_gateways(console: Console, page: Page) -> None:
    c = console.c
    regs = [
        Registration(display_name=f"gw-{(i * 7919) % 1000:04d}", mac=f"02ef00{i:06x}")
        for i in range(1000)
    ]
    views = [v for v, _ in await c.fleet.register_many(regs)]
    versions = ["2.4.1", "2.10.0", "1.9.8", "2.5.0"]
    await set_properties(
        console,
        {
            v.device.uuid: {"modelName": f"UC-{i % 3}", "softwareVersion": versions[i % 4]}
            for i, v in enumerate(views)
        },
    )
    await log_in(page, console.viewer, next="/console/devices")
    await settle(page)
    total = page.get_by_test_id("device-total")
    await expect(total).to_have_text("1\u201350 of 1000 gateways")
    await expect(page.get_by_test_id("page-of")).to_have_text("Page 1 of 20")

    names = page.locator("tr[data-device]")

    async def first_names(n: int = 3) -> list[str]:
        got: list[str] = await names.evaluate_all("(rs) => rs.map((r) => r.dataset.name)")
        return got[:n]

    await page.get_by_test_id("sort-name").click()
    await expect(page.locator('th[aria-sort="ascending"]')).to_contain_text("Name")
    assert await first_names() == ["gw-0000", "gw-0001", "gw-0002"]
    await page.get_by_test_id("sort-name").click()
    await expect(names.first).to_have_attribute("data-name", "gw-0999")
    await page.get_by_test_id("page-last").click()
    await expect(page.get_by_test_id("page-of")).to_have_text("Page 20 of 20")
    await expect(names.last).to_have_attribute("data-name", "gw-0000")
    await page.get_by_test_id("page-size").select_option("200")
    await expect(page.get_by_test_id("page-of")).to_have_text("Page 1 of 5")
    await expect(names).to_have_count(200)
    await expect(total).to_have_text("1\u2013200 of 1000 gateways")
    # firmware sorts as versions: 1.9.8 < 2.4.1 < 2.5.0 < 2.10.0
    await page.get_by_test_id("sort-firmware").click()
    await expect(names.first.locator('td[data-label="Firmware"]')).to_have_text("1.9.8")
    await page.get_by_test_id("sort-firmware").click()
    await expect(names.first.locator('td[data-label="Firmware"]')).to_have_text("2.10.0")
    # the address keeps the state: a reload (or a shared link) shows the same page
    assert "sort=-firmware" in page.url and "size=200" in page.url
    await page.reload()
    await expect(names).to_have_count(200)
    await expect(names.first.locator('td[data-label="Firmware"]')).to_have_text("2.10.0")
    # back goes to the previous order
    await page.go_back()
    await expect(names.first.locator('td[data-label="Firmware"]')).to_have_text("1.9.8")


async def test_the_map_draws_clustered_gateways_on_the_offline_basemap(
    console: Console, page: Page
) -> None:
    a, b, far, nowhere = await console.fleet.register(4, prefix="site")
    await set_properties(
        console,
        {
            a: {"gps": {"lat": 24.80, "lng": 120.97}},  # two sites in Hsinchu, 2 km apart
            b: {"gps": {"lat": 24.81, "lng": 120.99}},
            far: {"gps": {"lat": 48.14, "lng": 11.58}},  # Munich
            nowhere: {},
        },
    )
    await page.emulate_media(reduced_motion="reduce")  # the map moves at once, no animation
    await log_in(page, console.viewer, next="/console/map")
    box = page.get_by_test_id("map")
    await expect(box).to_have_attribute("data-markers", "3")
    await expect(box).to_have_attribute("data-basemap-loaded", "1")  # no tiles configured
    outlines = await page.locator(".leaflet-overlay-pane path").count()
    assert outlines > 100, f"{outlines} country outlines drawn"
    await expect(page.get_by_test_id("map-note")).to_contain_text("No tile server is configured")
    await expect(page.get_by_test_id("map-summary")).to_have_text(
        "3 gateways on the map; 1 without a position."
    )
    # the two Hsinchu sites are one cluster at world scale; a click zooms in to both
    cluster = page.locator(".cluster", has_text="2")
    await expect(cluster).to_have_count(1)
    await cluster.click()
    dots = page.locator(".leaflet-marker-icon .dot")
    await expect(dots).to_have_count(2)
    await page.locator(".leaflet-marker-icon[title='site-00']").click()
    link = page.locator(".leaflet-popup-content a")
    await expect(link).to_have_text("site-00")
    await link.click()
    await expect(page).to_have_url(re.compile(f"/console/devices/{a}$"))


async def test_unreachable_tiles_fall_back_to_the_offline_basemap(
    console: Console, page: Page
) -> None:
    closed = console.url.rsplit(":", 1)[0] + ":9"  # discard port: nothing listens there
    console.c.settings.console.map_tiles_url = closed + "/{z}/{x}/{y}.png"
    (uuid,) = await console.fleet.register(1, prefix="site")
    await set_properties(console, {uuid: {"gps": {"lat": 22.62, "lng": 120.30}}})
    await log_in(page, console.viewer, next="/console/map")
    box = page.get_by_test_id("map")
    await expect(box).to_have_attribute("data-basemap-loaded", "1")
    await expect(page.get_by_test_id("map-note")).to_contain_text(
        "could not be loaded from 127.0.0.1:9"
    )
    await expect(box).to_have_attribute("data-markers", "1")
    await expect(page.locator(".leaflet-control-attribution")).to_contain_text("Natural Earth")


async def test_a_gateway_is_renamed_tagged_and_deleted_from_its_page(
    console: Console, page: Page
) -> None:
    c = console.c
    (uuid,) = await console.fleet.register(1, prefix="press")
    await log_in(page, console.operator, next=f"/console/devices/{uuid}")
    form = page.get_by_test_id("device-edit")
    await form.get_by_label("Name", exact=True).fill("Press 7, hall B")
    await form.get_by_label("Tags").fill("line-3, hall-b")
    await form.get_by_label("Description").fill("the old press by the door")
    await form.get_by_label("Attributes").fill("site = Hsinchu\nrack = 4")
    await form.get_by_test_id("device-save").click()
    await expect(form.locator("[data-message]").or_(page.locator(".message.ok"))).to_contain_text(
        "Saved"
    )
    await expect(page.get_by_test_id("device-name")).to_have_text("Press 7, hall B")  # live
    await expect(page.get_by_test_id("device-tags")).to_contain_text("hall-b")
    view = await c.fleet.get_device(uuid)
    assert view.device.display_name == "Press 7, hall B"
    assert view.tags == ["hall-b", "line-3"]
    assert view.device.description == "the old press by the door"
    assert view.device.attributes == {"site": "Hsinchu", "rack": 4}
    # a bad attribute line is said next to the button, and nothing is sent
    await form.get_by_label("Attributes").fill("no equals sign")
    await form.get_by_test_id("device-save").click()
    await expect(page.locator(".message.error")).to_contain_text("write name = value")

    await page.get_by_test_id("device-delete").click()  # the confirmation is accepted
    await page.wait_for_url(re.compile(r"/console/devices$"))
    await expect(page.locator(f'tr[data-device="{uuid}"]')).to_have_count(0)
    assert await _all(console) == []


async def test_gateways_are_described_and_deleted_in_bulk_after_confirmations_naming_them(
    console: Console, page: Page
) -> None:
    c = console.c
    uuids = await console.fleet.register(3, prefix="old")
    await log_in(page, console.operator, next="/console/devices")
    await settle(page)
    for uuid in uuids[:2]:
        await page.locator(f"#select-{uuid}").check()
    dialog = page.get_by_test_id("bulk-dialog")
    await page.get_by_test_id("bulk-description").click()
    await expect(dialog.get_by_role("heading")).to_have_text("Describe 2 gateways")
    await dialog.get_by_test_id("bulk-description-text").fill("spare, shelf 2")
    await dialog.get_by_test_id("bulk-confirm").click()
    await expect(dialog).to_be_hidden()
    await page.get_by_test_id("bulk-attribute").click()
    await dialog.get_by_test_id("bulk-attr-key").fill("rack")
    await dialog.get_by_test_id("bulk-attr-value").fill("4")
    await dialog.get_by_test_id("bulk-confirm").click()
    await expect(dialog).to_be_hidden()
    for uuid in uuids[:2]:
        d = (await c.fleet.get_device(uuid)).device
        assert d.description == "spare, shelf 2" and d.attributes == {"rack": "4"}
    assert (await c.fleet.get_device(uuids[2])).device.description == ""

    await page.get_by_test_id("bulk-delete").click()
    await expect(dialog.get_by_role("heading")).to_have_text("Delete 2 gateways")
    await expect(dialog.get_by_test_id("bulk-targets")).to_contain_text("old-00")
    await expect(dialog.get_by_test_id("bulk-targets")).not_to_contain_text("old-02")
    await dialog.get_by_test_id("bulk-confirm").click()
    await expect(page.locator("tr[data-device]")).to_have_count(1)
    await expect(page.get_by_test_id("selection-bar")).to_be_hidden()
    assert [v.device.uuid for v in (await _all(console))] == [uuids[2]]


async def _all(console: Console) -> list[Any]:
    return (await console.c.fleet.list_devices(DeviceFilter(), offset=0, limit=100)).items


async def test_a_gateway_page_follows_its_gateway_and_reads_its_properties(
    console: Console, page: Page
) -> None:
    c, fleet = console.c, console.fleet
    (uuid,) = await fleet.register(1, prefix="press")
    fleet.start([uuid], stay=False)
    await fleet.connected([uuid])
    await log_in(page, console.operator, next=f"/console/devices/{uuid}")
    state = page.get_by_test_id("device-state")
    await expect(state).to_have_text("online")
    await page.evaluate("window.__e2eMark = true")

    fleet.gateways[uuid].properties["hostName"] = "press-7b"  # changed without an event
    await page.get_by_test_id("device-refresh").click()
    await expect(page.get_by_test_id("device-result")).to_contain_text("press-7b")
    await expect(page.locator('[data-property="hostName"]')).to_contain_text("press-7b")

    async def stored() -> bool:
        props = (await c.fleet.get_device(uuid)).device.properties or {}
        return props.get("hostName") == "press-7b"

    await eventually(stored, 10)
    fleet.crash(uuid)
    await expect(state).to_have_text("offline")  # without a reload
    assert await page.evaluate("window.__e2eMark === true"), "the page was reloaded"


# --- layout, errors, languages ------------------------------------------------------------------


async def test_an_unknown_console_address_shows_the_404_page(console: Console, page: Page) -> None:
    await log_in(page, console.viewer)
    r = await page.goto("/console/gateways/all")
    assert r is not None and r.status == 404
    await expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    await expect(page.locator("main code")).to_have_text("/console/gateways/all")
    await page.get_by_role("link", name="Go to the dashboard").click()
    await expect(page).to_have_url(re.compile(r"/console/$"))


async def test_the_language_switch_changes_the_console_and_is_kept(
    console: Console, page: Page
) -> None:
    await log_in(page, console.operator, next="/console/devices")
    await expect(page.get_by_role("heading", name="Gateways")).to_be_visible()
    await page.get_by_test_id("language").select_option("zh_TW")
    await expect(page.get_by_role("heading", name="閘道器")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("lang", "zh-Hant-TW")
    await expect(page.get_by_role("link", name="儀表板")).to_be_visible()
    principal = await console.c.accounts.login(console.operator.email, console.operator.password)
    found = await console.c.accounts.principal_for_bearer(principal.secret)
    assert found is not None and found.locale == "zh_TW"
    # scripts speak it too
    await page.get_by_role("button", name="搜尋").click()
    await page.goto("/console/map")
    await expect(page.get_by_test_id("map-note")).to_contain_text("未設定圖磚伺服器")
    await page.get_by_test_id("language").select_option("en")
    await expect(page.get_by_role("heading", name="Map")).to_be_visible()


async def test_a_browser_asking_for_chinese_gets_it_before_logging_in(
    console: Console, browser: Any
) -> None:
    ctx = await browser.new_context(base_url=console.url, locale="zh-TW")
    try:
        page = await ctx.new_page()
        await page.goto("/console/login")
        await expect(page.get_by_role("heading", name="登入 edgefleet")).to_be_visible()
        await page.get_by_test_id("login-language").select_option("en")
        await expect(page.get_by_role("heading", name="Log in to edgefleet")).to_be_visible()
    finally:
        await ctx.close()


NAV_IN_ONE_ROW = """() => {
    const items = [...document.querySelectorAll("header.top nav > ul > li")];
    const tops = new Set(items.map((li) => Math.round(li.getBoundingClientRect().top)));
    const header = document.querySelector("header.top").getBoundingClientRect();
    return {rows: tops.size, height: header.height, width: document.scrollingElement.scrollWidth};
}"""

BROKEN_WORDS = """(selector) => {
    // every word of the tables' text that is split over two lines (a word: letters only)
    const broken = [];
    for (const table of document.querySelectorAll(selector)) {
        const walker = document.createTreeWalker(table, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            if (node.parentElement.closest(".sr")) continue;  // for screen readers, not shown
            for (const m of node.textContent.matchAll(/\\p{L}{2,}/gu)) {
                const range = document.createRange();
                range.setStart(node, m.index);
                range.setEnd(node, m.index + m[0].length);
                const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
                if (lines.size > 1) broken.push(m[0]);
            }
        }
    }
    return broken;
}"""


async def test_the_navigation_fits_1280_px_and_tables_wrap_between_words(
    console: Console, page: Page
) -> None:
    c = console.c
    uuids = await console.fleet.register(3, prefix="press")
    console.fleet.start(uuids[:1], stay=False)
    await console.fleet.connected(uuids[:1])
    console.fleet.crash(uuids[0])  # an unacknowledged alarm: the word of the issue

    async def alarmed() -> bool:
        return (await c.event_log.summary()).open_alarms != {}

    await eventually(alarmed, 10)
    gid = (await c.fleet.create_group("a group with a rather long name", "hall A")).group.id
    await c.fleet.add_to_group(gid, uuids[1:])
    await log_in(page, console.admin)  # the admin has the most menu entries
    for locale, lang in (("en", "en"), ("zh_TW", "zh-Hant-TW")):
        await page.goto("/console/events")
        async with page.expect_navigation():  # the choice is stored, the page reloaded in it
            await page.get_by_test_id("language").select_option(locale)
        await expect(page.locator("html")).to_have_attribute("lang", lang)
        await settle(page)
        got = await page.evaluate(NAV_IN_ONE_ROW)
        assert got["rows"] == 1 and got["height"] < 70 and got["width"] <= 1280, (locale, got)
        assert await page.evaluate(BROKEN_WORDS, "main table") == [], locale
        await page.goto("/console/groups")
        await settle(page)
        assert await page.evaluate(BROKEN_WORDS, "main table") == [], locale
    # the admin menu opens, and its entries lead to their pages
    await page.get_by_test_id("nav-more").click()
    await page.get_by_role("link", name="稽核紀錄").click()
    await expect(page).to_have_url(re.compile(r"/console/audit$"))


async def test_an_error_is_shown_next_to_the_control_that_caused_it(
    console: Console, page: Page
) -> None:
    c = console.c
    gid = (await c.fleet.create_group("empty line")).group.id
    await log_in(page, console.operator, next="/console/groups")
    await settle(page)
    await page.get_by_test_id(f"group-reboot-{gid}").click()
    form = page.get_by_test_id("group-task-form")
    await form.get_by_test_id("group-task-submit").click()
    error = form.locator("[data-gt-error]")
    await expect(error).to_have_text("group empty line has no gateway: nothing to run the task on")
    total, _ = await c.tasks.list_tasks(kinds=list(TaskKind), limit=5)
    assert total == 0
    await form.get_by_role("button", name="Cancel").click()
    # a failed action in a long page: the message is beside its button, in view
    await page.goto("/console/devices")
    await settle(page)
    await page.get_by_label("Fleet query").fill("model >")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_test_id("query-error")).to_contain_text("invalid fleet query")


async def test_live_events_do_not_move_the_rows_under_a_pointer_aiming_at_one(
    console: Console, page: Page
) -> None:
    """New events come in at the top of the Events list, twice a second here: a row's
    Acknowledge or Clear (no confirmation) would move away between aiming and clicking, and
    the click land on another alarm. While the pointer moves over the list it holds still (and
    says so); once the pointer leaves, the live rows come in."""
    async with live_events(console):
        await log_in(page, console.operator, next="/console/events")
        await settle(page)
        await expect(page.locator("tr[data-event]").first).to_be_visible()
        aimed = page.locator("tr[data-event]").nth(2)
        event_id = await aimed.get_attribute("data-event")
        box = await aimed.bounding_box()
        assert box is not None
        x, y = box["x"] + 60, box["y"] + box["height"] / 2
        under = f"document.elementFromPoint({x}, {y}).closest('tr').dataset.event"
        refreshes = Refreshes(page, "/console/fragments/events")
        await page.mouse.move(x, y - 2)
        for step in range(10):  # aiming: small moves over 2.5 s, events arriving
            await page.mouse.move(x + step, y + (step % 3) - 1)
            await during(page, 0.25)
            assert await page.evaluate(under) == event_id, f"the row moved at step {step}"
        await expect(page.locator("[data-paused-note]")).to_contain_text("pointer")
        assert refreshes.count == 0
        # the pointer leaves: the list catches up with the events that came meanwhile
        await page.mouse.move(5, 5)
        await expect(page.locator("[data-paused-note]")).to_be_hidden()
        await page.wait_for_function(f"{under} !== '{event_id}'")
    assert refreshes.count > 0
