"""What the group and task pages show, shaped from the rows the services hand over: a task's
label, target and policy in words, its executions as a progress bar, the actions its state
allows (as calls of the API), a rollout's waves, and a group's counts. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgefleet.db.tables import Group, Task
from edgefleet.domain.tasks import TASK_OPEN, TaskKind, TaskState
from edgefleet.services.tasks import TaskView
from edgefleet.web.i18n import N_, gettext, ngettext

KIND_LABELS = {"group": N_("group task"), "rollout": N_("rollout"), "relay": N_("job relay")}
"""Translated where shown (``_(r.kind)``)."""
EXECUTION_STATES = [
    TaskState.SUCCESS,
    TaskState.FAILURE,
    TaskState.RUNNING,
    TaskState.PENDING,
    TaskState.REVOKED,
]
"""The bar's segments, in this order."""
DONE = frozenset({TaskState.SUCCESS.value, TaskState.FAILURE.value, TaskState.REVOKED.value})
OPEN = frozenset(s.value for s in TASK_OPEN)


@dataclass(frozen=True)
class Segment:
    state: str
    count: int
    width: float


@dataclass(frozen=True)
class Progress:
    """A task's executions by state: the bar, the counts and the share done."""

    uuid: str
    counts: dict[str, int]
    total: int
    percent: int
    segments: list[Segment]
    summary: str


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    path: str
    confirm: str
    done: str
    danger: bool = False


@dataclass(frozen=True)
class TaskRow:
    task: Task
    label: str
    kind: str
    target: str
    group: Group | None
    policy: str
    progress: Progress
    actions: list[Action]

    @property
    def is_open(self) -> bool:
        return self.task.state in OPEN


@dataclass(frozen=True)
class GroupRow:
    group: Group
    online: int
    offline: int
    created: int
    active: int
    completed: int
    revoked: int
    latest: TaskRow | None

    @property
    def members(self) -> int:
        return self.online + self.offline + self.created


def when(dt: datetime | None) -> str:
    return "—" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def state_word(state: str) -> str:
    return gettext(state.lower())


def progress_of(task: Task, by_state: dict[str, int]) -> Progress:
    counts = {s.value: by_state.get(s.value, 0) for s in EXECUTION_STATES}
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in DONE)
    if total:
        percent = done * 100 // total
    else:
        percent = 0 if task.state in OPEN else 100
    segments = [
        Segment(s.lower(), n, round(n * 100 / total, 3)) for s, n in counts.items() if n and total
    ]
    summary = ", ".join(f"{n} {state_word(s)}" for s, n in counts.items() if n) or gettext(
        "no gateway"
    )
    return Progress(task.uuid, counts, total, percent, segments, summary)


def label_of(task: Task) -> str:
    """What a task does, in words: its name, the caller's description, or its request."""
    if task.name:
        return task.name
    meta = task.meta or {}
    description = meta.get("description")
    if isinstance(description, str) and description.strip() and not description.isupper():
        return description.strip()  # an upper-case one is the original UI's message key
    method = str(task.payload.get("method", "")).lower()
    resource = str(task.payload.get("resource", "")).split("?", 1)[0].rstrip("/")
    if method == "post" and resource == "/system/reboot":
        return gettext("Reboot")
    if method == "put" and resource == "/system/import":
        return gettext("Restore configuration")
    if method == "post" and resource == "/system/firmware":
        version = meta.get("version")
        if version:
            return gettext("Firmware upgrade to %(version)s") % {"version": version}
        return gettext("Firmware upgrade")
    return f"{method.upper()} {task.payload.get('resource', '')}"


def policy_of(task: Task) -> str:
    if task.kind == TaskKind.GROUP.value and task.apply_policy in ("schedule", "scheduled"):
        text = gettext("Schedule")
    elif task.kind == TaskKind.GROUP.value and task.apply_policy != "retry":
        text = gettext("No retry")
    elif task.retry_times:
        text = ngettext("Retry %(num)s time", "Retry %(num)s times", task.retry_times) % {
            "num": task.retry_times
        }
    else:
        text = gettext("No retry")
    if task.scheduled_at is not None:
        text += gettext(", starts %(when)s") % {"when": when(task.scheduled_at)}
    return text


