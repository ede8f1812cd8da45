"""Groups, and the task counters they show."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import DeviceTask, Group, GroupTask
from edgefleet.domain.tasks import ACTIVE
from edgefleet.errors import DuplicateError


class GroupRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, group: Group) -> None:
        self.s.add(group)
        try:
            await self.s.flush()
        except IntegrityError as exc:
            raise DuplicateError("group", "name", group.name) from exc

    async def get(self, group_id: int, *, for_update: bool = False) -> Group | None:
        stmt = select(Group).where(Group.id == group_id)
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.s.scalars(stmt)).first()

    async def get_many(self, ids: Sequence[int]) -> list[Group]:
        if not ids:
            return []
        return list(await self.s.scalars(select(Group).where(Group.id.in_(ids))))

    async def flush_rename(self) -> None:
        try:
            await self.s.flush()
        except IntegrityError as exc:
            raise DuplicateError("group", "name", "(new name)") from exc

    async def page(self, *, offset: int, limit: int) -> tuple[int, list[Group]]:
        total = await self.s.scalar(select(func.count()).select_from(Group))
        rows = await self.s.scalars(select(Group).order_by(Group.id).offset(offset).limit(limit))
        return int(total or 0), list(rows)

    async def delete(self, ids: Sequence[int]) -> None:
        if ids:
            await self.s.execute(delete(Group).where(Group.id.in_(ids)))

    async def busy(self, ids: Sequence[int]) -> list[int]:
        """Groups among ``ids`` with a device task that has not finished."""
        if not ids:
            return []
        rows = await self.s.scalars(
            select(GroupTask.group_id)
            .join(DeviceTask, DeviceTask.group_task_uuid == GroupTask.uuid)
            .where(GroupTask.group_id.in_(ids), DeviceTask.state.in_([s.value for s in ACTIVE]))
            .distinct()
        )
        return sorted(rows)

    async def task_counts(self, ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """``{group_id: {state: count}}`` over every device task of the group's tasks."""
        out: dict[int, dict[str, int]] = defaultdict(dict)
        if ids:
            rows = await self.s.execute(
                select(GroupTask.group_id, DeviceTask.state, func.count())
                .join(DeviceTask, DeviceTask.group_task_uuid == GroupTask.uuid)
                .where(GroupTask.group_id.in_(ids))
                .group_by(GroupTask.group_id, DeviceTask.state)
            )
            for gid, state, n in rows:
                out[gid][state] = n
        return out

    async def latest_tasks(self, ids: Sequence[int]) -> dict[int, tuple[str, list[DeviceTask]]]:
        """For each group, its newest group task's uuid and that task's device records."""
        out: dict[int, tuple[str, list[DeviceTask]]] = {}
        if not ids:
            return out
        newest = (
            select(GroupTask.group_id, func.max(GroupTask.created_at).label("at"))
            .where(GroupTask.group_id.in_(ids))
            .group_by(GroupTask.group_id)
            .subquery()
        )
        latest = await self.s.execute(
            select(GroupTask.group_id, GroupTask.uuid).join(
                newest,
                (GroupTask.group_id == newest.c.group_id) & (GroupTask.created_at == newest.c.at),
            )
        )
        by_task: dict[str, int] = {uuid: gid for gid, uuid in latest}
        records: dict[str, list[DeviceTask]] = defaultdict(list)
        if by_task:
            rows = await self.s.scalars(
                select(DeviceTask)
                .where(DeviceTask.group_task_uuid.in_(list(by_task)))
                .order_by(DeviceTask.created_at, DeviceTask.uuid)
            )
            for r in rows:
                records[r.group_task_uuid].append(r)
        for uuid, gid in by_task.items():
            out[gid] = (uuid, records[uuid])
        return out

    async def group_task_meta(self, uuids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not uuids:
            return {}
        rows = await self.s.execute(
            select(
                GroupTask.uuid,
                GroupTask.apply_policy,
                GroupTask.retry_times,
                GroupTask.scheduled_at,
                GroupTask.meta,
                GroupTask.payload,
            ).where(GroupTask.uuid.in_(uuids))
        )
        return {
            u: {"applyPolicy": p, "retryTimes": r, "scheduledAt": s, "meta": m, "payload": pl}
            for u, p, r, s, m, pl in rows
        }
