"""Webhook rules: subscription and delivery states, endpoint validation, the bodies we send,
their signature, and the retry schedule. No I/O here (services/notifications/ sends).

A subscription (the original's *notification*) ties one notifiable event type to one
http(s) endpoint. Each event of that type becomes one *delivery*: a JSON body fixed when the
event is stored, POSTed until the endpoint answers 2xx or the attempts run out::

    pending ──2xx──────────────────────────▶ delivered
       │ ▲
       │ └─ non-2xx, timeout, refused (attempts < max): retried after backoff_delay()
       └──── the same with attempts == max ─▶ failed

Each request is signed Stripe-style: ``X-Edgefleet-Signature: t=<unix seconds>,v1=<hex>``
with ``v1 = HMAC-SHA256(secret, f"{t}." + raw body)``; ``verify()`` is what a receiver runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from edgefleet.domain.events import DISPLAY_NAMES, NOTIFIABLE, EventType, StoredEvent
from edgefleet.errors import ValidationError


class SubscriptionStatus(StrEnum):
    """The original's two statuses; only ``Ready`` subscriptions receive deliveries."""

    READY = "Ready"
    PENDING_CONFIRMATION = "Pending Confirmation"


class DeliveryState(StrEnum):
    PENDING = "pending"
    """Waiting for its first attempt or for a retry (``next_at``)."""
    DELIVERED = "delivered"
    FAILED = "failed"
    """The endpoint never answered 2xx within the allowed attempts."""


TERMINAL = frozenset({DeliveryState.DELIVERED, DeliveryState.FAILED})

PROTOCOLS = {"http": "HTTP", "https": "HTTPS"}
"""Protocol id → display name (the original's ``/notifications/support``)."""

MAX_ENDPOINT = 2048
MAX_BACKOFF = 3600.0
"""No retry waits longer than an hour."""
SIGNATURE_TOLERANCE = 300
"""Seconds a receiver should accept between a signature's ``t`` and its own clock."""

EVENT_HEADER = "X-Edgefleet-Event"
DELIVERY_HEADER = "X-Edgefleet-Delivery"
SIGNATURE_HEADER = "X-Edgefleet-Signature"
CONFIRMATION = "subscription_confirmation"
"""The ``type`` of the request sent when a subscription is created or posted again."""
EVENT = "event"
"""The ``type`` of an event delivery."""

REFUSED = (
    "the endpoint's address is one webhooks may not reach (loopback, private, link-local, "
    "this server's, …); allow its network with EDGEFLEET_EVENTS__WEBHOOK_ALLOW_NETWORKS"
)
"""What the API says of an endpoint resolving to a refused address (loopback, private,
link-local, the server's own…): which one, and why, is for the server log."""
UNREACHABLE = "no answer from the endpoint"
"""What the API says of any attempt that got no HTTP status (refused or reset connection,
timeout, TLS or DNS failure): the detail, which would map a network, is for the server log."""


def parse_subscription(event_type: Any, protocol: Any, endpoint: Any) -> tuple[EventType, str, str]:
    """The ``(event type, protocol, endpoint)`` of a subscription request, checked: a
    notifiable event type, ``http``/``https``, and an absolute URL of that scheme with a
    host and no credentials in it (endpoints are shown to every reader)."""
    kind = _text("eventType", event_type)
    if kind not in {t.value for t in NOTIFIABLE}:
        allowed = ", ".join(t.value for t in NOTIFIABLE)
        raise ValidationError(f"eventType must be one of {allowed}, not {kind!r}")
    proto = _text("protocol", protocol).lower()
    if proto not in PROTOCOLS:
        raise ValidationError(f"protocol must be http or https, not {protocol!r}")
    url = _text("endpoint", endpoint)
    check_endpoint(url, proto)
    return EventType(kind), proto, url


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} is required (a non-empty string)")
    return value.strip()


