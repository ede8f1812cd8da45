"""Console pages of groups and tasks (see views.py for the design).

**Groups** (``/console/groups``) as the original's group list: online and offline gateways,
active and completed task records, and per group Group Reboot, Restore configuration and
Group Upgrade under the policies No retry / Retry times / Schedule; a page per group with its
gateways (added by uuid or by fleet query, removed one by one) and its tasks. Reboot and
restore are group tasks (``POST /api/v1/groupTasks``); an upgrade is a one-wave rollout over
the group with a catalogue image (``POST /api/v1/rollouts`` with ``firmwareId``), since a group
task cannot name an image and its download link must be made fresh at each dispatch.

**Tasks** (``/console/tasks``): group tasks, rollouts and job relays, each with a bar of its
executions by state and the share done; a page per task with its counts, waves, executions
(paged, by state) and the actions its state allows (revoke, pause, resume, abort, re-run the
failed); a rollout form whose dry run says how many gateways it reaches before it is created.

Fragments that show progress reload on the event stream's ``refresh`` and, while a task shown
is open, every 5 s (execution starts emit no event). A fragment's root element carries its own
URL (page, filters) and swaps itself whole, so a reload keeps the page the user is on. The
fragment of a task or group deleted meanwhile answers 200 with a "no longer exists" message
(console.js swaps no error in) and no reload of its own; the pages answer 404.
static/tasks.js builds the JSON bodies a plain form cannot (arrays, nested payloads, times).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.api.inputs import Int32, Offset
from edgefleet.bootstrap import Container
from edgefleet.db.tables import Device, Execution, Group, Task
from edgefleet.domain.auth import Permission
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.query import parse
from edgefleet.domain.tasks import ACTIVE, COMPLETED, TASK_OPEN, TaskKind, TaskState
from edgefleet.errors import EdgefleetError
from edgefleet.services.tasks import TaskNotFoundError, TaskView
from edgefleet.web.i18n import N_, gettext, ngettext
from edgefleet.web.views import Viewer, page, render, viewer_of

router = APIRouter(prefix="/console", include_in_schema=False)

PAGE_SIZE = 50
"""Rows per page of the group, task, member and execution lists."""
PREVIEW_LIMIT = 10_000
"""Gateways a fleet query adds to a group at once (the API takes 10,000 uuids a call)."""
SAMPLE = 8
"""Gateways named in a fleet query's preview."""

KINDS: dict[str, tuple[TaskKind, ...]] = {
    "": (TaskKind.GROUP, TaskKind.ROLLOUT),
    "group": (TaskKind.GROUP,),
    "rollout": (TaskKind.ROLLOUT,),
    "relay": (TaskKind.RELAY,),
}
KIND_LABELS = {"group": N_("group task"), "rollout": N_("rollout"), "relay": N_("job relay")}
"""Translated where shown (``_(r.kind)``)."""
TASK_STATES = [s.value for s in TaskState]
EXECUTION_STATES = [
    TaskState.SUCCESS,
    TaskState.FAILURE,
    TaskState.RUNNING,
    TaskState.PENDING,
    TaskState.REVOKED,
]
"""The bar's segments, in this order."""
DONE = frozenset({TaskState.SUCCESS.value, TaskState.FAILURE.value, TaskState.REVOKED.value})
OPEN = frozenset(s.value for s in TASK_OPEN)
SCOPES = [
    "modbus",
    "time",
    "dns",
    "ethernet",
    "cellular",
    "openvpn",
    "dhcpd",
    "serial",
    "portforwarding",
    "remotecontrol",
    "program",
    "applications",
    "system",
]
"""ThingsPro's configuration scopes (``PUT /system/import``)."""


# --- what the templates show ------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    state: str
    count: int
    width: float


@dataclass(frozen=True)
class Progress:
    """A task's executions by state: the bar, the counts and the share done."""

    uuid: str
    counts: dict[str, int]
    total: int
    percent: int
    segments: list[Segment]
    summary: str


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    path: str
    confirm: str
    done: str
    danger: bool = False


@dataclass(frozen=True)
class TaskRow:
    task: Task
    label: str
    kind: str
    target: str
    group: Group | None
    policy: str
    progress: Progress
    actions: list[Action]

    @property
    def is_open(self) -> bool:
        return self.task.state in OPEN


