"""Events: everything gateways report and everything that happens to them.

One event is one row of one table, whatever made it: a gateway's own message on its
``client`` topic (a property change, a firmware or reboot code, anything it forwards), its
status (``device_online`` / ``device_offline``), or the server itself (a registration, a
task's state change). An event with a ``severity`` is an *alarm*: it can be acknowledged and
cleared, and open ones are what the console's bell counts.

Plain rules here: the types, how a gateway message is classified, what makes an alarm.
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from edgefleet.errors import ValidationError


class EventType(StrEnum):
    # the original's four notification types
    DEVICE_ONLINE = "device_online"
    DEVICE_OFFLINE = "device_offline"
    JOB_UPDATE = "job_update"
    """An execution (one gateway's share of a task or job relay) changed state."""
    PROPERTY_UPDATE = "property_update"
    # ours
    GATEWAY_EVENT = "gateway_event"
    """Anything else a gateway reports without a ``task_id`` (firmware, reboot codes, …)."""
    DEVICE_REGISTERED = "device_registered"
    DEVICE_DELETED = "device_deleted"
    TASK_UPDATE = "task_update"
    """A task or rollout changed state (resource ``/tasks/<uuid>``)."""


NOTIFIABLE = (
    EventType.DEVICE_ONLINE,
    EventType.DEVICE_OFFLINE,
    EventType.JOB_UPDATE,
    EventType.PROPERTY_UPDATE,
)
"""The event types webhooks can subscribe to (the original's ``/notifications/support``)."""

DISPLAY_NAMES = {
    EventType.DEVICE_ONLINE: "Device online",
    EventType.DEVICE_OFFLINE: "Device offline",
    EventType.JOB_UPDATE: "Job update",
    EventType.PROPERTY_UPDATE: "Property update",
}


class Severity(StrEnum):
    """Alarm severities, lowest first. An event without one is not an alarm."""

    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


class AlarmState(StrEnum):
    OPEN = "open"
    """Not cleared (acknowledged or not)."""
    UNACKNOWLEDGED = "unacknowledged"
    """Not cleared and not acknowledged: what the bell counts."""
    ACKNOWLEDGED = "acknowledged"
    """Acknowledged, not cleared."""
    CLEARED = "cleared"


AUTO_CLEARED_BY = {EventType.DEVICE_ONLINE: EventType.DEVICE_OFFLINE}
"""An event of the key type clears the same gateway's open alarms of the value type."""

SYSTEM_ACTOR = "system"

MAX_TEXT = 500
MAX_RESOURCE = 255
MAX_KEY = 72
MAX_EVENT_ID = 64


def new_key() -> str:
    """A server-made de-duplication key (events the server makes, or id-less gateway ones):
    a batch written twice after an ambiguous commit is still stored once."""
    return "srv-" + uuidlib.uuid4().hex


def gateway_key(device_uuid: str, event_id: str) -> str:
    """The de-duplication key of a gateway event that carries its own ``event_id``; scoped
    to the gateway, so one gateway cannot suppress another's events by reusing its ids."""
    digest = hashlib.blake2b(f"{device_uuid}/{event_id}".encode(), digest_size=16)
    return "gw-" + digest.hexdigest()


@dataclass
class NewEvent:
    """An event not stored yet."""

    type: EventType
    at: datetime
    device_uuid: str | None = None
    resource: str = ""
    text: str = ""
    data: Any = None
    severity: Severity | None = None
    key: str = field(default_factory=new_key)

    def __post_init__(self) -> None:
        self.resource = self.resource[:MAX_RESOURCE]
        self.text = self.text[:MAX_TEXT]


class StoredEvent(NamedTuple):
    """An event as written (what hooks, the live stream and webhooks receive); a tuple,
    since thousands are made a second."""

    id: int
    type: str
    at: datetime
    device_uuid: str | None
    resource: str
    text: str
    data: Any
    severity: str | None


_FAILURE_WORDS = ("FAIL", "ERROR")


def classify_gateway_event(
    method: str, resource: str, code: int | None, data: Any
) -> tuple[EventType, Severity | None, str]:
    """Type, severity and summary of an event a gateway sent on its ``client`` topic.

    - ``put``/``post`` on ``/system/properties[/<key>]``: ``property_update``;
    - anything else: ``gateway_event``, an alarm when it carries a ``severity`` of its own
      (``data.severity``: edgefleet agents raise alarms so), when its code is 400 or more,
      or when its ``data.code`` says a failure (``FW_UPGRADE_FAIL``, ``REBOOT_FAIL``).
    """
    path = resource.split("?", 1)[0]
    if method in ("put", "post") and (
        path == "/system/properties" or path.startswith("/system/properties/")
    ):
        key = path[len("/system/properties") :].strip("/")
        if key:
            value = data["data"] if isinstance(data, dict) and set(data) == {"data"} else data
            return EventType.PROPERTY_UPDATE, None, f"{key} = {_short(value)}"
        return EventType.PROPERTY_UPDATE, None, "properties updated"
    severity: Severity | None = None
    detail = ""
    if isinstance(data, dict):
        declared = data.get("severity")
        if isinstance(declared, str) and declared.lower() in Severity.__members__.values():
            severity = Severity(declared.lower())
        reported = data.get("code")
        if isinstance(reported, str):
            detail = reported
            if severity is None and any(w in reported.upper() for w in _FAILURE_WORDS):
                severity = Severity.MAJOR
        message = data.get("message")
        if isinstance(message, str) and message:
            detail = f"{detail}: {message}" if detail else message
    if severity is None and code is not None and code >= 400:
        severity = Severity.MAJOR
    text = f"{method.upper()} {path}"
    if detail:
        text = f"{text} {detail}"
    elif code is not None and code != 200:
        text = f"{text} ({code})"
    return EventType.GATEWAY_EVENT, severity, text


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_event(device_uuid: str, online: bool, at: datetime, key: str | None = None) -> NewEvent:
    """``device_online`` / ``device_offline`` from a status message. Going offline is a
    ``warning`` alarm, cleared by the gateway's return."""
    return NewEvent(
        type=EventType.DEVICE_ONLINE if online else EventType.DEVICE_OFFLINE,
        at=at,
        device_uuid=device_uuid,
        resource="/status",
        text="online" if online else "offline",
        data={"online": online},
        severity=None if online else Severity.WARNING,
        **({"key": key} if key else {}),
    )


RATE_LIMITED_RESOURCE = "/edgefleet/rate-limit"
"""The resource of a rate-limit alarm (not one of the gateway's own)."""


def rate_limited_event(device_uuid: str, at: datetime, rate: float, burst: int) -> NewEvent:
    """The alarm raised when a gateway sends more than its share and the excess is dropped."""
    return NewEvent(
        type=EventType.GATEWAY_EVENT,
        at=at,
        device_uuid=device_uuid,
        resource=RATE_LIMITED_RESOURCE,
        text=f"rate limited: more than {rate:g} messages/s (burst {burst}); the excess is dropped",
        data={"code": "RATE_LIMITED", "rate": rate, "burst": burst},
        severity=Severity.MAJOR,
    )


def parse_severity(value: str) -> Severity:
    try:
        return Severity(value.lower())
    except ValueError:
        allowed = ", ".join(s.value for s in Severity)
        raise ValidationError(f"severity must be one of {allowed}, not {value!r}") from None


def parse_alarm_state(value: str) -> AlarmState:
    try:
        return AlarmState(value.lower())
    except ValueError:
        allowed = ", ".join(s.value for s in AlarmState)
        raise ValidationError(f"alarm state must be one of {allowed}, not {value!r}") from None


def parse_type(value: str) -> EventType:
    try:
        return EventType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in EventType)
        raise ValidationError(f"event type must be one of {allowed}, not {value!r}") from None
