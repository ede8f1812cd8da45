"""Webhook subscriptions and their deliveries."""

from __future__ import annotations

from typing import Any

from edgefleet.db.tables import Notification
from edgefleet.domain.webhooks import DeliveryState
from edgefleet.presenters.times import iso_time
from edgefleet.services.notifications import DeliveryView, public_fields


def notification_public(n: Notification) -> dict[str, Any]:
    return {
        **public_fields(n),
        "createdAt": iso_time(n.created_at),
        "updatedAt": iso_time(n.updated_at),
        "confirmedAt": iso_time(n.confirmed_at),
    }


def delivery_public(view: DeliveryView) -> dict[str, Any]:
    d = view.delivery
    return {
        "uuid": d.uuid,
        "seq": d.id,
        "eventId": d.event_id,
        "eventType": d.event_type,
        "state": d.state,
        "attempts": d.attempts,
        "lastCode": d.last_code,
        "lastError": d.last_error,
        "createdAt": iso_time(d.created_at),
        "nextAt": iso_time(d.next_at) if d.state == DeliveryState.PENDING.value else None,
        "deliveredAt": iso_time(d.delivered_at),
        "body": d.body,
        "history": [
            {
                "at": iso_time(a.at),
                "statusCode": a.status_code,
                "error": a.error,
                "durationMs": a.duration_ms,
            }
            for a in view.attempts
        ],
    }
