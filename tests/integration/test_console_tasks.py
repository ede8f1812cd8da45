"""The console's groups and tasks pages over HTTP (web/tasks.py): what each role is offered,
progress from real executions, steering controls per state, paging, and not-found pages.
The browser tests are in tests/e2e/."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container
from edgefleet.domain.auth import Role
from edgefleet.domain.tasks import TaskKind
from edgefleet.services.fleet import Registration
from edgefleet.services.tasks import TaskSpec
from tests.conftest import Callers
from tests.gateways import count, eventually, register, start


def _browser(c: Container) -> httpx.AsyncClient:
    """A client that keeps cookies, as a browser does."""
    transport = httpx.ASGITransport(app=create_app(c))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def browser(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    async with _browser(container) as b:
        yield b


async def _log_in(c: Container, browser: httpx.AsyncClient, role: Role) -> dict[str, str]:
    """Log a new user of ``role`` in; the headers the console's scripts send with a change."""
    browser.cookies.clear()
    caller = await Callers(c).user(role)
    r = await browser.post(
        "/api/v1/auth/login", json={"email": caller.email, "password": caller.password}
    )
    assert r.status_code == 200, r.text
    return {"X-CSRF-Token": str(r.json()["csrfToken"])}


MACS = itertools.count(1)


async def _group(c: Container, name: str, n: int) -> tuple[int, list[str]]:
    """A group of ``n`` new (never connected) gateways."""
    made = await c.fleet.register_many(
        [Registration(display_name=f"{name}-{i}", mac=f"0090e8{next(MACS):06x}") for i in range(n)]
    )
    uuids = [v.device.uuid for v, _ in made]
    gid = (await c.fleet.create_group(name)).group.id
    if uuids:
        await c.fleet.add_to_group(gid, uuids)
    return gid, uuids


def _reboot(gid: int) -> TaskSpec:
    return TaskSpec(
        kind=TaskKind.GROUP,
        method="post",
        resource="/system/reboot",
        group_id=gid,
        meta={"description": "Group reboot"},
    )


def _percent(html: str, uuid: str) -> int:
    m = re.search(rf'data-testid="task-progress-{uuid}" data-percent="(\d+)"', html)
    assert m, html
    return int(m.group(1))


async def test_pages_need_a_session_and_fragments_answer_401(
    container: Container, browser: httpx.AsyncClient
) -> None:
    gid, _ = await _group(container, "plant", 1)
    task = (await container.tasks.create(_reboot(gid))).task
    for path in (
        "/console/groups",
        f"/console/groups/{gid}",
        "/console/tasks",
        f"/console/tasks/{task.uuid}",
    ):
        r = await browser.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/console/login?next=")
    for path in (
        "/console/fragments/groups",
        f"/console/fragments/groups/{gid}/summary",
        f"/console/fragments/groups/{gid}/devices",
        f"/console/fragments/groups/{gid}/candidates?q=status%20%3D%20online",
        "/console/fragments/tasks",
        f"/console/fragments/tasks/{task.uuid}",
        f"/console/fragments/tasks/{task.uuid}/executions",
    ):
        r = await browser.get(path)
        assert r.status_code == 401, path
        assert r.text == ""


