"""What the group and task pages read from the services, and for whom: the reader (a viewer
who may read the fleet), rows of tasks and groups in a few queries, what the write forms
offer, and the paging of the lists (each fragment's own URL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from edgefleet.bootstrap import Container
from edgefleet.db.tables import Group
from edgefleet.domain.auth import Permission
from edgefleet.domain.tasks import ACTIVE, COMPLETED, TaskState
from edgefleet.services.tasks import TaskView
from edgefleet.web.tasks.rows import GroupRow, TaskRow, task_row
from edgefleet.web.views import Viewer, fragment_viewer

PAGE_SIZE = 50
"""Rows per page of the group, task, member and execution lists."""
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


async def reader(request: Request, c: Container, *, for_page: bool = False) -> Viewer | None:
    """The viewer if they may read the fleet now (no password to change first), else None
    (``for_page``: see ``session_viewer``)."""
    return await fragment_viewer(request, c, Permission.FLEET_READ, for_page=for_page)


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


def page_offset(offset: int) -> int:
    """The first row of a list's page (a negative offset reads as the first page)."""
    return max(0, offset)


def self_url(path: str, **params: Any) -> str:
    """A fragment's own URL, without empty parameters."""
    kept = {k: v for k, v in params.items() if v not in ("", None, 0)}
    return path + (f"?{urlencode(kept, doseq=True)}" if kept else "")
