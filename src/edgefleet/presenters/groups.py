"""A group as the ThingsPro API shapes it: members, counters and its task's records."""

from __future__ import annotations

from typing import Any

from edgefleet.db.tables import Execution, Task
from edgefleet.domain.tasks import ACTIVE, COMPLETED, TaskState
from edgefleet.presenters.devices import device_public
from edgefleet.presenters.times import compat_time
from edgefleet.services.fleet import GroupView


def task_record_public(r: Execution, task: Task) -> dict[str, Any]:
    """A device's record of a group task, as ThingsPro's ``Group.tasks`` items."""
    return {
        "uuid": r.uuid,
        "groupTaskUUID": task.uuid,
        "deviceUUID": r.device_uuid,
        "applyPolicy": task.apply_policy,
        "retryTimes": task.retry_times,
        "scheduledDateTime": compat_time(task.scheduled_at) if task.scheduled_at else "",
        "revoked": r.revoked,
        "state": r.state,
        "success": r.success,
        "meta": task.meta or {},
        "payload": task.payload or {},
        "createdAt": compat_time(r.created_at),
        "updatedAt": compat_time(r.updated_at),
    }


def group_public(view: GroupView) -> dict[str, Any]:
    sc = view.status_counts
    online, offline, created = (sc.get(k, 0) for k in ("online", "offline", "created"))
    tc = view.task_counts
    active = sum(tc.get(s.value, 0) for s in ACTIVE)
    completed = sum(tc.get(s.value, 0) for s in COMPLETED)
    revoked = tc.get(TaskState.REVOKED.value, 0)
    g = view.group
    return {
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "createdAt": compat_time(g.created_at),
        "updatedAt": compat_time(g.updated_at),
        "devices": [device_public(d) for d in view.devices],
        "deviceStatus": {
            "onlineCount": online,
            "offlineCount": offline,
            "createdCount": created,
            "totalCount": online + offline + created,
            # the spec's examples spell the counters this way; clients of either kind work
            "online": online,
            "offline": offline,
            "created": created,
        },
        "tasks": [task_record_public(r, view.task) for r in view.task_records if view.task],
        "taskStatus": {
            "activeCount": active,
            "completedCount": completed,
            "revokedCount": revoked,
            "totalCount": sum(tc.values()),
        },
        "taskUUID": view.task.uuid if view.task else None,
    }