async def test_a_viewer_is_offered_no_write_control_and_an_operator_is(
    container: Container, browser: httpx.AsyncClient
) -> None:
    gid, uuids = await _group(container, "line-3", 2)
    task = (await container.tasks.create(_reboot(gid))).task

    await _log_in(container, browser, Role.VIEWER)
    pages = {
        "groups": await browser.get("/console/groups"),
        "group list": await browser.get("/console/fragments/groups"),
        "group": await browser.get(f"/console/groups/{gid}"),
        "members": await browser.get(f"/console/fragments/groups/{gid}/devices"),
        "tasks": await browser.get("/console/tasks"),
        "task list": await browser.get("/console/fragments/tasks"),
        "task": await browser.get(f"/console/tasks/{task.uuid}"),
    }
    for name, r in pages.items():
        assert r.status_code == 200, name
        for control in (
            "hx-post",
            "hx-put",
            "hx-delete",
            "data-group-action",
            "data-api-json",
            "data-rollout-form",
            "group-task-dialog",
            'data-testid="task-revoke"',
        ):
            assert control not in r.text, (name, control)
    row = pages["group list"].text
    assert f'data-testid="group-{gid}"' in row and f'id="group-{gid}"' in row
    assert "line-3" in row and f'data-testid="group-reboot-{gid}"' not in row
    assert f'data-testid="task-progress-{task.uuid}" data-percent="0"' in row
    assert "Group reboot" in row and "No retry" in row
    assert "line-3-0" in pages["members"].text and uuids[1] in pages["members"].text
    assert f"task-progress-{task.uuid}" in pages["task list"].text
    assert 'data-count="PENDING">2<' in pages["task"].text

    await _log_in(container, browser, Role.OPERATOR)
    groups = await browser.get("/console/groups")
    assert 'hx-post="/api/v1/groups"' in groups.text and 'id="group-task-dialog"' in groups.text
    row = (await browser.get("/console/fragments/groups")).text
    for action in ("reboot", "restore", "upgrade"):
        assert f'data-testid="group-{action}-{gid}"' in row
    group = (await browser.get(f"/console/groups/{gid}")).text
    assert f'hx-put="/api/v1/groups/{gid}"' in group and 'data-testid="group-delete"' in group
    assert f'data-testid="group-reboot-{gid}"' in group and "data-add-uuids" in group
    members = (await browser.get(f"/console/fragments/groups/{gid}/devices")).text
    assert f'data-api-json="/api/v1/groups/{gid}/devices"' in members
    assert f"data-body='[\"{uuids[0]}\"]'" in members
    assert "data-rollout-form" in (await browser.get("/console/tasks")).text
    detail = (await browser.get(f"/console/tasks/{task.uuid}")).text
    assert f'hx-post="/api/v1/groupTasks/{task.uuid}/revoke"' in detail
    assert 'data-testid="task-revoke"' in detail and 'data-testid="task-rerun"' not in detail


async def test_rollout_controls_follow_its_state_and_executions_are_paged(
    container: Container, browser: httpx.AsyncClient
) -> None:
    gid, _ = await _group(container, "wide", 60)
    headers = await _log_in(container, browser, Role.OPERATOR)
    r = await browser.post(
        "/api/v1/rollouts",
        headers=headers,
        json={
            "name": "status of wide",
            "target": {"groupId": gid},
            "waves": [10],
            "payload": {"method": "get", "resource": "/system/status"},
        },
    )
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]

    detail = (await browser.get(f"/console/tasks/{uuid}")).text
    assert "status of wide" in detail and 'data-testid="task-state">running<' in detail
    for action in ("pause", "abort", "revoke"):
        assert f'hx-post="/api/v1/rollouts/{uuid}/{action}"' in detail
    assert "/resume" not in detail and 'data-wave="2"' in detail  # waves of 10 and 50

    first = (await browser.get(f"/console/fragments/tasks/{uuid}/executions")).text
    assert first.count('data-testid="execution-') == 50 and "1\N{EN DASH}50 of 60" in first
    assert f"/console/fragments/tasks/{uuid}/executions?offset=50" in first
    second = (await browser.get(f"/console/fragments/tasks/{uuid}/executions?offset=50")).text
    assert second.count('data-testid="execution-') == 10 and "51\N{EN DASH}60 of 60" in second
    assert f'hx-get="/console/fragments/tasks/{uuid}/executions?offset=50"' in second  # reloads it
    assert "every 5s" in second  # the task is open
    none = (await browser.get(f"/console/fragments/tasks/{uuid}/executions?state=FAILURE")).text
    assert "No gateway is failure in this task" in none

    r = await browser.post(f"/api/v1/rollouts/{uuid}/pause", headers=headers)
    assert r.status_code == 200, r.text
    summary = (await browser.get(f"/console/fragments/tasks/{uuid}")).text
    assert 'data-testid="task-resume"' in summary and 'data-testid="task-pause"' not in summary

    r = await browser.post(f"/api/v1/rollouts/{uuid}/revoke", headers=headers)
    assert r.status_code == 200, r.text
    summary = (await browser.get(f"/console/fragments/tasks/{uuid}")).text
    assert _percent(summary, uuid) == 100 and 'data-count="REVOKED">60<' in summary
    assert "hx-post" not in summary and "every 5s" not in summary  # finished: nothing to steer

    listing = (await browser.get("/console/fragments/tasks?kind=rollout&state=REVOKED")).text
    assert f'data-testid="task-{uuid}"' in listing and "group wide" in listing
    empty = (await browser.get("/console/fragments/tasks?kind=group")).text
    assert "No task matches these filters" in empty
    in_group = (await browser.get(f"/console/fragments/tasks?group={gid}")).text
    assert f'data-testid="task-{uuid}"' in in_group


