"""An audit log entry."""

from __future__ import annotations

from typing import Any

from edgefleet.db.tables import AuditEntry
from edgefleet.presenters.times import iso_time


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