@dataclass(frozen=True)
class GroupRow:
    group: Group
    online: int
    offline: int
    created: int
    active: int
    completed: int
    revoked: int
    latest: TaskRow | None

    @property
    def members(self) -> int:
        return self.online + self.offline + self.created


def when(dt: datetime | None) -> str:
    return "—" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def state_word(state: str) -> str:
    return gettext(state.lower())


def progress_of(task: Task, by_state: dict[str, int]) -> Progress:
    counts = {s.value: by_state.get(s.value, 0) for s in EXECUTION_STATES}
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in DONE)
    if total:
        percent = done * 100 // total
    else:
        percent = 0 if task.state in OPEN else 100
    segments = [
        Segment(s.lower(), n, round(n * 100 / total, 3)) for s, n in counts.items() if n and total
    ]
    summary = ", ".join(f"{n} {state_word(s)}" for s, n in counts.items() if n) or gettext(
        "no gateway"
    )
    return Progress(task.uuid, counts, total, percent, segments, summary)


def label_of(task: Task) -> str:
    """What a task does, in words: its name, the caller's description, or its request."""
    if task.name:
        return task.name
    meta = task.meta or {}
    description = meta.get("description")
    if isinstance(description, str) and description.strip() and not description.isupper():
        return description.strip()  # an upper-case one is the original UI's message key
    method = str(task.payload.get("method", "")).lower()
    resource = str(task.payload.get("resource", "")).split("?", 1)[0].rstrip("/")
    if method == "post" and resource == "/system/reboot":
        return gettext("Reboot")
    if method == "put" and resource == "/system/import":
        return gettext("Restore configuration")
    if method == "post" and resource == "/system/firmware":
        version = meta.get("version")
        if version:
            return gettext("Firmware upgrade to %(version)s") % {"version": version}
        return gettext("Firmware upgrade")
    return f"{method.upper()} {task.payload.get('resource', '')}"


def policy_of(task: Task) -> str:
    if task.kind == TaskKind.GROUP.value and task.apply_policy in ("schedule", "scheduled"):
        text = gettext("Schedule")
    elif task.kind == TaskKind.GROUP.value and task.apply_policy != "retry":
        text = gettext("No retry")
    elif task.retry_times:
        text = ngettext("Retry %(num)s time", "Retry %(num)s times", task.retry_times) % {
            "num": task.retry_times
        }
    else:
        text = gettext("No retry")
    if task.scheduled_at is not None:
        text += gettext(", starts %(when)s") % {"when": when(task.scheduled_at)}
    return text


def actions_of(task: Task, counts: dict[str, int]) -> list[Action]:
    """What the task's state allows, as calls of the API."""
    failed = counts.get(TaskState.FAILURE.value, 0)
    is_open = task.state in OPEN
    rerun_q = ngettext(
        "Run the %(num)s failed execution again?",
        "Run the %(num)s failed executions again?",
        failed,
    ) % {"num": failed}
    revoke_q = gettext(
        "Revoke this task? Executions not finished are revoked; "
        "gateways with the request in flight are told to cancel it."
    )
    if task.kind == TaskKind.GROUP.value:
        base = f"/api/v1/groupTasks/{task.uuid}"
    elif task.kind == TaskKind.ROLLOUT.value:
        base = f"/api/v1/rollouts/{task.uuid}"
    else:
        return []  # a job relay has no steering route
    revoke = Action(
        "revoke", gettext("Revoke"), f"{base}/revoke", revoke_q, gettext("Revoked"), danger=True
    )
    rerun = Action(
        "rerun",
        gettext("Re-run failed"),
        f"{base}/rerun",
        rerun_q,
        gettext("Failed ones run again"),
    )
    if task.kind == TaskKind.GROUP.value:
        return [revoke] if is_open else [rerun] if failed else []
    out: list[Action] = []
    if task.state == TaskState.RUNNING.value:
        out.append(Action("pause", gettext("Pause"), f"{base}/pause", "", gettext("Paused")))
    if task.state == TaskState.PAUSED.value:
        out.append(Action("resume", gettext("Resume"), f"{base}/resume", "", gettext("Resumed")))
    if is_open:
        abort_q = gettext(
            "Abort the rollout? Executions not started are revoked; those in flight finish."
        )
        out.append(
            Action("abort", gettext("Abort"), f"{base}/abort", abort_q, gettext("Aborted"), True)
        )
        out.append(revoke)
    elif failed:
        out.append(rerun)
    return out


