"""Tasks, executions and their history.

Claiming is one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``: on
PostgreSQL concurrent claimers skip each other's rows; SQLite has one writer at a time and
runs the statement atomically, so no execution is claimed twice on either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.db.tables import Device, Execution, ExecutionEvent, Task
from edgefleet.domain.devices import ConnectionStatus
from edgefleet.domain.tasks import ACTIVE, TASK_OPEN, TaskKind, TaskState
from edgefleet.errors import ConflictError

OPEN_STATES = [s.value for s in TASK_OPEN]
ACTIVE_STATES = [s.value for s in ACTIVE]


@dataclass(frozen=True)
class Claimed:
    id: int
    uuid: str
    task_id: int
    device_uuid: str
    message_id: str
    attempts: int
    broker_node: str | None = None
    """The broker node its gateway is on (broker nodes only), read with the claim."""


@dataclass(frozen=True)
class HistoryRow:
    execution_id: int
    at: datetime
    state: str
    detail: str = ""
    code: int | None = None


class TaskRepo:
    def __init__(self, s: AsyncSession) -> None:
        self.s = s
        self._dialect = s.get_bind().dialect.name

    async def begin_write(self) -> None:
        """SQLite: take the write lock now. A transaction that reads and then writes would
        otherwise fail when another writer committed in between (WAL snapshots); with the
        lock taken first it waits its turn (busy_timeout) instead."""
        if self._dialect == "sqlite":
            await self.s.execute(text("DELETE FROM execution_events WHERE 0"))

    # --- creating ---------------------------------------------------------------------------

    async def add(self, task: Task, executions: list[dict[str, Any]]) -> Task:
        """Insert a task and its executions (rows of Execution columns, task_id filled in)."""
        self.s.add(task)
        try:
            await self.s.flush()
        except IntegrityError as exc:
            if task.group_id is not None:
                raise ConflictError(
                    f"group {task.group_id} already has an unfinished task: wait for it, or "
                    "revoke it first"
                ) from exc
            raise
        for row in executions:
            row["task_id"] = task.id
        if self._dialect == "postgresql" and len(executions) > 100:
            await self._copy_executions(executions)
        else:
            table = cast(Table, Execution.__table__)
            for start in range(0, len(executions), 5000):
                await self.s.execute(insert(table), executions[start : start + 5000])
        return task

    async def _copy_executions(self, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL's COPY: a group task's ten thousand rows in tens of milliseconds
        (executemany INSERTs took over a second). Same rows as the INSERT path: times as
        naive UTC, as UTCDateTime stores them."""
        columns = list(rows[0])
        times = {"due_at", "created_at", "updated_at"}

        def value(row: dict[str, Any], col: str) -> Any:
            v = row[col]
            if col in times and v is not None:
                return v.astimezone(UTC).replace(tzinfo=None)
            return v

        records = [tuple(value(r, col) for col in columns) for r in rows]
        conn = await self.s.connection()
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            "executions", records=records, columns=columns
        )

    # --- reading ----------------------------------------------------------------------------

    async def get(self, *, uuid: str | None = None, id: int | None = None) -> Task | None:
        q = select(Task)
        q = q.where(Task.uuid == uuid) if uuid is not None else q.where(Task.id == id)
        return (await self.s.scalars(q)).first()

    async def lock(self, task_id: int) -> Task | None:
        q = select(Task).where(Task.id == task_id)
        if self._dialect == "postgresql":
            q = q.with_for_update()
        return (await self.s.scalars(q)).first()

    async def page(
        self,
        *,
        kinds: Sequence[str],
        group_id: int | None,
        states: Sequence[str],
        offset: int,
        limit: int,
    ) -> tuple[int, list[Task]]:
        cond: list[ColumnElement[bool]] = [Task.kind.in_(list(kinds))]
        if group_id is not None:
            cond.append(Task.group_id == group_id)
        if states:
            cond.append(Task.state.in_(list(states)))
        total = await self.s.scalar(select(func.count()).select_from(Task).where(*cond))
        rows = await self.s.scalars(
            select(Task).where(*cond).order_by(Task.id.desc()).offset(offset).limit(limit)
        )
        return int(total or 0), list(rows)

    async def newest_of_groups(self, group_ids: Sequence[int]) -> list[Task]:
        """The newest task of each of the groups (none for a group without tasks)."""
        if not group_ids:
            return []
        newest = (
            select(func.max(Task.id)).where(Task.group_id.in_(group_ids)).group_by(Task.group_id)
        )
        return list(await self.s.scalars(select(Task).where(Task.id.in_(newest))))

    async def counts(self, task_ids: Sequence[int]) -> dict[int, dict[tuple[int, str], int]]:
        """``{task_id: {(wave, state): n}}``."""
        out: dict[int, dict[tuple[int, str], int]] = {t: {} for t in task_ids}
        if not task_ids:
            return out
        rows = await self.s.execute(
            select(Execution.task_id, Execution.wave, Execution.state, func.count())
            .where(Execution.task_id.in_(list(task_ids)))
            .group_by(Execution.task_id, Execution.wave, Execution.state)
        )
        for tid, wave, state, n in rows:
            out[tid][(wave, state)] = n
        return out

    async def executions(
        self, task_id: int, *, states: Sequence[str], offset: int, limit: int
    ) -> tuple[int, list[Execution]]:
        cond: list[ColumnElement[bool]] = [Execution.task_id == task_id]
        if states:
            cond.append(Execution.state.in_(list(states)))
        total = await self.s.scalar(select(func.count()).select_from(Execution).where(*cond))
        rows = await self.s.scalars(
            select(Execution).where(*cond).order_by(Execution.id).offset(offset).limit(limit)
        )
        return int(total or 0), list(rows)

    async def execution(self, uuid: str) -> Execution | None:
        return (await self.s.scalars(select(Execution).where(Execution.uuid == uuid))).first()

    async def execution_subjects(self, ids: Sequence[int]) -> dict[int, tuple[str, str, Task]]:
        """``{execution id: (execution uuid, device uuid, task)}`` of these executions."""
        found: dict[int, tuple[str, str, Task]] = {}
        for start in range(0, len(ids), 1000):
            q = (
                select(Execution.id, Execution.uuid, Execution.device_uuid, Task)
                .join(Task, Task.id == Execution.task_id)
                .where(Execution.id.in_(list(ids[start : start + 1000])))
            )
            for eid, euuid, device, task in await self.s.execute(q):
                found[eid] = (euuid, device, task)
        return found

    async def history(self, execution_id: int) -> list[ExecutionEvent]:
        rows = await self.s.scalars(
            select(ExecutionEvent)
            .where(ExecutionEvent.execution_id == execution_id)
            .order_by(ExecutionEvent.id)
        )
        return list(rows)

    async def open_tasks(self) -> list[Task]:
        """Tasks that may still start or finish executions (relay jobs finish on their own)."""
        rows = await self.s.scalars(
            select(Task)
            .where(Task.state.in_(OPEN_STATES), Task.kind != TaskKind.RELAY.value)
            .order_by(Task.id)
        )
        return list(rows)

    async def started_since(self, task_id: int, since: datetime) -> int:
        n = await self.s.scalar(
            select(func.count())
            .select_from(Execution)
            .where(Execution.task_id == task_id, Execution.started_at >= since)
        )
        return int(n or 0)

    # --- dispatching ------------------------------------------------------------------------

    async def start_due_tasks(self, now: datetime) -> None:
        await self.s.execute(
            update(Task)
            .where(
                Task.state == TaskState.PENDING.value,
                or_(Task.scheduled_at.is_(None), Task.scheduled_at <= now),
            )
            .values(state=TaskState.RUNNING.value, started_at=now, updated_at=now)
        )

    async def claim(
        self,
        now: datetime,
        limit: int,
        lease: float,
        *,
        task_id: int | None = None,
    ) -> list[Claimed]:
        """Mark up to ``limit`` due executions of running tasks whose gateway is online as
        RUNNING (a new attempt, unless the previous claim never got its request out), and
        return them. ``task_id``: of that task only; else of any task without a rate limit or
        a window (those are claimed one by one, when they may start more)."""
        pick = (
            select(Execution.id)
            .join(Task, Task.id == Execution.task_id)
            .join(Device, Device.uuid == Execution.device_uuid)
            .where(
                Execution.state == TaskState.PENDING.value,
                Execution.due_at <= now,
                Task.state == TaskState.RUNNING.value,
                Device.connection_status == ConnectionStatus.ONLINE.value,
            )
            .order_by(Execution.id)
            .limit(limit)
        )
        if task_id is not None:
            pick = pick.where(Execution.task_id == task_id)
        else:
            pick = pick.where(Task.max_per_minute.is_(None), Task.window.is_(None))
        if self._dialect == "postgresql":
            pick = pick.with_for_update(of=Execution, skip_locked=True)
        rows = await self.s.execute(
            update(Execution)
            .where(Execution.id.in_(pick.scalar_subquery()))
            .values(
                state=TaskState.RUNNING.value,
                attempts=Execution.attempts + 1,
                due_at=now + timedelta(seconds=lease),
                sent_at=None,
                acked_at=None,
                started_at=func.coalesce(Execution.started_at, now),
                updated_at=now,
            )
            .returning(
                Execution.id,
                Execution.uuid,
                Execution.task_id,
                Execution.device_uuid,
                Execution.message_id,
                Execution.attempts,
                select(Device.broker_node)
                .where(Device.uuid == Execution.device_uuid)
                .scalar_subquery(),
            )
            .execution_options(synchronize_session=False)
        )
        return sorted((Claimed(*r) for r in rows), key=lambda c: c.id)

    async def mark_sent(self, ids: Sequence[int], now: datetime, wait: dict[int, float]) -> None:
        """The requests of these claims went out: their answer is due ``wait[id]`` from now.
        An answer may have been recorded already (it can beat this write): that row is left
        as the answer made it."""
        if not ids:
            return
        t = cast(Table, Execution.__table__)
        await self.s.execute(
            update(t)
            .where(
                t.c.id == bindparam("eid"),
                t.c.state == TaskState.RUNNING.value,
                t.c.sent_at.is_(None),
                t.c.acked_at.is_(None),
            )
            .values(sent_at=bindparam("sent"), due_at=bindparam("due")),
            [{"eid": i, "sent": now, "due": now + timedelta(seconds=wait[i])} for i in sorted(ids)],
        )

    async def resend_unanswered(self, now: datetime) -> int:
        """Every RUNNING execution still without an answer is due again now, as not sent:
        it goes out again with the same ``message_id`` (see TaskEngine.recover)."""
        result = await self.s.execute(
            update(Execution)
            .where(Execution.state == TaskState.RUNNING.value, Execution.acked_at.is_(None))
            .values(due_at=now, sent_at=None)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def overdue(self, now: datetime, limit: int) -> list[tuple[Execution, Task]]:
        """RUNNING executions past ``due_at``, locked (others' locked rows are skipped)."""
        q = (
            select(Execution, Task)
            .join(Task, Task.id == Execution.task_id)
            .where(Execution.state == TaskState.RUNNING.value, Execution.due_at < now)
            .order_by(Execution.id)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            q = q.with_for_update(of=Execution, skip_locked=True)
        return [(e, t) for e, t in await self.s.execute(q)]

    async def expire(self, now: datetime) -> list[tuple[int, int]]:
        """Executions still waiting when their task expired: FAILURE; ``(id, task_id)``."""
        expired = select(Task.id).where(
            Task.expires_at.is_not(None), Task.expires_at < now, Task.state.in_(OPEN_STATES)
        )
        rows = await self.s.execute(
            update(Execution)
            .where(
                Execution.state == TaskState.PENDING.value,
                Execution.task_id.in_(expired.scalar_subquery()),
            )
            .values(
                state=TaskState.FAILURE.value,
                due_at=None,
                detail="expired: the gateway was not reached before the task expired",
                finished_at=now,
                updated_at=now,
            )
            .returning(Execution.id, Execution.task_id)
            .execution_options(synchronize_session=False)
        )
        return [(i, t) for i, t in rows]

    async def open_wave(self, task_id: int, wave: int, now: datetime) -> None:
        await self.s.execute(
            update(Execution)
            .where(
                Execution.task_id == task_id,
                Execution.wave == wave,
                Execution.state == TaskState.PENDING.value,
                Execution.due_at.is_(None),
            )
            .values(due_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )

    async def revoke_pending(self, task_id: int, now: datetime, detail: str) -> list[int]:
        rows = await self.s.execute(
            update(Execution)
            .where(Execution.task_id == task_id, Execution.state == TaskState.PENDING.value)
            .values(
                state=TaskState.REVOKED.value,
                revoked=True,
                due_at=None,
                detail=detail,
                finished_at=now,
                updated_at=now,
            )
            .returning(Execution.id)
            .execution_options(synchronize_session=False)
        )
        return [r[0] for r in rows]

    async def revoke_running(
        self, task_id: int, now: datetime, detail: str
    ) -> list[tuple[int, str, str | None]]:
        """In-flight executions REVOKED; ``(id, device_uuid, message_id if it was sent)``."""
        rows = await self.s.execute(
            update(Execution)
            .where(Execution.task_id == task_id, Execution.state == TaskState.RUNNING.value)
            .values(
                state=TaskState.REVOKED.value,
                revoked=True,
                due_at=None,
                detail=detail,
                finished_at=now,
                updated_at=now,
            )
            .returning(Execution.id, Execution.device_uuid, Execution.message_id, Execution.sent_at)
            .execution_options(synchronize_session=False)
        )
        return [(i, d, m if sent is not None else None) for i, d, m, sent in rows]

    async def rerun_failed(self, task_id: int, now: datetime, ids: dict[int, str]) -> None:
        """FAILURE executions back to PENDING with a fresh ``message_id`` each."""
        if ids:
            await self.s.execute(
                update(Execution),
                [
                    {
                        "id": i,
                        "message_id": m,
                        "state": TaskState.PENDING.value,
                        "success": False,
                        "attempts": 0,
                        "due_at": now,
                        "sent_at": None,
                        "acked_at": None,
                        "code": None,
                        "result": None,
                        "progress": None,
                        "detail": "",
                        "finished_at": None,
                        "updated_at": now,
                    }
                    for i, m in sorted(ids.items())
                ],
            )

    async def failed_ids(self, task_id: int) -> list[int]:
        rows = await self.s.scalars(
            select(Execution.id).where(
                Execution.task_id == task_id, Execution.state == TaskState.FAILURE.value
            )
        )
        return list(rows)

    # --- results ----------------------------------------------------------------------------

    async def running_by_message(self, message_ids: Iterable[str]) -> list[tuple[Execution, Task]]:
        ids = sorted(set(message_ids))
        if not ids:
            return []
        q = (
            select(Execution, Task)
            .join(Task, Task.id == Execution.task_id)
            .where(Execution.message_id.in_(ids), Execution.state == TaskState.RUNNING.value)
            .order_by(Execution.id)
        )
        if self._dialect == "postgresql":
            q = q.with_for_update(of=Execution)
        return [(e, t) for e, t in await self.s.execute(q)]

    async def running_on(self, devices: Iterable[str]) -> list[tuple[Execution, Task]]:
        """RUNNING executions of these gateways, locked: acknowledged ones wait for a later
        sign of the gateway, unanswered ones may have to go out again."""
        uuids = sorted(set(devices))
        if not uuids:
            return []
        q = (
            select(Execution, Task)
            .join(Task, Task.id == Execution.task_id)
            .where(
                Execution.device_uuid.in_(uuids),
                Execution.state == TaskState.RUNNING.value,
            )
            .order_by(Execution.id)
        )
        if self._dialect == "postgresql":
            q = q.with_for_update(of=Execution)
        return [(e, t) for e, t in await self.s.execute(q)]

    async def save(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write changed executions (dicts with ``id`` and the changed columns)."""
        by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in sorted(rows, key=lambda r: int(r["id"])):
            by_keys.setdefault(tuple(sorted(r)), []).append(r)
        for chunk in by_keys.values():
            await self.s.execute(update(Execution), chunk)

    async def add_history(self, rows: Sequence[HistoryRow]) -> None:
        if rows:
            await self.s.execute(
                insert(ExecutionEvent),
                [
                    {
                        "execution_id": r.execution_id,
                        "at": r.at,
                        "state": r.state,
                        "detail": r.detail[:500],
                        "code": r.code,
                    }
                    for r in rows
                ],
            )

    async def finish_relays(self, task_ids: Sequence[int], now: datetime) -> None:
        """A relay job ends with its one execution."""
        if not task_ids:
            return
        state = (
            select(Execution.state).where(Execution.task_id == Task.id).limit(1).scalar_subquery()
        )
        await self.s.execute(
            update(Task)
            .where(
                Task.id.in_(list(task_ids)),
                Task.kind == TaskKind.RELAY.value,
                and_(Task.state.in_(OPEN_STATES)),
            )
            .values(state=state, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
