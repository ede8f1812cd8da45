"""Webhook subscriptions and their queue: ``NotificationService`` (see the package's
docstring); the sending is ``dispatcher.py``'s."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.notifications import NotificationRepo, Subscriber
from edgefleet.db.tables import DeliveryAttempt, Notification, WebhookDelivery
from edgefleet.domain.events import StoredEvent
from edgefleet.domain.webhooks import (
    CONFIRMATION,
    REFUSED,
    DeliveryState,
    SubscriptionStatus,
    confirmation_body,
    delivery_body,
    encode,
    headers,
    is_success,
    new_secret,
    origin,
    parse_subscription,
    parse_uuids,
)
from edgefleet.errors import ConflictError, DuplicateError, NotFoundError, ValidationError
from edgefleet.secretbox import SecretBox
from edgefleet.services.egress import Egress, EgressRefusedError, guarded_client
from edgefleet.services.notifications.dispatcher import WebhookDispatcher
from edgefleet.services.notifications.posting import post
from edgefleet.settings import EventSettings

log = logging.getLogger(__name__)

QUEUED = Counter("edgefleet_webhook_deliveries_queued_total", "Webhook deliveries queued")

CACHE_SECONDS = 5.0
"""How stale the cache of subscribed event types may get (other instances' changes)."""


@dataclass(frozen=True)
class Confirmation:
    """What the endpoint answered the confirmation request."""

    status_code: int | None
    error: str

    @property
    def ok(self) -> bool:
        return is_success(self.status_code)


@dataclass(frozen=True)
class Subscription:
    notification: Notification
    confirmation: Confirmation
    secret: str | None = None
    """The signing secret: only when this call created the subscription."""


@dataclass(frozen=True)
class DeliveryView:
    delivery: WebhookDelivery
    attempts: list[DeliveryAttempt]


def _not_found(uuid: str) -> NotFoundError:
    return NotFoundError(f"notification {uuid} not found")


class NotificationService:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: EventSettings,
        egress: Egress,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self.egress = egress
        """Resolves and checks receivers' addresses (tests may swap its resolver)."""
        self.clock = clock
        self._types: frozenset[str] | None = None
        self._types_expire = 0.0
        self._queued = 0
        """Deliveries queued by the batch being written (counted once it is committed)."""
        self.dispatcher = WebhookDispatcher(
            db, box, settings, lambda: self.egress, lambda: self.clock()
        )

    # --- the dispatcher's (a worker each: bootstrap starts them) ---------------------------

    async def run(self) -> None:
        """Send due deliveries until cancelled (dispatcher.py)."""
        await self.dispatcher.run()

    async def run_retention(self) -> None:
        """Delete finished deliveries past the retention, until cancelled."""
        await self.dispatcher.run_retention()

    async def purge(self, batch: int = 5000) -> int:
        return await self.dispatcher.purge(batch)

    @property
    def sent(self) -> int:
        """Attempts made by this instance."""
        return self.dispatcher.sent

    @property
    def in_flight(self) -> int:
        return self.dispatcher.in_flight

    # --- subscriptions ----------------------------------------------------------------------

    async def create(
        self, event_type: Any, protocol: Any, endpoint: Any, actor: str
    ) -> Subscription:
        """Subscribe ``endpoint`` to ``event_type`` (or find that subscription) and confirm it
        by calling the endpoint; the answer decides its status."""
        kind, proto, url = parse_subscription(event_type, protocol, endpoint)
        await self._check_address(url)
        row, secret = await self._find_or_add(kind.value, proto, url, actor)
        plain = secret if secret is not None else self.box.open(row.secret_sealed)
        confirmation = await self._confirm(row, plain)
        now = self.clock()
        async with self.db.session() as s:
            repo = NotificationRepo(s)
            await repo.begin_write()
            current = await repo.get(row.uuid, for_update=True)
            if current is None:  # deleted while it was being confirmed
                raise _not_found(row.uuid)
            if confirmation.ok:
                current.status = SubscriptionStatus.READY.value
                current.confirmed_at = now
            else:
                current.status = SubscriptionStatus.PENDING_CONFIRMATION.value
            current.updated_at = now
        self._changed()
        log.info(
            "webhook %s (%s to %s): %s",
            current.uuid,
            current.event_type,
            origin(current.endpoint),
            current.status,
        )
        return Subscription(current, confirmation, secret)

    async def _find_or_add(
        self, event_type: str, protocol: str, endpoint: str, actor: str
    ) -> tuple[Notification, str | None]:
        for _ in range(3):
            try:
                async with self.db.session() as s:
                    repo = NotificationRepo(s)
                    await repo.begin_write()
                    found = await repo.find(event_type, endpoint)
                    if found is not None:
                        return found, None
                    secret = new_secret()
                    now = self.clock()
                    row = Notification(
                        uuid=str(uuidlib.uuid4()),
                        event_type=event_type,
                        protocol=protocol,
                        endpoint=endpoint,
                        status=SubscriptionStatus.PENDING_CONFIRMATION.value,
                        secret_sealed=self.box.seal(secret),
                        created_by=actor,
                        created_at=now,
                        updated_at=now,
                        confirmed_at=None,
                    )
                    await repo.add(row)
                    return row, secret
            except DuplicateError:
                continue  # created concurrently by another request: found next time
        raise ConflictError("the subscription is being changed concurrently; try again")

    async def _check_address(self, url: str) -> None:
        """Refuse (400) an endpoint whose host resolves to an address webhooks may not reach;
        one that does not resolve now is left to the confirmation to report."""
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                await self.egress.addresses(host, port)
        except EgressRefusedError as exc:
            log.warning("webhook endpoint %s refused: %s", origin(url), exc.message)
            raise ValidationError(REFUSED) from None
        except (OSError, TimeoutError):
            pass  # the confirmation, checked again when it connects, reports it

    async def _confirm(self, row: Notification, secret: str) -> Confirmation:
        request_uuid = str(uuidlib.uuid4())
        now = self.clock()
        body = confirmation_body(request_uuid, public_fields(row), now)
        raw = encode(body)
        timeout = self.settings.webhook_timeout_seconds
        async with guarded_client(self.egress, timeout) as client:
            outcome = await post(
                client,
                row.endpoint,
                raw,
                headers(CONFIRMATION, request_uuid, secret, raw, int(now.timestamp())),
                timeout,
            )
        if outcome.detail:
            log.warning(
                "webhook %s: confirmation to %s: %s", row.uuid, origin(row.endpoint), outcome.detail
            )
        return Confirmation(outcome.status_code, outcome.error)

    async def list_notifications(self) -> list[Notification]:
        async with self.db.session() as s:
            return await NotificationRepo(s).all()

    async def get(self, uuid: str) -> tuple[Notification, dict[str, int]]:
        """A subscription and how many of its deliveries are in each state."""
        async with self.db.session() as s:
            repo = NotificationRepo(s)
            row = await repo.get(uuid)
            if row is None:
                raise _not_found(uuid)
            return row, await repo.counts(row.id)

    async def delete(self, uuids: Any) -> list[str]:
        """Delete subscriptions, all or none (404 naming the unknown ones); their queued
        deliveries go with them."""
        wanted = parse_uuids(uuids)
        async with self.db.session() as s:
            repo = NotificationRepo(s)
            await repo.begin_write()
            found = await repo.existing(wanted)
            missing = [u for u in wanted if u not in found]
            if missing:
                raise NotFoundError(f"notification {', '.join(missing)} not found")
            await repo.delete(wanted)
        self._changed()
        log.info("webhooks deleted: %s", ", ".join(wanted))
        return wanted

    async def rotate_secret(self, uuid: str) -> tuple[Notification, str]:
        """A new signing secret, returned this once; queued deliveries are signed with it."""
        secret = new_secret()
        async with self.db.session() as s:
            repo = NotificationRepo(s)
            await repo.begin_write()
            row = await repo.get(uuid, for_update=True)
            if row is None:
                raise _not_found(uuid)
            row.secret_sealed = self.box.seal(secret)
            row.updated_at = self.clock()
        log.info("webhook %s: secret rotated", uuid)
        return row, secret

    async def deliveries(
        self, uuid: str, *, limit: int = 50, before: int | None = None
    ) -> list[DeliveryView]:
        """A subscription's deliveries, newest first, each with its attempts."""
        async with self.db.session() as s:
            repo = NotificationRepo(s)
            row = await repo.get(uuid)
            if row is None:
                raise _not_found(uuid)
            rows = await repo.deliveries(row.id, limit=limit, before=before)
            attempts = await repo.attempts(d.id for d in rows)
        return [DeliveryView(d, attempts[d.id]) for d in rows]

    def _changed(self) -> None:
        self._types = None

    # --- queueing (inside the event writer's transaction) -------------------------------------

    async def queue_deliveries(self, s: AsyncSession, stored: list[StoredEvent]) -> None:
        """The event writer's hook: one delivery per stored event and Ready subscription."""
        if not stored:
            return
        repo = NotificationRepo(s)
        types = await self._subscribed_types(repo)
        wanted = [e for e in stored if e.type in types]
        if not wanted:
            return
        by_type: dict[str, list[Subscriber]] = defaultdict(list)
        for sub in await repo.ready_for({e.type for e in wanted}):
            by_type[sub.event_type].append(sub)
        now = self.clock()
        rows: list[dict[str, Any]] = []
        for event in wanted:
            for sub in by_type.get(event.type, ()):
                delivery_uuid = str(uuidlib.uuid4())
                rows.append(
                    {
                        "uuid": delivery_uuid,
                        "notification_id": sub.id,
                        "event_id": event.id,
                        "event_type": event.type,
                        "body": delivery_body(delivery_uuid, sub.uuid, event),
                        "state": DeliveryState.PENDING.value,
                        "attempts": 0,
                        "next_at": now,
                        "last_code": None,
                        "last_error": "",
                        "created_at": now,
                        "delivered_at": None,
                    }
                )
        if rows:
            await repo.queue(rows)
            self._queued += len(rows)

    async def _subscribed_types(self, repo: NotificationRepo) -> frozenset[str]:
        now = time.monotonic()
        if self._types is None or now >= self._types_expire:
            self._types = await repo.ready_types()
            self._types_expire = now + CACHE_SECONDS
        return self._types

    def events_stored(self, stored: list[StoredEvent]) -> None:
        """The event writer's listener (after commit): wake the dispatcher if the batch
        queued deliveries."""
        if self._queued:
            QUEUED.inc(self._queued)
            self._queued = 0
            self.dispatcher.wake()


def public_fields(row: Notification) -> dict[str, Any]:
    """A subscription in the original's shape."""
    return {
        "uuid": row.uuid,
        "eventType": row.event_type,
        "protocol": row.protocol,
        "endpoint": row.endpoint,
        "status": row.status,
    }