def target_of(task: Task, group: Group | None) -> str:
    target = task.target or {}
    if task.group_id is not None or "groupId" in target:
        if group:
            return gettext("group %(name)s") % {"name": group.name}
        return gettext("group %(id)s (deleted)") % {"id": target.get("groupId", "?")}
    if "query" in target:
        return gettext("fleet query: %(query)s") % {"query": target["query"]}
    devices = target.get("devices") or []
    if len(devices) == 1:
        return gettext("gateway %(uuid)s") % {"uuid": devices[0]}
    if "selectedFrom" in target:
        return ngettext(
            "%(num)s gateway selected from %(query)s",
            "%(num)s gateways selected from %(query)s",
            len(devices),
        ) % {"num": len(devices), "query": target["selectedFrom"] or gettext("every gateway")}
    return ngettext("%(num)s gateway", "%(num)s gateways", len(devices)) % {"num": len(devices)}


def task_row(view: TaskView, groups: dict[int, Group]) -> TaskRow:
    t = view.task
    counts = view.by_state()
    group = groups.get(t.group_id) if t.group_id is not None else None
    return TaskRow(
        task=t,
        label=label_of(t),
        kind=KIND_LABELS.get(t.kind, t.kind),
        target=target_of(t, group),
        group=group,
        policy=policy_of(t),
        progress=progress_of(t, counts),
        actions=actions_of(t, counts),
    )


def waves_of(view: TaskView) -> list[dict[str, Any]]:
    t = view.task
    out = []
    for i, size in enumerate(t.waves or []):
        row: dict[str, Any] = {"index": i + 1, "size": size, "open": i <= t.current_wave}
        for s in EXECUTION_STATES:
            row[s.value] = view.counts.get((i, s.value), 0)
        out.append(row)
    return out


def self_url(path: str, **params: Any) -> str:
    """A fragment's own URL, without empty parameters."""
    kept = {k: v for k, v in params.items() if v not in ("", None, 0)}
    return path + (f"?{urlencode(kept, doseq=True)}" if kept else "")


# --- reading ----------------------------------------------------------------------------------


async def reader(request: Request, c: Container, *, for_page: bool = False) -> Viewer | None:
    """The viewer if they may read the fleet now (no password to change first), else None
    (``for_page``: see ``session_viewer``)."""
    viewer = await viewer_of(request, c, for_page=for_page)
    if viewer is None or viewer.principal.must_change_password:
        return None
    return viewer if viewer.principal.can(Permission.FLEET_READ) else None


async def task_rows(c: Container, views: Sequence[TaskView]) -> list[TaskRow]:
    groups = await c.fleet.groups_by_id(
        [v.task.group_id for v in views if v.task.group_id is not None]
    )
    return [task_row(v, groups) for v in views]


async def group_rows(c: Container, groups: Sequence[Group]) -> list[GroupRow]:
    """Counts of each group, and its newest task with its progress, in a few queries (the
    API's group objects carry every member, too heavy for a page reloaded at each event)."""
    activity = await c.tasks.group_activity([g.id for g in groups])
    gmap = {g.id: g for g in groups}
    out = []
    for g in groups:
        a = activity[g.id]
        sc, tc = a.statuses, a.states
        out.append(
            GroupRow(
                group=g,
                online=sc.get("online", 0),
                offline=sc.get("offline", 0),
                created=sc.get("created", 0),
                active=sum(tc.get(s.value, 0) for s in ACTIVE),
                completed=sum(tc.get(s.value, 0) for s in COMPLETED),
                revoked=tc.get(TaskState.REVOKED.value, 0),
                latest=task_row(a.latest, gmap) if a.latest else None,
            )
        )
    return out


async def write_context(c: Container, viewer: Viewer | None) -> dict[str, Any]:
    """What the write forms offer: catalogue images and groups (nothing for a viewer)."""
    if viewer is None or not viewer.can_write:
        return {"firmware": [], "all_groups": [], "scopes": SCOPES}
    _, firmware = await c.firmware.list_firmware(offset=0, limit=200)
    _, groups = await c.fleet.group_rows(offset=0, limit=1000)
    return {"firmware": firmware, "all_groups": groups, "scopes": SCOPES}


