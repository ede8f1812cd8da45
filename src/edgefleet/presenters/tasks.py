"""Tasks, their executions and relay jobs."""

from __future__ import annotations

from typing import Any

from edgefleet.db.tables import Execution, ExecutionEvent, Task
from edgefleet.domain.tasks import TaskState, relay_status
from edgefleet.presenters.times import iso_time
from edgefleet.services.tasks import TaskView


def task_public(view: TaskView) -> dict[str, Any]:
    t = view.task
    states = view.by_state()
    sizes = t.waves or ([sum(states.values())] if states else [])
    waves = []
    for i, size in enumerate(sizes):
        w = {s.value: view.counts.get((i, s.value), 0) for s in TaskState}
        waves.append(
            {
                "index": i + 1,
                "size": size,
                "pending": w[TaskState.PENDING.value],
                "running": w[TaskState.RUNNING.value],
                "success": w[TaskState.SUCCESS.value],
                "failure": w[TaskState.FAILURE.value],
                "revoked": w[TaskState.REVOKED.value],
                "open": i <= t.current_wave,
            }
        )
    return {
        "uuid": t.uuid,
        "id": t.id,
        "kind": t.kind,
        "name": t.name,
        "state": t.state,
        "detail": t.detail,
        "target": t.target,
        "groupId": t.group_id,
        "payload": t.payload,
        "firmwareId": t.firmware_id,
        "completion": t.completion,
        "applyPolicy": t.apply_policy,
        "retryTimes": t.retry_times,
        "retryIntervalSeconds": t.retry_interval,
        "timeoutSeconds": t.timeout_seconds,
        "completionTimeoutSeconds": t.completion_seconds,
        "scheduledAt": iso_time(t.scheduled_at),
        "expiresAt": iso_time(t.expires_at),
        "successThreshold": t.success_threshold,
        "errorThreshold": t.error_threshold,
        "maxPerMinute": t.max_per_minute,
        "window": t.window,
        "currentWave": t.current_wave + 1 if sizes else 0,
        "waves": waves,
        "counts": {s.value: states.get(s.value, 0) for s in TaskState if s in _EXEC_STATES},
        "total": sum(states.values()),
        "meta": t.meta,
        "revoked": t.revoked,
        "createdBy": t.created_by,
        "createdAt": iso_time(t.created_at),
        "updatedAt": iso_time(t.updated_at),
        "startedAt": iso_time(t.started_at),
        "finishedAt": iso_time(t.finished_at),
    }


_EXEC_STATES = (
    TaskState.PENDING,
    TaskState.RUNNING,
    TaskState.SUCCESS,
    TaskState.FAILURE,
    TaskState.REVOKED,
)


def execution_public(
    e: Execution, task: Task | None = None, history: list[ExecutionEvent] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uuid": e.uuid,
        "deviceUUID": e.device_uuid,
        "wave": e.wave + 1,
        "state": e.state,
        "success": e.success,
        "revoked": e.revoked,
        "attempts": e.attempts,
        "code": e.code,
        "progress": e.progress,
        "detail": e.detail,
        "result": e.result,
        "createdAt": iso_time(e.created_at),
        "updatedAt": iso_time(e.updated_at),
        "startedAt": iso_time(e.started_at),
        "finishedAt": iso_time(e.finished_at),
    }
    if task is not None:
        out["taskUUID"] = task.uuid
        out["taskKind"] = task.kind
    if history is not None:
        out["history"] = [
            {"at": iso_time(h.at), "state": h.state, "detail": h.detail, "code": h.code}
            for h in history
        ]
    return out


def relay_job_public(task: Task, e: Execution) -> dict[str, Any]:
    """``GET /deviceJobRelay/{id}``: the spec's ``DeviceJobRelay``."""
    result: dict[str, Any] | None = None
    if isinstance(e.result, dict) and "code" in e.result:
        result = {**e.result, "taskId": task.id, "deviceUUID": e.device_uuid}
    out: dict[str, Any] = {
        "taskId": task.id,
        "deviceUUID": e.device_uuid,
        "status": relay_status(e.state, e.code, e.detail),
        "state": e.state,
        "createdAt": iso_time(task.created_at),
        "updatedAt": iso_time(e.updated_at),
        "detail": e.detail,
    }
    if e.code is not None:  # absent until the gateway answered (the spec types no null)
        out["code"] = e.code
    if result is not None:
        out["result"] = result
    return out
