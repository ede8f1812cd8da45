"""ThingsPro's asynchronous remote tasks: ``/groupTasks`` and ``/deviceJobRelay``.

``POST /groupTasks`` answers with the group (the spec's example; its schema says an array),
whose ``tasks`` are the new task's device records and ``taskUUID`` the task. A group with an
unfinished task refuses a second one (409). The rest under ``/groupTasks/{uuid}`` (read,
executions, revoke, re-run failed) is ours; errors keep the original's ``{"message"}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.api.deps import ContainerDep, FleetReader, FleetWriter, audit_target
from edgefleet.api.errors import CompatRoute
from edgefleet.api.inputs import Int32, Int64, Offset, Timestamp
from edgefleet.api.responses import reply
from edgefleet.api.responses.groups import GroupPublic
from edgefleet.api.responses.tasks import (
    ExecutionList,
    RelayJob,
    RelayJobCreated,
    TaskList,
    TaskPublic,
)
from edgefleet.api.routes.tasks import Payload
from edgefleet.api.taskviews import executions_page
from edgefleet.domain.tasks import RETRY_INTERVAL, TaskKind, TaskState
from edgefleet.presenters.groups import group_public
from edgefleet.presenters.pages import page
from edgefleet.presenters.tasks import relay_job_public, task_public
from edgefleet.services.tasks import TaskSpec

router = APIRouter(prefix="/api/v1", tags=["remote tasks"], route_class=CompatRoute)

MAX_TIMEOUT = 3600.0
GROUP = (TaskKind.GROUP,)


def _time(v: Any) -> Any:
    """ThingsPro sends ``""`` for "no time"; a time without offset is UTC."""
    if v in ("", None):
        return None
    return v


class GroupTaskCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    groupId: Int32
    payload: Payload
    applyPolicy: Literal["none", "retry", "schedule", "scheduled"] = "none"
    retryTimes: int = Field(default=0, ge=0, le=100)
    scheduledDateTime: Timestamp | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    # ours
    expiresAt: Timestamp | None = None
    timeoutSeconds: float = Field(default=30.0, ge=1, le=MAX_TIMEOUT)
    completionTimeoutSeconds: float | None = Field(default=None, ge=1, le=86400)
    retryIntervalSeconds: float = Field(default=RETRY_INTERVAL, ge=0.5, le=86400)

    _times = field_validator("scheduledDateTime", "expiresAt", mode="before")(_time)

    @model_validator(mode="after")
    def _policy(self) -> GroupTaskCreate:
        if self.applyPolicy in ("schedule", "scheduled") and self.scheduledDateTime is None:
            raise ValueError(f"applyPolicy {self.applyPolicy!r} needs scheduledDateTime")
        return self


class JobRelayCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    deviceUUID: str = Field(min_length=1, max_length=64)
    payload: Payload
    # ours
    expiresAt: Timestamp | None = None
    timeoutSeconds: float = Field(default=30.0, ge=1, le=MAX_TIMEOUT)

    _times = field_validator("expiresAt", mode="before")(_time)


@router.post("/groupTasks", name="groupTasks.create", response_model=GroupPublic)
async def create_group_task(
    request: Request, c: ContainerDep, who: FleetWriter, body: GroupTaskCreate
) -> Response:
    p = body.payload
    view = await c.tasks.create(
        TaskSpec(
            kind=TaskKind.GROUP,
            method=p.method,
            resource=p.resource,
            data=p.data,
            group_id=body.groupId,
            apply_policy=body.applyPolicy,
            retry_times=body.retryTimes,
            retry_interval=body.retryIntervalSeconds,
            scheduled_at=body.scheduledDateTime,
            expires_at=body.expiresAt,
            timeout_seconds=body.timeoutSeconds,
            completion_seconds=body.completionTimeoutSeconds,
            meta=body.meta,
            created_by=who.email,
        )
    )
    audit_target(request, "task", view.task.uuid)
    return reply(group_public(await c.fleet.get_group(body.groupId)))


@router.get("/groupTasks", name="groupTasks.list", response_model=TaskList)
async def list_group_tasks(
    c: ContainerDep,
    _: FleetReader,
    groupId: Int32 | None = None,
    state: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI reads, never mutates
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> Response:
    total, views = await c.tasks.list_tasks(
        kinds=GROUP, group_id=groupId, states=state, offset=offset, limit=limit
    )
    return reply(page(total, offset, limit, [task_public(v) for v in views]))


@router.get("/groupTasks/{uuid}", name="groupTasks.get", response_model=TaskPublic)
async def get_group_task(c: ContainerDep, _: FleetReader, uuid: str) -> Response:
    return reply(task_public(await c.tasks.get(uuid, kinds=GROUP)))


@router.get(
    "/groupTasks/{uuid}/executions", name="groupTasks.executions", response_model=ExecutionList
)
async def group_task_executions(
    c: ContainerDep,
    _: FleetReader,
    uuid: str,
    state: Annotated[list[TaskState], Query()] = [],  # noqa: B006
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    return reply(await executions_page(c.tasks, uuid, GROUP, state, offset, limit))


@router.post("/groupTasks/{uuid}/revoke", name="groupTasks.revoke", response_model=TaskPublic)
@router.delete("/groupTasks/{uuid}", name="groupTasks.delete", response_model=TaskPublic)
async def revoke_group_task(
    request: Request, c: ContainerDep, _: FleetWriter, uuid: str
) -> Response:
    """``DELETE revokes too: the records stay, as the original counted them in
    ``revokedCount``."""
    audit_target(request, "task", uuid)
    return reply(task_public(await c.tasks.revoke(uuid, kinds=GROUP)))


@router.post("/groupTasks/{uuid}/rerun", name="groupTasks.rerun", response_model=TaskPublic)
async def rerun_group_task(
    request: Request, c: ContainerDep, _: FleetWriter, uuid: str
) -> Response:
    audit_target(request, "task", uuid)
    return reply(task_public(await c.tasks.rerun_failed(uuid, kinds=GROUP)))


@router.post(
    "/deviceJobRelay",
    name="deviceJobRelay.create",
    status_code=201,
    response_model=RelayJobCreated,
)
async def create_job_relay(
    request: Request, c: ContainerDep, who: FleetWriter, body: JobRelayCreate
) -> Response:
    """Queue one request for one gateway; an offline gateway gets it when it reconnects,
    unless the job expires first (default 1 h)."""
    p = body.payload
    view = await c.tasks.create(
        TaskSpec(
            kind=TaskKind.RELAY,
            method=p.method,
            resource=p.resource,
            data=p.data,
            devices=[body.deviceUUID],
            expires_at=body.expiresAt,
            timeout_seconds=body.timeoutSeconds,
            created_by=who.email,
        )
    )
    audit_target(request, "device", body.deviceUUID)
    return reply({"deviceUUID": body.deviceUUID, "taskId": view.task.id}, 201)


@router.get("/deviceJobRelay/{id}", name="deviceJobRelay.get", response_model=RelayJob)
async def get_job_relay(c: ContainerDep, _: FleetReader, id: Int64) -> Response:
    task, execution = await c.tasks.relay_job(id)
    return reply(relay_job_public(task, execution))
