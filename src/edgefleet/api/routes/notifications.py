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

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from edgefleet.api.deps import ContainerDep, FleetReader, FleetWriter, audit_target
from edgefleet.api.errors import CompatRoute
from edgefleet.api.inputs import Int64, read_json
from edgefleet.api.responses import reply
from edgefleet.api.responses.notifications import (
    DeliveryPublic,
    NotificationCreated,
    NotificationDetail,
    NotificationPublic,
    NotificationSecret,
    SupportList,
)
from edgefleet.domain.events import NOTIFIABLE
from edgefleet.domain.webhooks import PROTOCOLS, support
from edgefleet.errors import ValidationError
from edgefleet.presenters.notifications import delivery_public, notification_public

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


@compat.get("/notifications", name="notifications.list", response_model=list[NotificationPublic])
async def list_notifications(c: ContainerDep, _: FleetReader) -> Response:
    return reply([notification_public(n) for n in await c.notifications.list_notifications()])


@compat.post(
    "/notifications",
    name="notifications.create",
    response_model=list[NotificationCreated],
    openapi_extra=_CREATE_DOC,
)
async def create_notification(request: Request, c: ContainerDep, p: FleetWriter) -> Response:
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
    return reply([out])


@compat.delete("/notifications", name="notifications.delete_many", openapi_extra=_DELETE_DOC)
async def delete_notifications(request: Request, c: ContainerDep, _: FleetWriter) -> list[str]:
    """All or none: an unknown uuid is a 404 and nothing is deleted."""
    uuids = await read_json(request)
    if isinstance(uuids, list):
        audit_target(request, "notification", ",".join(map(str, uuids))[:64])
    return await c.notifications.delete(uuids)


@compat.get("/notifications/support", name="notifications.support", response_model=SupportList)
async def notification_support(_: FleetReader) -> Response:
    return reply(support())


@router.get("/notifications/{uuid}", name="notifications.get", response_model=NotificationDetail)
async def get_notification(c: ContainerDep, _: FleetReader, uuid: str) -> Response:
    row, counts = await c.notifications.get(uuid)
    return reply({**notification_public(row), "createdBy": row.created_by, "deliveries": counts})


@compat.delete("/notifications/{uuid}", name="notifications.delete", status_code=204)
async def delete_notification(request: Request, c: ContainerDep, _: FleetWriter, uuid: str) -> None:
    audit_target(request, "notification", uuid)
    await c.notifications.delete([uuid])


@router.get(
    "/notifications/{uuid}/deliveries",
    name="notifications.deliveries",
    response_model=list[DeliveryPublic],
)
async def list_deliveries(
    c: ContainerDep,
    _: FleetReader,
    uuid: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[Int64 | None, Query(ge=1, description="a delivery's seq")] = None,
) -> Response:
    """Newest first; pass the last one's ``seq`` as ``before`` for the next page."""
    views = await c.notifications.deliveries(uuid, limit=limit, before=before)
    return reply([delivery_public(v) for v in views])


@router.post(
    "/notifications/{uuid}/secret",
    name="notifications.rotate_secret",
    response_model=NotificationSecret,
)
async def rotate_secret(request: Request, c: ContainerDep, _: FleetWriter, uuid: str) -> Response:
    """A new signing secret, shown this once; the old one stops working now."""
    audit_target(request, "notification", uuid)
    row, secret = await c.notifications.rotate_secret(uuid)
    return reply({"uuid": row.uuid, "secret": secret})
