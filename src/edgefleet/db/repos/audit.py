"""The audit log: append and query."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from edgefleet.db.tables import AuditEntry
from edgefleet.domain.audit import AuditFilter


class AuditRepo:
    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.s = session

    async def add(self, values: dict[str, Any]) -> None:
        """One entry (the columns of ``AuditEntry``), by a single INSERT."""
        await self.s.execute(insert(AuditEntry).values(values))

    async def query(self, f: AuditFilter, limit: int) -> list[AuditEntry]:
        stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if f.actor is not None:
            stmt = stmt.where(AuditEntry.actor_name == f.actor)
        if f.action is not None:
            stmt = stmt.where(AuditEntry.action.startswith(f.action, autoescape=True))
        if f.target_id is not None:
            stmt = stmt.where(AuditEntry.target_id == f.target_id)
        if f.outcome is not None:
            stmt = stmt.where(AuditEntry.outcome == f.outcome)
        if f.since is not None:
            stmt = stmt.where(AuditEntry.at >= f.since)
        if f.until is not None:
            stmt = stmt.where(AuditEntry.at < f.until)
        if f.before_id is not None:
            stmt = stmt.where(AuditEntry.id < f.before_id)
        return list(await self.s.scalars(stmt))
