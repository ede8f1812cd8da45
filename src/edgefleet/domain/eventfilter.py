"""What a reader asks of the event log: one filter for the list, the counts and the live stream.

The list and the replay of a stream apply it in SQL (db/repos/events.py); the live stream
applies the same rules in Python (``matches``) to the events its tailer reads. Both must say
the same thing: a test runs them side by side.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from edgefleet.domain.events import (
    AlarmState,
    Severity,
    parse_alarm_state,
    parse_severity,
    parse_type,
)
from edgefleet.domain.limits import INT32_MAX, INT32_MIN, INT64_MAX, utc_time
from edgefleet.errors import ValidationError

MAX_Q = 200
MAX_RESOURCE_PREFIX = 255
MAX_VALUES = 100
"""At most this many ``device`` or ``type`` values in one filter."""

SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}


def severities_from(minimum: Severity) -> tuple[str, ...]:
    """The severity values at ``minimum`` or above."""
    return tuple(s.value for s in Severity if SEVERITY_RANK[s] >= SEVERITY_RANK[minimum])


class EventLike(Protocol):
    """What ``matches`` reads of an event (a stored row)."""

    @property
    def at(self) -> datetime: ...
    @property
    def type(self) -> str: ...
    @property
    def device_uuid(self) -> str | None: ...
    @property
    def resource(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def severity(self) -> str | None: ...
    @property
    def acked_at(self) -> datetime | None: ...
    @property
    def cleared_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class EventFilter:
    """Every condition given must hold; ``None`` means "any"."""

    devices: frozenset[str] | None = None
    group_id: int | None = None
    """Events of the gateways in this group now (not when the event happened)."""
    types: frozenset[str] | None = None
    resource: str | None = None
    """A prefix of the resource, case-sensitive."""
    severity: Severity | None = None
    """This severity or above (so only alarms)."""
    alarm: AlarmState | None = None
    """Only alarms in this state."""
    since: datetime | None = None
    """Inclusive."""
    until: datetime | None = None
    """Exclusive."""
    q: str | None = None
    """Case-insensitive text in ``text`` or ``resource``."""


def alarm_state_holds(
    state: AlarmState,
    severity: str | None,
    acked_at: datetime | None,
    cleared_at: datetime | None,
) -> bool:
    if severity is None:
        return False
    if state is AlarmState.OPEN:
        return cleared_at is None
    if state is AlarmState.UNACKNOWLEDGED:
        return cleared_at is None and acked_at is None
    if state is AlarmState.ACKNOWLEDGED:
        return cleared_at is None and acked_at is not None
    return cleared_at is not None


def matches(f: EventFilter, e: EventLike, members: frozenset[str] | None = None) -> bool:
    """Whether ``e`` passes ``f``; ``members`` are the gateways of ``f.group_id``."""
    if f.devices is not None and e.device_uuid not in f.devices:
        return False
    if f.group_id is not None and (members is None or e.device_uuid not in members):
        return False
    if f.types is not None and e.type not in f.types:
        return False
    if f.resource is not None and not e.resource.startswith(f.resource):
        return False
    if f.severity is not None and e.severity not in severities_from(f.severity):
        return False
    if f.alarm is not None and not alarm_state_holds(f.alarm, e.severity, e.acked_at, e.cleared_at):
        return False
    if f.since is not None and e.at < f.since:
        return False
    if f.until is not None and e.at >= f.until:
        return False
    if f.q is not None:
        q = f.q.lower()
        if q not in e.text.lower() and q not in e.resource.lower():
            return False
    return True


# --- parsing what a caller sent ---------------------------------------------------------------


def parse_time(value: str, name: str) -> datetime:
    """An ISO 8601 time; one without an offset is UTC (within ``limits.utc_time``'s range)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"{name} must be an ISO 8601 time such as 2026-01-31T08:00:00Z, not {value!r}"
        ) from None
    try:
        return utc_time(at)
    except ValueError as exc:
        raise ValidationError(f"{name}: {exc}") from None


def parse_device_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value.strip()))
    except ValueError:
        raise ValidationError(f"device must be a gateway's uuid, not {value!r}") from None


def parse_event_id(value: str, name: str) -> int:
    try:
        event_id = int(value.strip())
    except ValueError:
        raise ValidationError(f"{name} must be an event id, not {value!r}") from None
    if not 0 <= event_id <= INT64_MAX:
        raise ValidationError(f"{name} must be an event id from 0 to {INT64_MAX}")
    return event_id


def parse_filter(
    *,
    devices: Iterable[str] = (),
    group: str | None = None,
    types: Iterable[str] = (),
    resource: str | None = None,
    severity: str | None = None,
    alarm: str | None = None,
    since: str | None = None,
    until: str | None = None,
    q: str | None = None,
) -> EventFilter:
    """An ``EventFilter`` from query-string values; anything wrong is a ``ValidationError``
    naming the parameter."""
    device_list = [d for d in devices if d != ""]
    type_list = [t for t in types if t != ""]
    if len(device_list) > MAX_VALUES or len(type_list) > MAX_VALUES:
        raise ValidationError(f"at most {MAX_VALUES} device and {MAX_VALUES} type values")
    group_id: int | None = None
    if group not in (None, ""):
        try:
            group_id = int(group)
        except ValueError:
            raise ValidationError(f"group must be a group id, not {group!r}") from None
        if not INT32_MIN <= group_id <= INT32_MAX:
            raise ValidationError(f"group must be a group id, not {group!r}")
    if resource is not None and len(resource) > MAX_RESOURCE_PREFIX:
        raise ValidationError(f"resource must have at most {MAX_RESOURCE_PREFIX} characters")
    if q is not None and len(q) > MAX_Q:
        raise ValidationError(f"q must have at most {MAX_Q} characters")
    start = parse_time(since, "since") if since else None
    end = parse_time(until, "until") if until else None
    if start is not None and end is not None and start >= end:
        raise ValidationError("since must be before until")
    return EventFilter(
        devices=frozenset(parse_device_uuid(d) for d in device_list) if device_list else None,
        group_id=group_id,
        types=frozenset(parse_type(t).value for t in type_list) if type_list else None,
        resource=resource or None,
        severity=parse_severity(severity) if severity else None,
        alarm=parse_alarm_state(alarm) if alarm else None,
        since=start,
        until=end,
        q=q or None,
    )