def check_endpoint(url: str, protocol: str) -> None:
    """Refuse an endpoint that is not an absolute ``protocol://host[:port]/…`` URL."""
    if len(url) > MAX_ENDPOINT:
        raise ValidationError(f"endpoint longer than {MAX_ENDPOINT} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValidationError("endpoint must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ValidationError(f"endpoint is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise ValidationError("endpoint must be an absolute URL such as https://host/path")
    if scheme != protocol:
        raise ValidationError(f"endpoint scheme {scheme!r} does not match protocol {protocol!r}")
    if not parts.hostname:
        raise ValidationError("endpoint has no host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(
            "endpoint must not carry credentials (user:password@): receivers authenticate "
            f"requests by their {SIGNATURE_HEADER} header"
        )
    if port == 0:
        raise ValidationError("endpoint port must be between 1 and 65535")
    if parts.fragment:
        raise ValidationError("endpoint must not have a #fragment")


def parse_uuids(value: Any, *, limit: int = 1000) -> list[str]:
    """A JSON array of subscription uuids (the original's bulk ``DELETE`` body)."""
    if not isinstance(value, list) or not value:
        raise ValidationError("expected a non-empty JSON array of notification uuids")
    if len(value) > limit:
        raise ValidationError(f"at most {limit} uuids at once")
    if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value):
        raise ValidationError("every notification uuid must be a string")
    return list(dict.fromkeys(value))


def origin(endpoint: str) -> str:
    """``scheme://host:port`` of an endpoint: the unit of the per-receiver concurrency limit
    (subscriptions to several paths of one receiver share it)."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def support() -> dict[str, list[dict[str, str]]]:
    """What ``GET /notifications/support`` answers (the original's SupportList)."""
    return {
        "event": [{"eventType": t.value, "displayName": DISPLAY_NAMES[t]} for t in NOTIFIABLE],
        "protocol": [{"id": p, "displayName": name} for p, name in PROTOCOLS.items()],
    }


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def iso(at: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def delivery_body(delivery_uuid: str, notification_uuid: str, event: StoredEvent) -> dict[str, Any]:
    """The JSON body of one event delivery (fixed when it is queued; retries resend it)."""
    return {
        "type": EVENT,
        "id": delivery_uuid,
        "notification": notification_uuid,
        "eventType": event.type,
        "eventId": event.id,
        "time": iso(event.at),
        "deviceUUID": event.device_uuid,
        "resource": event.resource,
        "text": event.text,
        "severity": event.severity,
        "data": event.data,
    }


def confirmation_body(
    request_uuid: str, subscription: Mapping[str, Any], at: datetime
) -> dict[str, Any]:
    """The JSON body of the request that confirms a subscription (``subscription`` in the
    API's shape: uuid, eventType, protocol, endpoint)."""
    return {
        "type": CONFIRMATION,
        "id": request_uuid,
        "time": iso(at),
        "notification": dict(subscription),
    }


def encode(body: Mapping[str, Any]) -> bytes:
    """The raw bytes sent (and signed): compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, raw: bytes, timestamp: int) -> str:
    """The ``X-Edgefleet-Signature`` value for ``raw`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, raw: bytes, header: str, *, now: int, tolerance: int = SIGNATURE_TOLERANCE
) -> bool:
    """Whether ``header`` signs ``raw`` with ``secret`` and was made within ``tolerance``
    seconds of ``now`` (what a receiver does; several ``v1`` values are accepted, so a
    signature scheme can be rolled over)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, raw, timestamp).rsplit("v1=", 1)[1]
    return any(hmac.compare_digest(expected, c) for c in candidates)


def headers(
    event_type: str, request_uuid: str, secret: str, raw: bytes, timestamp: int
) -> dict[str, str]:
    """Every header of a webhook request (delivery or confirmation)."""
    return {
        "Content-Type": "application/json",
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: request_uuid,
        SIGNATURE_HEADER: signature(secret, raw, timestamp),
    }


def is_success(status_code: int | None) -> bool:
    return status_code is not None and 200 <= status_code < 300


def backoff_delay(attempts: int, base: float) -> float:
    """Seconds to wait after ``attempts`` failed attempts: ``base``, then doubled each
    time, never more than an hour."""
    if attempts < 1:
        return 0.0
    return float(min(base * 2 ** min(attempts - 1, 32), MAX_BACKOFF))


def after_attempt(status_code: int | None, attempts: int, max_attempts: int) -> DeliveryState:
    """A delivery's state once its ``attempts``-th attempt got ``status_code`` (None: no
    answer at all)."""
    if is_success(status_code):
        return DeliveryState.DELIVERED
    if attempts >= max_attempts:
        return DeliveryState.FAILED
    return DeliveryState.PENDING
