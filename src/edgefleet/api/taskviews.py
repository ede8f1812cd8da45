"""A task's executions as a list page (a service call shaped by the presenters)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgefleet.domain.tasks import TaskKind, TaskState
from edgefleet.presenters.pages import page
from edgefleet.presenters.tasks import execution_public
from edgefleet.services.tasks import TaskService


async def executions_page(
    tasks: TaskService,
    uuid: str,
    kinds: Sequence[TaskKind],
    states: Sequence[TaskState],
    offset: int,
    limit: int,
) -> dict[str, Any]:
    """A task's executions (of a task of one of ``kinds``), as a list page."""
    total, rows = await tasks.executions(
        uuid, states=[s.value for s in states], offset=offset, limit=limit, kinds=kinds
    )
    return page(total, offset, limit, [execution_public(e) for e in rows])