def _offset(offset: int) -> int:
    return max(0, offset)


# --- groups -----------------------------------------------------------------------------------


@router.get("/groups")
async def groups_page(request: Request, c: ContainerDep) -> Response:
    viewer = await reader(request, c)
    return await page(
        request, c, "groups/index.html", Permission.FLEET_READ, **await write_context(c, viewer)
    )


@router.get("/fragments/groups")
async def groups_fragment(request: Request, c: ContainerDep, offset: Offset = 0) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    offset = _offset(offset)
    total, groups = await c.fleet.group_rows(offset=offset, limit=PAGE_SIZE)
    rows = await group_rows(c, groups)
    return render(
        request,
        "groups/list.html",
        viewer,
        rows=rows,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        url=self_url("/console/fragments/groups", offset=offset),
        page_url=lambda o: self_url("/console/fragments/groups", offset=o),
        live=any(r.latest and r.latest.is_open for r in rows),
    )


async def group_summary_context(c: Container, group: Group) -> dict[str, Any]:
    (row,) = await group_rows(c, [group])
    return {
        "r": row,
        "url": f"/console/fragments/groups/{group.id}/summary",
        "live": bool(row.latest and row.latest.is_open),
    }


@router.get("/groups/{ref}")
async def group_page(request: Request, c: ContainerDep, ref: str) -> Response:
    viewer = await reader(request, c, for_page=True)
    if viewer is None:
        return await page(request, c, "groups/detail.html", Permission.FLEET_READ)
    group_id = int(ref) if ref.isdigit() and len(ref) < 10 else -1
    found = await c.fleet.groups_by_id([group_id])
    if group_id not in found:
        return render(request, "groups/missing.html", viewer, status=404, group_id=ref)
    return render(
        request,
        "groups/detail.html",
        viewer,
        group=found[group_id],
        **await group_summary_context(c, found[group_id]),
        **await write_context(c, viewer),
    )


@router.get("/fragments/groups/{group_id}/summary")
async def group_summary(request: Request, c: ContainerDep, group_id: Int32) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    found = await c.fleet.groups_by_id([group_id])
    if group_id not in found:
        return render(request, "groups/gone.html", viewer, group_id=group_id)
    return render(
        request, "groups/summary.html", viewer, **await group_summary_context(c, found[group_id])
    )


@router.get("/fragments/groups/{group_id}/devices")
async def group_members(
    request: Request, c: ContainerDep, group_id: Int32, offset: Offset = 0
) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    offset = _offset(offset)
    result = await c.fleet.list_devices(
        DeviceFilter(group_id=group_id), offset=offset, limit=PAGE_SIZE
    )
    return render(
        request,
        "groups/members.html",
        viewer,
        group_id=group_id,
        rows=[v.device for v in result.items],
        total=result.total,
        offset=offset,
        page_size=PAGE_SIZE,
        url=self_url(f"/console/fragments/groups/{group_id}/devices", offset=offset),
        page_url=lambda o: self_url(f"/console/fragments/groups/{group_id}/devices", offset=o),
    )


@router.get("/fragments/groups/{group_id}/candidates")
async def group_candidates(
    request: Request, c: ContainerDep, group_id: Int32, q: str = ""
) -> Response:
    """What adding the gateways of a fleet query would do: how many match, are free, are
    here already, or belong to another group (a gateway is in one group at most)."""
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    error = ""
    matched: list[Device] = []
    total = 0
    if q.strip():
        try:
            result = await c.fleet.list_devices(
                DeviceFilter(query=parse(q)), offset=0, limit=PREVIEW_LIMIT
            )
            matched, total = [v.device for v in result.items], result.total
        except EdgefleetError as exc:
            error = exc.message
    else:
        error = gettext('Write a fleet query, e.g. model = "UC-8112-LX" and status = online')
    free = [d for d in matched if d.group_id is None]
    return render(
        request,
        "groups/candidates.html",
        viewer,
        group_id=group_id,
        q=q,
        error=error,
        total=total,
        free=len(free),
        here=sum(1 for d in matched if d.group_id == group_id),
        elsewhere=sum(1 for d in matched if d.group_id not in (None, group_id)),
        beyond=max(0, total - len(matched)),
        sample=free[:SAMPLE],
    )


# --- tasks ------------------------------------------------------------------------------------


