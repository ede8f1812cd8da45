"""Creating and steering tasks: group tasks, ``deviceJobRelay`` jobs and rollouts.

The engine (services/engine/) does the dispatching; this is what the API calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.db.repos.groups import GroupRepo
from edgefleet.db.repos.tasks import TaskRepo
from edgefleet.db.tables import Execution, ExecutionEvent, Task
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.firmware import fits
from edgefleet.domain.query import parse
from edgefleet.domain.tasks import (
    DEFAULT_COMPLETION_SECONDS,
    RETRY_INTERVAL,
    TASK_OPEN,
    TaskKind,
    TaskState,
    Window,
    assign_waves,
    completion_for,
    wave_sizes,
)
from edgefleet.errors import (
    ConflictError,
    DeviceNotFoundError,
    EmptyTargetError,
    GroupNotFoundError,
    NotFoundError,
    ValidationError,
)
from edgefleet.services.engine import TaskEngine, new_message_id
from edgefleet.services.fleet import Selection, check_selection

RELAY_EXPIRY = timedelta(hours=1)
"""A ``deviceJobRelay`` job waits this long for an offline gateway by default."""
GROUP_EXPIRY = timedelta(hours=24)
"""Group tasks and rollouts wait this long (after they start) for offline gateways."""
MAX_TARGETS = 200_000


class TaskNotFoundError(NotFoundError):
    def __init__(self, ref: str | int) -> None:
        super().__init__(f"task {ref} not found")


@dataclass
class TaskSpec:
    """What a caller asks for; the service checks it and fills in defaults."""

    kind: TaskKind
    method: str
    resource: str
    data: Any = None
    name: str = ""
    group_id: int | None = None
    query: str | None = None
    devices: list[str] | None = None
    exact: bool = False
    """With both ``devices`` and ``query``: the devices are the target, picked from a list
    of that query; they must still match it (and, ``exact``, be all it matches), else the
    task is refused (``SelectionChangedError``)."""
    apply_policy: str = "none"
    retry_times: int = 0
    retry_interval: float = RETRY_INTERVAL
    scheduled_at: datetime | None = None
    expires_at: datetime | None = None
    timeout_seconds: float = 30.0
    completion_seconds: float | None = None
    waves: list[int | str] = field(default_factory=list)
    success_threshold: int = 100
    error_threshold: int | None = None
    max_per_minute: int | None = None
    window: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    firmware_id: int | None = None
    created_by: str = ""


@dataclass(frozen=True)
class Plan:
    """Who a task would reach, wave by wave (a rollout's dry run)."""

    devices: list[str]
    waves: list[int]
    skipped: int = 0
    """Devices of the target an image does not fit."""


@dataclass(frozen=True)
class TaskView:
    task: Task
    counts: dict[tuple[int, str], int]

    def by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, state), n in self.counts.items():
            out[state] = out.get(state, 0) + n
        return out


@dataclass(frozen=True)
class GroupActivity:
    """A group's gateways by connection status, its device tasks by state, its newest task."""

    statuses: dict[str, int]
    states: dict[str, int]
    latest: TaskView | None


FirmwareLookup = Callable[[int], Awaitable[dict[str, Any]]]
"""Firmware id → ``{"version", "models", …}``; raises NotFoundError."""


def _payload(spec: TaskSpec) -> dict[str, Any]:
    """The request as the original stores it: no ``data`` key when there is none."""
    out: dict[str, Any] = {"method": spec.method, "resource": spec.resource}
    if spec.data is not None:
        out["data"] = spec.data
    return out


