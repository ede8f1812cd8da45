"""Groups, and the task counters they show."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import Execution, Group, Task
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
            select(Task.group_id)
            .join(Execution, Execution.task_id == Task.id)
            .where(Task.group_id.in_(ids), Execution.state.in_([s.value for s in ACTIVE]))
            .distinct()
        )
        return sorted(g for g in rows if g is not None)

    async def task_counts(self, ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """``{group_id: {state: count}}`` over every device task of the group's tasks."""
        out: dict[int, dict[str, int]] = defaultdict(dict)
        if ids:
            rows = await self.s.execute(
                select(Task.group_id, Execution.state, func.count())
                .join(Execution, Execution.task_id == Task.id)
                .where(Task.group_id.in_(ids))
                .group_by(Task.group_id, Execution.state)
            )
            for gid, state, n in rows:
                if gid is not None:
                    out[gid][state] = n
        return out

    async def latest_tasks(self, ids: Sequence[int]) -> dict[int, tuple[Task, list[Execution]]]:
        """For each group, its newest task and that task's executions (device records)."""
        out: dict[int, tuple[Task, list[Execution]]] = {}
        if not ids:
            return out
        newest = (
            select(func.max(Task.id).label("id"))
            .where(Task.group_id.in_(ids))
            .group_by(Task.group_id)
            .subquery()
        )
        latest = list(await self.s.scalars(select(Task).where(Task.id.in_(select(newest.c.id)))))
        records: dict[int, list[Execution]] = defaultdict(list)
        if latest:
            rows = await self.s.scalars(
                select(Execution)
                .where(Execution.task_id.in_([t.id for t in latest]))
                .order_by(Execution.id)
            )
            for r in rows:
                records[r.task_id].append(r)
        for t in latest:
            assert t.group_id is not None
            out[t.group_id] = (t, records[t.id])
        return out
