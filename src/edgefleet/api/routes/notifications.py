"""``/api/v1/notifications``: webhook subscriptions (ThingsPro's notification API, and ours).

The original's (v2.5 spec): ``GET`` (an array of Notification), ``POST`` ``{eventType,
protocol, endpoint}`` (an array with the one subscription, ``Ready`` or ``Pending
Confirmation``: the endpoint is called before the answer; post the same body again to retry),
``DELETE`` with a JSON array of uuids, ``DELETE /{uuid}`` (204) and ``GET /support``.
Ours: the POST answer's ``confirmation`` and ``secret`` (the signing secret, only when the
subscription is new), ``GET /{uuid}``, ``GET /{uuid}/deliveries`` and ``POST /{uuid}/secret``.

The original's operations answer errors as it did, ``{"message": …}``; ours problem+json.
Bad input is a 400 either way. Reads need fleet:read, the rest fleet:write and are audited.
See docs/notifications.md.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from edgefleet.api.deps import ContainerDep, FleetReader, FleetWriter, audit_target
from edgefleet.api.errors import CompatRoute
from edgefleet.api.inputs import Int64, read_json
from edgefleet.api.schemas import iso_time
from edgefleet.db.tables import Notification
from edgefleet.domain.events import NOTIFIABLE
from edgefleet.domain.webhooks import PROTOCOLS, DeliveryState, support
from edgefleet.errors import ValidationError
from edgefleet.services.notifications import DeliveryView, public_fields

compat = APIRouter(prefix="/api/v1", tags=["notifications"], route_class=CompatRoute)
router = APIRouter(prefix="/api/v1", tags=["notifications"])

_CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["eventType", "protocol", "endpoint"],
                    "properties": {
                        "eventType": {"type": "string", "enum": [t.value for t in NOTIFIABLE]},
                        "protocol": {"type": "string", "enum": list(PROTOCOLS)},
                        "endpoint": {
                            "type": "string",
                            "maxLength": 2048,
                            "description": "absolute URL whose scheme is the protocol",
                        },
                    },
                }
            }
        },
    }
}

_DELETE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "array", "minItems": 1, "items": {"type": "string"}}
            }
        },
    }
}


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


@compat.get("/notifications", name="notifications.list")
async def list_notifications(c: ContainerDep, _: FleetReader) -> list[dict[str, Any]]:
    return [notification_public(n) for n in await c.notifications.list_notifications()]


@compat.post("/notifications", name="notifications.create", openapi_extra=_CREATE_DOC)
async def create_notification(
    request: Request, c: ContainerDep, p: FleetWriter
) -> list[dict[str, Any]]:
    """Subscribe (or confirm again): the endpoint is called once before this answers."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object {eventType, protocol, endpoint}")
    sub = await c.notifications.create(
        body.get("eventType"), body.get("protocol"), body.get("endpoint"), actor=p.email
    )
    audit_target(request, "notification", sub.notification.uuid)
    out = notification_public(sub.notification)
    out["confirmation"] = {
        "statusCode": sub.confirmation.status_code,
        "error": sub.confirmation.error,
    }
    if sub.secret is not None:
        out["secret"] = sub.secret
    return [out]


@compat.delete("/notifications", name="notifications.delete_many", openapi_extra=_DELETE_DOC)
async def delete_notifications(request: Request, c: ContainerDep, _: FleetWriter) -> list[str]:
    """All or none: an unknown uuid is a 404 and nothing is deleted."""
    uuids = await read_json(request)
    if isinstance(uuids, list):
        audit_target(request, "notification", ",".join(map(str, uuids))[:64])
    return await c.notifications.delete(uuids)


@compat.get("/notifications/support", name="notifications.support")
async def notification_support(_: FleetReader) -> dict[str, Any]:
    return support()


@router.get("/notifications/{uuid}", name="notifications.get")
async def get_notification(c: ContainerDep, _: FleetReader, uuid: str) -> dict[str, Any]:
    row, counts = await c.notifications.get(uuid)
    return {**notification_public(row), "createdBy": row.created_by, "deliveries": counts}


@compat.delete("/notifications/{uuid}", name="notifications.delete", status_code=204)
async def delete_notification(request: Request, c: ContainerDep, _: FleetWriter, uuid: str) -> None:
    audit_target(request, "notification", uuid)
    await c.notifications.delete([uuid])


@router.get("/notifications/{uuid}/deliveries", name="notifications.deliveries")
async def list_deliveries(
    c: ContainerDep,
    _: FleetReader,
    uuid: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[Int64 | None, Query(ge=1, description="a delivery's seq")] = None,
) -> list[dict[str, Any]]:
    """Newest first; pass the last one's ``seq`` as ``before`` for the next page."""
    views = await c.notifications.deliveries(uuid, limit=limit, before=before)
    return [delivery_public(v) for v in views]


@router.post("/notifications/{uuid}/secret", name="notifications.rotate_secret")
async def rotate_secret(
    request: Request, c: ContainerDep, _: FleetWriter, uuid: str
) -> dict[str, Any]:
    """A new signing secret, shown this once; the old one stops working now."""
    audit_target(request, "notification", uuid)
    row, secret = await c.notifications.rotate_secret(uuid)
    return {"uuid": row.uuid, "secret": secret}
