"""``/api/v1/audit``: every write, newest first, for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from edgefleet.api.deps import AdminReader, ContainerDep
from edgefleet.api.inputs import Int64, Timestamp
from edgefleet.api.responses import reply
from edgefleet.api.responses.audit import AuditList
from edgefleet.domain.audit import AuditFilter
from edgefleet.presenters.audit import audit_public

router = APIRouter(prefix="/api/v1", tags=["audit"])


@router.get("/audit", name="audit.list", response_model=AuditList)
async def list_audit(
    c: ContainerDep,
    _: AdminReader,
    actor: str | None = None,
    action: Annotated[str | None, Query(description="prefix, e.g. 'devices.'")] = None,
    target: str | None = None,
    outcome: str | None = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    cursor: Annotated[
        Int64 | None, Query(description="the nextCursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    entries = await c.audit.query(
        AuditFilter(
            actor=actor,
            action=action,
            target_id=target,
            outcome=outcome,
            since=since,
            until=until,
            before_id=cursor,
        ),
        limit,
    )
    next_cursor = entries[-1].id if len(entries) == limit else None
    return reply({"data": [audit_public(e) for e in entries], "nextCursor": next_cursor})
