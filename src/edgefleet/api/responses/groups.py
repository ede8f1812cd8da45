"""Groups: ThingsPro's ``Group`` and ``GroupList``, plus our keys."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgefleet.api.responses import Answer, Page
from edgefleet.api.responses.devices import DevicePublic
from edgefleet.domain.tasks import TaskState


class DeviceStatus(Answer):
    onlineCount: int
    offlineCount: int
    createdCount: int
    totalCount: int
    online: int = Field(description="as the spec's examples spell onlineCount")
    offline: int
    created: int


class TaskStatus(Answer):
    activeCount: int
    completedCount: int
    revokedCount: int
    totalCount: int


class TaskRecord(Answer):
    """A member's record of the group's latest task (the spec's ``DeviceTaskCreate``)."""

    uuid: str
    groupTaskUUID: str
    deviceUUID: str
    applyPolicy: str
    retryTimes: int
    scheduledDateTime: str
    revoked: bool
    state: TaskState
    success: bool
    meta: dict[str, Any]
    payload: dict[str, Any]
    createdAt: str
    updatedAt: str


class GroupPublic(Answer):
    id: int
    name: str
    description: str
    createdAt: str
    updatedAt: str
    devices: list[DevicePublic]
    deviceStatus: DeviceStatus
    tasks: list[TaskRecord]
    taskStatus: TaskStatus
    taskUUID: str | None = Field(description="ours: the group's latest task")


class GroupList(Page[GroupPublic]):
    pass
