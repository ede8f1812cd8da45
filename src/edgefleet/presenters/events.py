"""Events, alarms and the event counts; the opaque cursor of the event list."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from edgefleet.db.tables import Event
from edgefleet.domain.events import EventType, Severity
from edgefleet.domain.limits import INT64_MAX
from edgefleet.errors import ValidationError
from edgefleet.presenters.times import iso_time
from edgefleet.services.eventlog import EventSummary

_CURSOR_PREFIX = "ev1:"


def event_public(e: Event) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": e.id,
        "at": iso_time(e.at),
        "type": e.type,
        "deviceUUID": e.device_uuid,
        "resource": e.resource,
        "text": e.text,
        "data": e.data,
        "severity": e.severity,
    }
    if e.severity is not None:
        out.update(
            acknowledged=e.acked_at is not None,
            acknowledgedAt=iso_time(e.acked_at),
            acknowledgedBy=e.acked_by,
            cleared=e.cleared_at is not None,
            clearedAt=iso_time(e.cleared_at),
            clearedBy=e.cleared_by,
        )
    return out


def summary_public(s: EventSummary) -> dict[str, Any]:
    by_type = {t.value: 0 for t in EventType}
    by_type.update(s.by_type)
    open_by = {sev.value: 0 for sev in Severity}
    unacked_by = {sev.value: 0 for sev in Severity}
    for sev, (n, unacked) in s.open_alarms.items():
        open_by[sev] = n
        unacked_by[sev] = unacked
    return {
        "since": iso_time(s.since),
        "until": iso_time(s.until),
        "total": sum(by_type.values()),
        "byType": by_type,
        "openAlarms": {"total": sum(open_by.values()), "bySeverity": open_by},
        "unacknowledged": {"total": sum(unacked_by.values()), "bySeverity": unacked_by},
    }


def encode_cursor(event_id: int) -> str:
    """The next page starts below this id: new events (higher ids) never shift a page."""
    raw = f"{_CURSOR_PREFIX}{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError(raw)
        event_id = int(raw[len(_CURSOR_PREFIX) :])
        if not 0 <= event_id <= INT64_MAX:
            raise ValueError(raw)
        return event_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationError(
            "cursor is not one this server gave (use the 'next' of the previous page)"
        ) from None