class TaskService:
    def __init__(
        self,
        db: Database,
        engine: TaskEngine,
        *,
        firmware: FirmwareLookup | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.engine = engine
        self.firmware = firmware
        self.clock = clock

    # --- creating ---------------------------------------------------------------------------

    async def plan(self, spec: TaskSpec) -> Plan:
        models = (await self._firmware(spec))["models"]
        async with self.db.session() as s:
            devices, skipped = await self._targets(s, spec, models)
        return Plan(devices, wave_sizes(spec.waves, len(devices)), skipped)

    async def _firmware(self, spec: TaskSpec) -> dict[str, Any]:
        """The catalogue's ``{version, models}`` for a firmware task, else no constraint."""
        if spec.firmware_id is None:
            return {"version": None, "models": []}
        if self.firmware is None:
            raise ValidationError("this server has no firmware catalogue")
        return await self.firmware(spec.firmware_id)

    async def create(self, spec: TaskSpec) -> TaskView:
        now = self.clock()
        meta = dict(spec.meta)
        fw = await self._firmware(spec)
        if fw["version"]:
            meta.setdefault("version", fw["version"])
        if spec.window is not None:
            spec.window = Window.parse(spec.window).to_doc()
        completion = completion_for(spec.method, spec.resource)
        starts = spec.scheduled_at if spec.scheduled_at and spec.scheduled_at > now else now
        expires = spec.expires_at or starts + (
            RELAY_EXPIRY if spec.kind is TaskKind.RELAY else GROUP_EXPIRY
        )
        if expires <= now:
            raise ValidationError("expiresAt must be in the future")
        async with self.db.session() as s:
            devices, skipped = await self._targets(s, spec, fw["models"])
            if skipped:
                meta["skipped"] = skipped
            sizes = wave_sizes(spec.waves, len(devices)) if spec.kind is TaskKind.ROLLOUT else []
            if not devices:  # a task of no gateway would report 100 % success
                raise EmptyTargetError(
                    f"no gateway of the target fits image {fw['version']} ({skipped} left out)"
                    if skipped
                    else await self._target_name(s, spec)
                )
            task = Task(
                uuid=new_message_id(),
                kind=spec.kind.value,
                name=spec.name,
                group_id=spec.group_id,
                target=self._target_doc(spec),
                payload=_payload(spec),
                firmware_id=spec.firmware_id,
                completion=completion.value,
                apply_policy=spec.apply_policy,
                retry_times=spec.retry_times,
                retry_interval=spec.retry_interval,
                timeout_seconds=spec.timeout_seconds,
                completion_seconds=(
                    spec.completion_seconds
                    if spec.completion_seconds is not None
                    else DEFAULT_COMPLETION_SECONDS[completion]
                ),
                scheduled_at=spec.scheduled_at,
                expires_at=expires,
                state=(TaskState.PENDING if starts > now else TaskState.RUNNING).value,
                revoked=False,
                waves=sizes,
                current_wave=0,
                success_threshold=spec.success_threshold,
                error_threshold=spec.error_threshold,
                max_per_minute=spec.max_per_minute,
                window=spec.window,
                meta=meta,
                detail="",
                created_by=spec.created_by,
                created_at=now,
                updated_at=now,
                started_at=None if starts > now else now,
            )
            waves = assign_waves(sizes) if sizes else [0] * len(devices)
            rows = [
                {
                    "uuid": new_message_id(),
                    "device_uuid": d,
                    "wave": w,
                    "state": TaskState.PENDING.value,
                    "success": False,
                    "revoked": False,
                    "attempts": 0,
                    "due_at": starts if w == 0 else None,
                    "message_id": new_message_id(),
                    "detail": "",
                    "created_at": now,
                    "updated_at": now,
                }
                for d, w in zip(devices, waves, strict=True)
            ]
            await TaskRepo(s).add(task, rows)
        self.engine.task_changed(task)
        self.engine.wake()
        return TaskView(task, {(0, TaskState.PENDING.value): len(rows)} if rows else {})

    async def _targets(
        self, s: Any, spec: TaskSpec, models: Sequence[str]
    ) -> tuple[list[str], int]:
        """The devices a task reaches, in order, and how many of the target it leaves out
        because an image for ``models`` does not fit them (an unknown model does not fit)."""
        devices = DeviceRepo(s)
        if spec.group_id is not None:
            if await GroupRepo(s).get(spec.group_id) is None:
                raise GroupNotFoundError(spec.group_id)
            uuids = await devices.uuids(DeviceFilter(group_id=spec.group_id))
        elif spec.devices is not None:
            if spec.query is not None:
                await check_selection(devices, Selection(spec.devices, spec.query, spec.exact))
            wanted = list(dict.fromkeys(spec.devices))
            found = {d.uuid for d in await devices.get_many(wanted)}
            missing = [u for u in wanted if u not in found]
            if missing:
                raise DeviceNotFoundError(missing[0])
            uuids = wanted
        elif spec.query is not None:
            uuids = await devices.uuids(DeviceFilter(query=parse(spec.query)))
        else:
            raise ValidationError("a task needs a target: a group, a fleet query or devices")
        if len(uuids) > MAX_TARGETS:
            raise ValidationError(f"a task reaches at most {MAX_TARGETS} gateways")
        if not models:
            return uuids, 0
        model_of = await devices.models_of(uuids)
        fitting = [u for u in uuids if fits(models, model_of.get(u, ""))]
        return fitting, len(uuids) - len(fitting)

    @staticmethod
    async def _target_name(s: Any, spec: TaskSpec) -> str:
        if spec.group_id is not None:
            group = await GroupRepo(s).get(spec.group_id)
            return f"group {group.name if group else spec.group_id}"
        if spec.devices is not None:
            return "the list of gateways"
        return f"fleet query {spec.query}"

    @staticmethod
    def _target_doc(spec: TaskSpec) -> dict[str, Any]:
        if spec.group_id is not None:
            return {"groupId": spec.group_id}
        if spec.devices is not None and spec.query is not None:
            return {"devices": spec.devices, "selectedFrom": spec.query}
        if spec.query is not None:
            return {"query": spec.query}
        return {"devices": spec.devices or []}

    # --- reading ----------------------------------------------------------------------------

    async def get(self, ref: str | int, *, kinds: Sequence[TaskKind] | None = None) -> TaskView:
        async with self.db.session() as s:
            repo = TaskRepo(s)
            task = await (repo.get(id=ref) if isinstance(ref, int) else repo.get(uuid=ref))
            if task is None or (kinds is not None and task.kind not in kinds):
                raise TaskNotFoundError(ref)
            counts = (await repo.counts([task.id]))[task.id]
        return TaskView(task, counts)

    async def group_activity(self, group_ids: Sequence[int]) -> dict[int, GroupActivity]:
        """Each group's counts and newest task with its progress, in a few queries (lighter
        than the groups' views, which carry every member)."""
        ids = list(group_ids)
        async with self.db.session() as s:
            statuses = await DeviceRepo(s).status_counts(ids)
            states = await GroupRepo(s).task_counts(ids)
            repo = TaskRepo(s)
            latest = await repo.newest_of_groups(ids)
            counts = await repo.counts([t.id for t in latest])
        newest = {t.group_id: TaskView(t, counts[t.id]) for t in latest}
        return {
            gid: GroupActivity(statuses.get(gid, {}), states.get(gid, {}), newest.get(gid))
            for gid in ids
        }

    async def list_tasks(
        self,
        *,
        kinds: Sequence[TaskKind],
        group_id: int | None = None,
        states: Sequence[str] = (),
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[int, list[TaskView]]:
        async with self.db.session() as s:
            repo = TaskRepo(s)
            total, tasks = await repo.page(
                kinds=[k.value for k in kinds],
                group_id=group_id,
                states=states,
                offset=offset,
                limit=limit,
            )
            counts = await repo.counts([t.id for t in tasks])
        return total, [TaskView(t, counts[t.id]) for t in tasks]

    async def executions(
        self,
        task_uuid: str,
        *,
        states: Sequence[str] = (),
        offset: int = 0,
        limit: int = 100,
        kinds: Sequence[TaskKind] | None = None,
    ) -> tuple[int, list[Execution]]:
        view = await self.get(task_uuid, kinds=kinds)
        async with self.db.session() as s:
            return await TaskRepo(s).executions(
                view.task.id, states=states, offset=offset, limit=limit
            )

    async def execution(self, uuid: str) -> tuple[Execution, Task, list[ExecutionEvent]]:
        async with self.db.session() as s:
            repo = TaskRepo(s)
            e = await repo.execution(uuid)
            if e is None:
                raise NotFoundError(f"execution {uuid} not found")
            task = await repo.get(id=e.task_id)
            assert task is not None
            return e, task, await repo.history(e.id)

    async def relay_job(self, job_id: int) -> tuple[Task, Execution]:
        async with self.db.session() as s:
            repo = TaskRepo(s)
            task = await repo.get(id=job_id)
            if task is None or task.kind != TaskKind.RELAY.value:
                raise TaskNotFoundError(job_id)
            _, rows = await repo.executions(task.id, states=(), offset=0, limit=1)
        if not rows:
            raise TaskNotFoundError(job_id)  # its device was deleted
        return task, rows[0]

    # --- steering ---------------------------------------------------------------------------

    async def revoke(self, task_uuid: str, kinds: Sequence[TaskKind] | None = None) -> TaskView:
        """Stop the task; executions not finished become REVOKED and gateways with one in
        flight are told to cancel it."""
        view = await self.get(task_uuid, kinds=kinds)
        if view.task.state not in TASK_OPEN:
            raise ConflictError(f"task {task_uuid} is {view.task.state}: nothing to revoke")
        await self.engine.abort(view.task.id, "revoked", revoke=True)
        return await self.get(task_uuid)

    async def abort(self, task_uuid: str, kinds: Sequence[TaskKind] | None = None) -> TaskView:
        """Stop starting executions; those in flight finish and are recorded."""
        view = await self.get(task_uuid, kinds=kinds)
        if view.task.state not in TASK_OPEN:
            raise ConflictError(f"task {task_uuid} is {view.task.state}: nothing to abort")
        await self.engine.abort(view.task.id, "aborted by hand")
        return await self.get(task_uuid)

    async def pause(self, task_uuid: str, kinds: Sequence[TaskKind] | None = None) -> TaskView:
        return await self._set_state(task_uuid, TaskState.RUNNING, TaskState.PAUSED, kinds)

    async def resume(self, task_uuid: str, kinds: Sequence[TaskKind] | None = None) -> TaskView:
        view = await self._set_state(task_uuid, TaskState.PAUSED, TaskState.RUNNING, kinds)
        self.engine.wake()
        return view

    async def _set_state(
        self,
        task_uuid: str,
        was: TaskState,
        now_: TaskState,
        kinds: Sequence[TaskKind] | None,
    ) -> TaskView:
        view = await self.get(task_uuid, kinds=kinds)
        async with self.db.session() as s:
            repo = TaskRepo(s)
            await repo.begin_write()
            task = await repo.lock(view.task.id)
            assert task is not None
            if task.state != was.value:
                raise ConflictError(f"task {task_uuid} is {task.state}, not {was.value}")
            task.state = now_.value
            task.updated_at = self.clock()
        self.engine.task_changed(task)
        return await self.get(task_uuid)

    async def rerun_failed(
        self, task_uuid: str, kinds: Sequence[TaskKind] | None = None
    ) -> TaskView:
        """Run the failed executions again (fresh attempts); the task reopens."""
        view = await self.get(task_uuid, kinds=kinds)
        now = self.clock()
        async with self.db.session() as s:
            repo = TaskRepo(s)
            await repo.begin_write()
            task = await repo.lock(view.task.id)
            assert task is not None
            if task.state in TASK_OPEN:
                raise ConflictError(f"task {task_uuid} is still {task.state}")
            failed = await repo.failed_ids(task.id)
            if not failed:
                raise ConflictError(f"task {task_uuid} has no failed executions")
            await repo.rerun_failed(task.id, now, {i: new_message_id() for i in failed})
            task.state = TaskState.RUNNING.value
            task.finished_at = None
            task.detail = ""
            task.current_wave = max(task.current_wave, len(task.waves) - 1, 0)
            task.expires_at = now + GROUP_EXPIRY
            task.updated_at = now
            try:
                await s.flush()
            except Exception as exc:  # the group has another open task meanwhile
                if task.group_id is not None and "uq_tasks_open_group" in str(exc):
                    raise ConflictError(
                        f"group {task.group_id} already has an unfinished task"
                    ) from exc
                raise
        self.engine.task_changed(task)
        self.engine.wake()
        return await self.get(task_uuid)