async def test_adding_by_fleet_query_is_previewed(
    container: Container, browser: httpx.AsyncClient
) -> None:
    here, _ = await _group(container, "north", 2)
    elsewhere, _ = await _group(container, "south", 1)
    for i in range(3):
        await container.fleet.register_device(
            Registration(display_name=f"free-{i}", mac=f"0090e8ff00{i:02x}")
        )
    await _log_in(container, browser, Role.OPERATOR)
    r = await browser.get(
        f"/console/fragments/groups/{here}/candidates", params={"q": 'status = "created"'}
    )
    assert r.status_code == 200
    assert '<strong data-count="free">3</strong>' in r.text
    assert 'data-count="here">2<' in r.text and 'data-count="elsewhere">1<' in r.text
    assert 'data-add-query="status = &#34;created&#34;"' in r.text and "Add 3 gateways" in r.text
    bad = await browser.get(f"/console/fragments/groups/{here}/candidates", params={"q": "model >"})
    assert 'role="alert"' in bad.text and "data-add-query" not in bad.text
    assert elsewhere != here


async def test_unknown_tasks_and_groups_have_a_clear_not_found_page(
    container: Container, browser: httpx.AsyncClient
) -> None:
    await _log_in(container, browser, Role.VIEWER)
    r = await browser.get("/console/tasks/no-such-task")
    assert r.status_code == 404 and "Task not found" in r.text and "no-such-task" in r.text
    for ref in ("4242", "not-a-number"):
        r = await browser.get(f"/console/groups/{ref}")
        assert r.status_code == 404 and "Group not found" in r.text
    # a fragment of what went away says so (and stops reloading itself)
    gone = await browser.get("/console/fragments/tasks/no-such-task")
    assert "no longer exists" in gone.text and "hx-trigger" not in gone.text
    assert "no longer exists" in (await browser.get("/console/fragments/groups/4242/summary")).text
    empty = (await browser.get("/console/fragments/groups")).text
    assert "No group yet" in empty and "Create one above" not in empty


async def test_a_group_task_shows_live_progress_up_to_100_percent(live: Container) -> None:
    creds = await register(live, 3)
    gws, runs = start(live, creds)
    try:

        async def online() -> bool:
            return await count(live, "online") >= 3

        await eventually(online, 30)
        async with _browser(live) as browser:
            headers = await _log_in(live, browser, Role.OPERATOR)
            # as the console does: create the group, add gateways, run a group task
            r = await browser.post(
                "/api/v1/groups", headers=headers, json={"name": "live", "description": ""}
            )
            assert r.status_code == 200, r.text
            gid = r.json()["id"]
            r = await browser.post(
                f"/api/v1/groups/{gid}/devices", headers=headers, json=[u for u, _ in creds]
            )
            assert r.status_code == 200, r.text
            r = await browser.post(
                "/api/v1/groupTasks",
                headers=headers,
                json={
                    "groupId": gid,
                    "applyPolicy": "retry",
                    "retryTimes": 2,
                    "payload": {"method": "get", "resource": "/system/status"},
                    "meta": {"description": "Status"},
                },
            )
            assert r.status_code == 200, r.text
            uuid = r.json()["taskUUID"]

            seen: list[int] = []

            async def finished() -> bool:
                html = (await browser.get(f"/console/fragments/tasks/{uuid}")).text
                seen.append(_percent(html, uuid))
                # the task's own state follows its last execution's
                return 'data-testid="task-state">success<' in html

            await eventually(finished, 30)
            assert seen == sorted(seen) and seen[-1] == 100  # progress never goes back
            summary = (await browser.get(f"/console/fragments/tasks/{uuid}")).text
            assert 'data-testid="task-state">success<' in summary
            assert ">100%</span>" in summary and 'aria-valuenow="100"' in summary
            assert 'data-count="SUCCESS">3<' in summary and 'data-count="total">3<' in summary
            assert 'class="success" style="width: 100.0%"' in summary
            assert "Retry 2 times" in summary and "every 5s" not in summary
            executions = (await browser.get(f"/console/fragments/tasks/{uuid}/executions")).text
            assert executions.count("data-code>200<") == 3
            for u, _ in creds:
                assert f'data-testid="execution-{u}"' in executions
            groups = (await browser.get("/console/fragments/groups")).text
            assert _percent(groups, uuid) == 100 and 'data-count="online">3<' in groups
            assert 'data-count="completed">3<' in groups
            tasks = (await browser.get("/console/fragments/tasks")).text
            assert _percent(tasks, uuid) == 100 and "Status" in tasks
    finally:
        for t in runs:
            t.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        assert len(gws) == 3
