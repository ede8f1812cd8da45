"""Webhook subscriptions (ThingsPro's ``Notification``, ``SupportList``) and deliveries."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgefleet.api.responses import Answer


class NotificationPublic(Answer):
    uuid: str
    eventType: str
    protocol: str
    endpoint: str
    status: str = Field(description="Ready or Pending Confirmation")
    createdAt: str
    updatedAt: str
    confirmedAt: str | None


class Confirmation(Answer):
    statusCode: int | None
    error: str | None


class NotificationCreated(NotificationPublic):
    confirmation: Confirmation = Field(description="ours: how the endpoint answered the call")
    secret: str | None = Field(
        default=None, description="ours: the signing secret, only when the subscription is new"
    )


class NotificationDetail(NotificationPublic):
    createdBy: str
    deliveries: dict[str, int] = Field(description="deliveries by state")


class SupportedEvent(Answer):
    eventType: str
    displayName: str


class SupportedProtocol(Answer):
    id: str
    displayName: str


class SupportList(Answer):
    event: list[SupportedEvent]
    protocol: list[SupportedProtocol]


class DeliveryAttemptPublic(Answer):
    at: str
    statusCode: int | None
    error: str
    durationMs: float


class DeliveryPublic(Answer):
    uuid: str
    seq: int
    eventId: int
    eventType: str
    state: str
    attempts: int
    lastCode: int | None
    lastError: str
    createdAt: str
    nextAt: str | None
    deliveredAt: str | None
    body: dict[str, Any]
    history: list[DeliveryAttemptPublic]


class NotificationSecret(Answer):
    uuid: str
    secret: str = Field(description="the new signing secret, shown once")
