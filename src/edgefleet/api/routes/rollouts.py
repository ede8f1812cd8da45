"""``/api/v1/rollouts`` and ``/api/v1/executions``: staged rollouts (ours, not ThingsPro's).

A rollout is a task over a group, a fleet query or a list of devices, split into ordered
waves; the next wave opens when the current one reaches ``successThreshold`` % successes,
and the rollout aborts when a wave's failures pass ``errorThreshold`` %. ``maxPerMinute``
and a maintenance ``window`` limit when executions start. ``dryRun`` answers with the
devices each wave would hold and creates nothing. Errors are problem+json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.api.deps import (
    ContainerDep,
    FleetReader,
    FleetWriter,
    audit_action,
    audit_target,
)
from edgefleet.api.inputs import Int32, Offset, Timestamp
from edgefleet.api.responses import reply
from edgefleet.api.responses.tasks import (
    ExecutionList,
    ExecutionPublic,
    RolloutPreview,
    TaskList,
    TaskPublic,
)
from edgefleet.api.routes.tasks import Payload
from edgefleet.api.taskviews import executions_page
from edgefleet.domain.tasks import TaskKind, TaskState
from edgefleet.presenters.pages import page
from edgefleet.presenters.tasks import execution_public, task_public
from edgefleet.services.tasks import TaskService, TaskSpec

router = APIRouter(prefix="/api/v1", tags=["rollouts"])

ROLLOUT = (TaskKind.ROLLOUT,)
FIRMWARE = Payload(method="post", resource="/system/firmware")


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groupId: Int32 | None = None
    query: str | None = Field(default=None, max_length=4000)
    devices: list[str] | None = Field(default=None, min_length=1, max_length=10000)
    exact: bool = False
    """``devices`` with ``query``: gateways picked from a list of that query (a console
    selection). The rollout is refused (409) unless each still matches it and, with
    ``exact``, unless they are every gateway it matches."""

    @model_validator(mode="after")
    def _one(self) -> Target:
        given = [k for k in ("groupId", "query", "devices") if getattr(self, k) is not None]
        if given == ["query", "devices"]:
            return self  # a selection and the query it was made from ("": every gateway)
        if self.query is not None and not self.query.strip():
            raise ValueError("query must not be empty")
        if len(given) != 1:
            raise ValueError("give exactly one of groupId, query, devices (or devices and query)")
        if self.exact:
            raise ValueError("exact needs devices and the query they were selected from")
        return self


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = "UTC"
    days: list[str] = Field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    )
    start: str = "00:00"
    end: str = "00:00"


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=255)
    target: Target
    payload: Payload | None = None
    firmwareId: Int32 | None = None
    firmwareDelay: float = Field(default=3, ge=0, le=3600)
    waves: list[int | str] = Field(default_factory=list, max_length=100)
    successThreshold: int = Field(default=100, ge=0, le=100)
    errorThreshold: int | None = Field(default=None, ge=0, le=100)
    maxPerMinute: int | None = Field(default=None, ge=1, le=1_000_000)
    window: Window | None = None
    retryTimes: int = Field(default=0, ge=0, le=100)
    retryIntervalSeconds: float = Field(default=10, ge=1, le=86400)
    timeoutSeconds: float = Field(default=30, ge=1, le=3600)
    completionTimeoutSeconds: float | None = Field(default=None, ge=1, le=86400)
    scheduledAt: Timestamp | None = None
    expiresAt: Timestamp | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    dryRun: bool = False

    @model_validator(mode="after")
    def _what(self) -> RolloutCreate:
        if (self.payload is None) == (self.firmwareId is None):
            raise ValueError("give either payload or firmwareId")
        return self

    def spec(self, created_by: str) -> TaskSpec:
        p = self.payload or FIRMWARE
        data = p.data
        if self.firmwareId is not None:
            data = {"delay": self.firmwareDelay}
        return TaskSpec(
            kind=TaskKind.ROLLOUT,
            method=p.method,
            resource=p.resource,
            data=data,
            name=self.name,
            group_id=self.target.groupId,
            query=self.target.query,
            devices=self.target.devices,
            exact=self.target.exact,
            retry_times=self.retryTimes,
            retry_interval=self.retryIntervalSeconds,
            scheduled_at=self.scheduledAt,
            expires_at=self.expiresAt,
            timeout_seconds=self.timeoutSeconds,
            completion_seconds=self.completionTimeoutSeconds,
            waves=self.waves,
            success_threshold=self.successThreshold,
            error_threshold=self.errorThreshold,
            max_per_minute=self.maxPerMinute,
            window=self.window.model_dump() if self.window else None,
            meta=self.meta,
            firmware_id=self.firmwareId,
            created_by=created_by,
        )


@router.post(
    "/rollouts",
    name="rollouts.create",
    status_code=201,
    response_model=TaskPublic,
    responses={200: {"model": RolloutPreview, "description": "dryRun: the plan, nothing created"}},
)
async def create_rollout(
    request: Request, c: ContainerDep, who: FleetWriter, body: RolloutCreate
) -> Response:
    spec = body.spec(who.email)
    if body.dryRun:
        audit_action(request, "rollouts.preview")  # creates nothing
        plan = await c.tasks.plan(spec)
        waves, start = [], 0
        for i, n in enumerate(plan.waves):
            waves.append({"index": i + 1, "size": n, "devices": plan.devices[start : start + n]})
            start += n
        return reply(
            {"dryRun": True, "total": len(plan.devices), "skipped": plan.skipped, "waves": waves}
        )
    view = await c.tasks.create(spec)
    audit_target(request, "task", view.task.uuid)
    return reply(task_public(view), 201)


@router.get("/rollouts", name="rollouts.list", response_model=TaskList)
async def list_rollouts(
    c: ContainerDep,
    _: FleetReader,
    state: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI reads, never mutates
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> Response:
    total, views = await c.tasks.list_tasks(kinds=ROLLOUT, states=state, offset=offset, limit=limit)
    return reply(page(total, offset, limit, [task_public(v) for v in views]))


@router.get("/rollouts/{uuid}", name="rollouts.get", response_model=TaskPublic)
async def get_rollout(c: ContainerDep, _: FleetReader, uuid: str) -> Response:
    return reply(task_public(await c.tasks.get(uuid, kinds=ROLLOUT)))


@router.get("/rollouts/{uuid}/executions", name="rollouts.executions", response_model=ExecutionList)
async def rollout_executions(
    c: ContainerDep,
    _: FleetReader,
    uuid: str,
    state: Annotated[list[TaskState], Query()] = [],  # noqa: B006
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    return reply(await executions_page(c.tasks, uuid, ROLLOUT, state, offset, limit))


ACTIONS = {
    "pause": TaskService.pause,
    "resume": TaskService.resume,
    "abort": TaskService.abort,
    "revoke": TaskService.revoke,
    "rerun": TaskService.rerun_failed,
}


@router.post("/rollouts/{uuid}/{action}", name="rollouts.steer", response_model=TaskPublic)
async def steer_rollout(
    request: Request,
    c: ContainerDep,
    _: FleetWriter,
    uuid: str,
    action: Literal["pause", "resume", "abort", "revoke", "rerun"],
) -> Response:
    """``pause`` stops new starts, ``resume`` undoes it, ``abort`` revokes what has not
    started, ``revoke`` also what is in flight (its gateways are told to cancel), ``rerun``
    runs the failed executions again."""
    audit_target(request, "task", uuid)
    return reply(task_public(await ACTIONS[action](c.tasks, uuid, ROLLOUT)))


@router.get("/executions/{uuid}", name="executions.get", response_model=ExecutionPublic)
async def get_execution(c: ContainerDep, _: FleetReader, uuid: str) -> Response:
    e, task, history = await c.tasks.execution(uuid)
    return reply(execution_public(e, task, history))
