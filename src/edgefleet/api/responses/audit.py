"""The audit log."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgefleet.api.responses import Answer


class Actor(Answer):
    type: str
    id: str
    name: str


class Target(Answer):
    type: str
    id: str


class AuditPublic(Answer):
    id: int
    at: str
    actor: Actor
    action: str
    target: Target
    outcome: str
    statusCode: int
    ip: str
    detail: dict[str, Any]


class AuditList(Answer):
    data: list[AuditPublic]
    nextCursor: int | None = Field(description="the cursor of the next (older) page")