def actions_of(task: Task, counts: dict[str, int]) -> list[Action]:
    """What the task's state allows, as calls of the API."""
    failed = counts.get(TaskState.FAILURE.value, 0)
    is_open = task.state in OPEN
    rerun_q = ngettext(
        "Run the %(num)s failed execution again?",
        "Run the %(num)s failed executions again?",
        failed,
    ) % {"num": failed}
    revoke_q = gettext(
        "Revoke this task? Executions not finished are revoked; "
        "gateways with the request in flight are told to cancel it."
    )
    if task.kind == TaskKind.GROUP.value:
        base = f"/api/v1/groupTasks/{task.uuid}"
    elif task.kind == TaskKind.ROLLOUT.value:
        base = f"/api/v1/rollouts/{task.uuid}"
    else:
        return []  # a job relay has no steering route
    revoke = Action(
        "revoke", gettext("Revoke"), f"{base}/revoke", revoke_q, gettext("Revoked"), danger=True
    )
    rerun = Action(
        "rerun",
        gettext("Re-run failed"),
        f"{base}/rerun",
        rerun_q,
        gettext("Failed ones run again"),
    )
    if task.kind == TaskKind.GROUP.value:
        return [revoke] if is_open else [rerun] if failed else []
    out: list[Action] = []
    if task.state == TaskState.RUNNING.value:
        out.append(Action("pause", gettext("Pause"), f"{base}/pause", "", gettext("Paused")))
    if task.state == TaskState.PAUSED.value:
        out.append(Action("resume", gettext("Resume"), f"{base}/resume", "", gettext("Resumed")))
    if is_open:
        abort_q = gettext(
            "Abort the rollout? Executions not started are revoked; those in flight finish."
        )
        out.append(
            Action("abort", gettext("Abort"), f"{base}/abort", abort_q, gettext("Aborted"), True)
        )
        out.append(revoke)
    elif failed:
        out.append(rerun)
    return out


def target_of(task: Task, group: Group | None) -> str:
    target = task.target or {}
    if task.group_id is not None or "groupId" in target:
        if group:
            return gettext("group %(name)s") % {"name": group.name}
        return gettext("group %(id)s (deleted)") % {"id": target.get("groupId", "?")}
    if "query" in target:
        return gettext("fleet query: %(query)s") % {"query": target["query"]}
    devices = target.get("devices") or []
    if len(devices) == 1:
        return gettext("gateway %(uuid)s") % {"uuid": devices[0]}
    if "selectedFrom" in target:
        return ngettext(
            "%(num)s gateway selected from %(query)s",
            "%(num)s gateways selected from %(query)s",
            len(devices),
        ) % {"num": len(devices), "query": target["selectedFrom"] or gettext("every gateway")}
    return ngettext("%(num)s gateway", "%(num)s gateways", len(devices)) % {"num": len(devices)}


def task_row(view: TaskView, groups: dict[int, Group]) -> TaskRow:
    t = view.task
    counts = view.by_state()
    group = groups.get(t.group_id) if t.group_id is not None else None
    return TaskRow(
        task=t,
        label=label_of(t),
        kind=KIND_LABELS.get(t.kind, t.kind),
        target=target_of(t, group),
        group=group,
        policy=policy_of(t),
        progress=progress_of(t, counts),
        actions=actions_of(t, counts),
    )


def waves_of(view: TaskView) -> list[dict[str, Any]]:
    t = view.task
    out = []
    for i, size in enumerate(t.waves or []):
        row: dict[str, Any] = {"index": i + 1, "size": size, "open": i <= t.current_wave}
        for s in EXECUTION_STATES:
            row[s.value] = view.counts.get((i, s.value), 0)
        out.append(row)
    return out
