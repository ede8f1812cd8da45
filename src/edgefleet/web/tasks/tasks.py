"""Console pages of tasks (``/console/tasks``): group tasks, rollouts and job relays, each with
a bar of its executions by state and the share done; a page per task with its counts, waves,
executions (paged, by state) and the actions its state allows (revoke, pause, resume, abort,
re-run the failed); a rollout form whose dry run says how many gateways it reaches before it
is created.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.api.inputs import Int32, Offset
from edgefleet.bootstrap import Container
from edgefleet.db.tables import Execution
from edgefleet.domain.auth import Permission
from edgefleet.domain.tasks import TaskKind, TaskState
from edgefleet.services.tasks import TaskNotFoundError, TaskView
from edgefleet.web.tasks.reading import (
    PAGE_SIZE,
    page_offset,
    reader,
    self_url,
    task_rows,
    write_context,
)
from edgefleet.web.tasks.rows import EXECUTION_STATES, OPEN, waves_of, when
from edgefleet.web.views import page, render

router = APIRouter(prefix="/console", include_in_schema=False)

KINDS: dict[str, tuple[TaskKind, ...]] = {
    "": (TaskKind.GROUP, TaskKind.ROLLOUT),
    "group": (TaskKind.GROUP,),
    "rollout": (TaskKind.ROLLOUT,),
    "relay": (TaskKind.RELAY,),
}
TASK_STATES = [s.value for s in TaskState]


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
    offset = page_offset(offset)
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
    offset = page_offset(offset)
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
