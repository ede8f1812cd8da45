"""HTTP models: request bodies (pydantic) and the response shapes (presenters).

Compatible endpoints answer exactly what the ThingsPro v2.5 spec shapes, plus a few
extra keys of ours (``tags``, ``attributes``, ``groupId``) that old clients ignore.
Their timestamps keep the original's form, ``2017-03-22T08:15:01.359380`` (UTC, no
offset); our own endpoints use RFC 3339 with an offset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.api.inputs import AwareTimestamp
from edgefleet.db.tables import ApiToken, AuditEntry, Device, Execution, Firmware, Task, User
from edgefleet.domain.auth import TOKEN_DESCRIPTION_MAX, Role, Scope
from edgefleet.domain.tasks import ACTIVE, COMPLETED, TaskState
from edgefleet.errors import ValidationError
from edgefleet.services.fleet import DeviceView, GroupView, Selection


def compat_time(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def iso_time(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def page(total: int, offset: int, limit: int, data: list[Any]) -> dict[str, Any]:
    """ThingsPro's list wrapper, used by every list of ours too."""
    return {"count": total, "limit": limit, "offset": offset, "data": data}


# --- requests --------------------------------------------------------------------------


class DeviceCreate(BaseModel):
    """ThingsPro's registration body; unknown keys are ignored as the original did."""

    model_config = ConfigDict(extra="ignore")

    mac: str = Field(min_length=1, max_length=32)
    displayName: str = Field(default="", max_length=255)
    serialNumber: str = Field(default="", max_length=128)
    description: str = Field(default="", max_length=4096)
    iccId: str = Field(default="", max_length=32)
    tags: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    displayName: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=4096)
    tags: list[str] | None = None
    attributes: dict[str, Any] | None = None


class DevicesUpdate(BaseModel):
    """``PATCH /devices``: one change to many gateways (ours)."""

    model_config = ConfigDict(extra="forbid")

    devices: list[str] = Field(min_length=1, max_length=10000)
    query: str | None = Field(default=None, max_length=4000)
    exact: bool = False
    addTags: list[str] = Field(default_factory=list, max_length=50)
    removeTags: list[str] = Field(default_factory=list, max_length=50)
    attributes: dict[str, Any] | None = None
    description: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _something(self) -> DevicesUpdate:
        if self.exact and self.query is None:
            raise ValueError("exact needs query, the fleet query the devices were selected from")
        if not (self.addTags or self.removeTags or self.attributes) and self.description is None:
            raise ValueError("nothing to change: give addTags, removeTags, attributes, description")
        return self


# A selection made in a list of a fleet query (the console's bulk actions): the compatible
# endpoints take a bare array of uuids, so the query comes as a parameter of ours.
SelectedFrom = Annotated[
    str | None,
    Query(
        description="ours: the fleet query the uuids were selected from; refused (409) unless "
        "each still matches it",
        max_length=4000,
    ),
]
Exact = Annotated[
    bool, Query(description="ours, with q: the uuids must also be every gateway q matches")
]


def selection(uuids: list[str], q: str | None, exact: bool) -> Selection | None:
    if q is None:
        if exact:
            raise ValidationError("exact needs q, the fleet query the uuids were selected from")
        return None
    return Selection(uuids, q, exact)


class GroupWrite(BaseModel):
    """POST and PUT ``/groups``: the spec sends a whole Group; only these keys are writable."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=128)
    description: str = Field(default="", max_length=4096)


class GroupUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, min_length=1, max_length=128)
    description: str | None = Field(default=None, max_length=4096)


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the gateway UI also sends isKeepEmail

    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", max_length=TOKEN_DESCRIPTION_MAX)
    scope: Scope
    expiresAt: AwareTimestamp | None = None


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=254)
    role: Role
    password: str | None = Field(default=None, max_length=1024)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, max_length=1024)


class Preferences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    locale: str = Field(max_length=16, description="en, zh_TW, or empty: the browser's")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currentPassword: str = Field(min_length=1, max_length=1024)
    newPassword: str = Field(min_length=1, max_length=1024)


# --- responses -------------------------------------------------------------------------


def device_public(view: DeviceView) -> dict[str, Any]:
    d: Device = view.device
    properties: dict[str, Any] = {}
    if d.properties:
        properties = {
            "deviceUUID": d.uuid,
            "createdAt": compat_time(d.properties_updated_at),
            **d.properties,
        }
    return {
        "uuid": d.uuid,
        "displayName": d.display_name,
        "description": d.description,
        "mac": d.mac,
        "serialNumber": d.serial_number,
        "iccId": d.icc_id,
        "createdAt": compat_time(d.created_at),
        "updatedAt": compat_time(d.updated_at),
        "connection": {
            "deviceUUID": d.uuid,
            "status": d.connection_status,
            "createdAt": compat_time(d.connection_changed_at),
        },
        "properties": properties,
        "groupId": d.group_id,
        "tags": view.tags,
        "attributes": d.attributes or {},
    }


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


def user_public(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "email": u.email,
        "role": u.role,
        "disabled": u.disabled,
        "mustChangePassword": u.must_change_password,
        "createdAt": iso_time(u.created_at),
        "lastLoginAt": iso_time(u.last_login_at),
        "locale": u.locale,
    }


def token_public(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "prefix": t.prefix,
        "description": t.description,
        "scope": t.scope,
        "userId": t.user_id,
        "createdAt": iso_time(t.created_at),
        "expiresAt": iso_time(t.expires_at),
        "revokedAt": iso_time(t.revoked_at),
        "lastUsedAt": iso_time(t.last_used_at),
    }


def audit_public(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso_time(e.at),
        "actor": {"type": e.actor_type, "id": e.actor_id, "name": e.actor_name},
        "action": e.action,
        "target": {"type": e.target_type, "id": e.target_id},
        "outcome": e.outcome,
        "statusCode": e.status_code,
        "ip": e.ip,
        "detail": e.detail,
    }


def firmware_public(f: Firmware) -> dict[str, Any]:
    return {
        "id": f.id,
        "uuid": f.uuid,
        "version": f.version,
        "models": f.models,
        "filename": f.filename,
        "size": f.size,
        "sha256": f.sha256,
        "notes": f.notes,
        "createdAt": iso_time(f.created_at),
        "createdBy": f.created_by,
    }