@router.get("/tasks")
async def tasks_page(
    request: Request, c: ContainerDep, kind: str = "", state: str = ""
) -> Response:
    viewer = await reader(request, c)
    return await page(
        request,
        c,
        "tasks/index.html",
        Permission.FLEET_READ,
        kind=kind if kind in KINDS else "",
        state=state if state in TASK_STATES else "",
        states=TASK_STATES,
        **await write_context(c, viewer),
    )


@router.get("/fragments/tasks")
async def tasks_fragment(
    request: Request,
    c: ContainerDep,
    kind: str = "",
    state: str = "",
    group: Int32 | None = None,
    offset: Offset = 0,
) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    kind = kind if kind in KINDS else ""
    state = state if state in TASK_STATES else ""
    offset = _offset(offset)
    total, views = await c.tasks.list_tasks(
        kinds=KINDS[kind],
        group_id=group,
        states=[state] if state else [],
        offset=offset,
        limit=PAGE_SIZE,
    )
    rows = await task_rows(c, views)

    def page_url(at: int) -> str:
        return self_url("/console/fragments/tasks", kind=kind, state=state, group=group, offset=at)

    return render(
        request,
        "tasks/list.html",
        viewer,
        rows=rows,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        filtered=bool(kind or state),
        in_group=group is not None,
        url=page_url(offset),
        page_url=page_url,
        live=any(r.is_open for r in rows),
    )


async def _task(c: Container, uuid: str) -> TaskView | None:
    try:
        return await c.tasks.get(uuid)
    except TaskNotFoundError:
        return None


async def task_summary_context(c: Container, view: TaskView) -> dict[str, Any]:
    (row,) = await task_rows(c, [view])
    t = view.task
    return {
        "r": row,
        "t": t,
        "waves": waves_of(view),
        "data": json.dumps(t.payload["data"], indent=2) if "data" in t.payload else "",
        "when": when,
        "url": f"/console/fragments/tasks/{t.uuid}",
        "live": row.is_open,
    }


@router.get("/tasks/{uuid}")
async def task_page(request: Request, c: ContainerDep, uuid: str) -> Response:
    viewer = await reader(request, c, for_page=True)
    if viewer is None:
        return await page(request, c, "tasks/detail.html", Permission.FLEET_READ)
    view = await _task(c, uuid)
    if view is None:
        return render(request, "tasks/missing.html", viewer, status=404, uuid=uuid)
    return render(
        request,
        "tasks/detail.html",
        viewer,
        states=[s.value for s in EXECUTION_STATES],
        **await task_summary_context(c, view),
    )


@router.get("/fragments/tasks/{uuid}")
async def task_summary(request: Request, c: ContainerDep, uuid: str) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    view = await _task(c, uuid)
    if view is None:
        return render(request, "tasks/gone.html", viewer, uuid=uuid)
    return render(request, "tasks/summary.html", viewer, **await task_summary_context(c, view))


@router.get("/fragments/tasks/{uuid}/executions")
async def task_executions(
    request: Request, c: ContainerDep, uuid: str, state: str = "", offset: Offset = 0
) -> Response:
    viewer = await reader(request, c)
    if viewer is None:
        return Response(status_code=401)
    state = state if state in {s.value for s in EXECUTION_STATES} else ""
    offset = _offset(offset)
    view = await _task(c, uuid)
    if view is None:
        return render(request, "tasks/gone.html", viewer, uuid=uuid)
    total, rows = await c.tasks.executions(
        uuid, states=[state] if state else [], offset=offset, limit=PAGE_SIZE
    )
    names = await _names(c, rows)
    return render(
        request,
        "tasks/executions.html",
        viewer,
        uuid=uuid,
        rows=rows,
        names=names,
        total=total,
        state=state,
        offset=offset,
        page_size=PAGE_SIZE,
        rollout=view.task.kind == TaskKind.ROLLOUT.value,
        when=when,
        url=self_url(f"/console/fragments/tasks/{uuid}/executions", state=state, offset=offset),
        page_url=lambda o: self_url(
            f"/console/fragments/tasks/{uuid}/executions", state=state, offset=o
        ),
        live=view.task.state in OPEN,
    )


async def _names(c: Container, rows: Sequence[Execution]) -> dict[str, str]:
    names = await c.fleet.display_names([e.device_uuid for e in rows])
    return {uuid: name for uuid, name in names.items() if name}
