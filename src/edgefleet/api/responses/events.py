"""Events, alarms and the event counts."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgefleet.api.responses import Answer


class EventPublic(Answer):
    id: int
    at: str
    type: str
    deviceUUID: str | None
    resource: str
    text: str
    data: Any
    severity: str | None = Field(description="an alarm's; null for other events")
    acknowledged: bool | None = Field(default=None, description="alarms only")
    acknowledgedAt: str | None = None
    acknowledgedBy: str | None = None
    cleared: bool | None = Field(default=None, description="alarms only")
    clearedAt: str | None = None
    clearedBy: str | None = None


class EventList(Answer):
    data: list[EventPublic]
    next: str | None = Field(description="the cursor of the next (older) page, null at the end")


class Counted(Answer):
    total: int
    bySeverity: dict[str, int]


class EventSummaryPublic(Answer):
    since: str
    until: str
    total: int
    byType: dict[str, int]
    openAlarms: Counted
    unacknowledged: Counted


class Changed(Answer):
    changed: int = Field(description="how many alarms changed")
