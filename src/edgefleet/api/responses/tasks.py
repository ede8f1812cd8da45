"""Tasks (group, device, firmware, rollout), their executions and relay jobs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgefleet.api.responses import Answer, Page
from edgefleet.domain.tasks import TaskState


class Wave(Answer):
    index: int
    size: int
    pending: int
    running: int
    success: int
    failure: int
    revoked: int
    open: bool


class ExecutionCounts(Answer):
    pending: int
    running: int
    success: int
    failure: int
    revoked: int


class TaskPublic(Answer):
    uuid: str
    id: int
    kind: str
    name: str
    state: TaskState
    detail: str
    target: dict[str, Any]
    groupId: int | None
    payload: dict[str, Any]
    firmwareId: int | None
    completion: str
    applyPolicy: str
    retryTimes: int
    retryIntervalSeconds: float
    timeoutSeconds: float
    completionTimeoutSeconds: float
    scheduledAt: str | None
    expiresAt: str | None
    successThreshold: int
    errorThreshold: int | None
    maxPerMinute: int | None
    window: dict[str, Any] | None
    currentWave: int = Field(description="1-based; 0 before the task has waves")
    waves: list[Wave]
    counts: ExecutionCounts
    total: int
    meta: dict[str, Any]
    revoked: bool
    createdBy: str
    createdAt: str
    updatedAt: str
    startedAt: str | None
    finishedAt: str | None


class TaskList(Page[TaskPublic]):
    pass


class ExecutionStep(Answer):
    at: str
    state: str
    detail: str
    code: int | None


class ExecutionPublic(Answer):
    uuid: str
    deviceUUID: str
    wave: int
    state: TaskState
    success: bool
    revoked: bool
    attempts: int
    code: int | None
    progress: int | None
    detail: str
    result: Any
    createdAt: str
    updatedAt: str
    startedAt: str | None
    finishedAt: str | None
    taskUUID: str | None = Field(default=None, description="with the execution's task")
    taskKind: str | None = None
    history: list[ExecutionStep] | None = Field(default=None, description="a single execution")


class ExecutionList(Page[ExecutionPublic]):
    pass


class RelayResult(Answer):
    """The gateway's answer (a Sanji response) with the job's keys."""

    model_config = Answer.model_config | {"extra": "allow"}

    taskId: int
    deviceUUID: str
    code: int


class RelayJob(Answer):
    """The spec's ``DeviceJobRelay``."""

    taskId: int
    deviceUUID: str
    status: str
    state: TaskState
    createdAt: str
    updatedAt: str
    detail: str
    code: int | None = Field(default=None, description="absent until the gateway answered")
    result: RelayResult | None = Field(default=None, description="absent until it answered")


class RelayJobCreated(Answer):
    """The spec's ``DeviceJobRelayResponse``."""

    deviceUUID: str
    taskId: int


class DeviceTaskResponse(Answer):
    """The spec's ``DeviceTaskResp``: the gateway's response message as it sent it (any other
    key it sent too), with ``taskID`` beside ``task_id``."""

    model_config = Answer.model_config | {"extra": "allow"}

    taskID: str
    task_id: str
    code: int = Field(description="the gateway's status code (the HTTP status is 200)")
    method: str
    resource: str
    sign: list[str]
    data: Any = Field(description="the gateway's answer body")
    id: int | None = None


class PlannedWave(Answer):
    index: int
    size: int
    devices: list[str]


class RolloutPreview(Answer):
    """``dryRun``: what the rollout would do; nothing is created."""

    dryRun: bool
    total: int
    skipped: int = Field(description="gateways left out (a firmware for other models)")
    waves: list[PlannedWave]
