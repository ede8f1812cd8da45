"""Webhook notifications (the original's ``/notifications``): subscriptions, their
confirmation, and the delivery of events to them. See docs/notifications.md.

*Subscribing*: ``create`` checks the request, stores the subscription with a new signing
secret (sealed by the server key), and calls the endpoint once with a signed confirmation
request: 2xx makes it ``Ready``, anything else leaves it ``Pending Confirmation``. Posting
the same event type and endpoint again confirms the same subscription again.

*Queueing*: ``queue_deliveries`` is a hook of the event writer: inside the transaction that
stores a batch of events it inserts one delivery per (event, Ready subscription), its body
fixed then. A cache of the subscribed event types (dropped on every change made here, and
reloaded every ``CACHE_SECONDS`` to see other instances' changes) makes a batch nobody
subscribed to cost a set lookup per event.

*Sending*: the dispatcher (``run``) is its own worker, never in the writer's path. The event
listener wakes it when a batch queued deliveries, a timer when a retry falls due. It claims
due deliveries with a lease (db/repos/notifications.py), POSTs each with one shared httpx
client, with at most ``webhook_concurrency`` requests in flight and at most a quarter of them
to one receiver (``scheme://host:port``), so a slow or dead receiver holds up only itself.
Every attempt is recorded; a 2xx answer delivers, anything else is retried after
``backoff_delay`` until ``webhook_max_attempts``, then the delivery has failed. Finished
deliveries are deleted after the events' ``retention_days``.

*Reaching receivers*: every request (confirmations included) goes through an
``services.egress`` client, which connects only to addresses the policy allows, checked at
connect time. An endpoint that resolves to a refused address is refused when subscribing
(400). What an attempt without a status records, and the API shows, is one of two generic
reasons (``domain.webhooks.REFUSED``, ``UNREACHABLE``): whether a port was closed, filtered
or slow is for the server log only, so the answers cannot map a network.

Secrets and signatures are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.notifications import (
    AttemptResult,
    ClaimedDelivery,
    NotificationRepo,
    Subscriber,
)
from edgefleet.db.tables import DeliveryAttempt, Notification, WebhookDelivery
from edgefleet.domain.events import StoredEvent
from edgefleet.domain.webhooks import (
    CONFIRMATION,
    REFUSED,
    UNREACHABLE,
    DeliveryState,
    SubscriptionStatus,
    after_attempt,
    backoff_delay,
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
from edgefleet.errors import (
    ConflictError,
    DuplicateError,
    NotFoundError,
    StorageError,
    ValidationError,
)
from edgefleet.secretbox import SecretBox
from edgefleet.services.batches import BatchWriter
from edgefleet.services.egress import Egress, EgressRefusedError, guarded_client
from edgefleet.services.retention import delete_in_batches, every
from edgefleet.settings import EventSettings

log = logging.getLogger(__name__)

ATTEMPTS = Counter(
    "edgefleet_webhook_attempts_total",
    "Webhook delivery attempts, by what they left the delivery in",
    ["outcome"],
)
QUEUED = Counter("edgefleet_webhook_deliveries_queued_total", "Webhook deliveries queued")
IN_FLIGHT = Gauge("edgefleet_webhook_in_flight", "Webhook requests being sent")

CACHE_SECONDS = 5.0
"""How stale the cache of subscribed event types may get (other instances' changes)."""
POLL_SECONDS = 5.0
"""The dispatcher looks for due deliveries at least this often (other instances' queues,
leases of a server that died)."""
LEASE_MARGIN = 60.0
"""A claimed delivery is not due again until the send's timeout plus this has passed."""
MAX_RESPONSE_BYTES = 64 * 1024
"""A receiver's answer is read up to this much (to reuse the connection), then dropped."""
ROUND_CLAIMS = 8
"""Claims in one round before the dispatcher lets others run."""
MIN_WAIT = 0.05


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


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None
    error: str
    """What is recorded and shown: empty, or a generic reason."""
    duration_ms: float
    detail: str = ""
    """Why there was no status, for the server log only."""


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
        self.limit = settings.webhook_concurrency
        self.per_receiver = max(1, self.limit // 4)
        self._types: frozenset[str] | None = None
        self._types_expire = 0.0
        self._queued = 0
        """Deliveries queued by the batch being written (counted once it is committed)."""
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._load: Tally[str] = Tally()
        self._origins: dict[int, str] = {}
        self._results: list[AttemptResult] = []
        self._batches = BatchWriter(db, "webhook-dispatcher")
        self._secrets: dict[int, tuple[str, str]] = {}
        self.sent = 0
        """Attempts made by this instance."""

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
            outcome = await _post(
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
            self._wake.set()

    # --- sending ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Send due deliveries until cancelled (``run_retention`` deletes old ones: both are
        started by the server's supervisor). A database outage skips a round; any other
        error is the supervisor's to report and restart."""
        limits = httpx.Limits(
            max_connections=self.limit, max_keepalive_connections=min(self.limit, 32)
        )
        async with guarded_client(
            self.egress, self.settings.webhook_timeout_seconds, limits
        ) as client:
            try:
                while True:
                    wait = POLL_SECONDS
                    try:
                        wait = await self._round(client)
                    except StorageError as exc:
                        log.warning("webhooks: database unavailable (%s); retrying", exc.message)
                    await self._sleep(wait)
            finally:
                await self._stop()

    async def purge(self, batch: int = 5000) -> int:
        """Delete delivered and failed deliveries older than the event retention
        (``retention_days``; 0 keeps them), ``batch`` at a time. Returns how many."""
        days = self.settings.retention_days
        if not days:
            return 0
        cutoff = self.clock() - timedelta(days=days)

        async def delete(s: AsyncSession, limit: int) -> int:
            return await NotificationRepo(s).delete_finished_before(cutoff, limit)

        total = await delete_in_batches(self.db, delete, batch)
        if total:
            log.info("webhooks: %d deliveries older than %s days deleted", total, days)
        return total

    async def run_retention(self) -> None:
        """Purge now and every ``retention_interval_seconds`` until cancelled."""
        await every(self.settings.retention_interval_seconds, self.purge, "webhooks")

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            try:
                async with asyncio.timeout(seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
        self._wake.clear()

    async def _round(self, client: httpx.AsyncClient) -> float:
        """Record finished attempts, start what is due and fits; return how long to wait."""
        await self._flush()
        due = await self._next_due()
        claims = 0
        while due is not None and due <= self.clock():
            free = self.limit - len(self._running)
            if free <= 0:
                return POLL_SECONDS  # a finished send wakes us
            if claims == ROUND_CLAIMS:
                return MIN_WAIT
            claims += 1
            taken, seen = await self._claim(free)
            for delivery in taken:
                self._start(client, delivery)
            if not seen:
                return MIN_WAIT  # due, but held by another instance's claim for a moment
            due = await self._next_due()
        if due is None:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(MIN_WAIT, (due - self.clock()).total_seconds()))

    def _saturated(self) -> list[int]:
        """Subscriptions whose receiver has all the requests it may have."""
        return [nid for nid, o in self._origins.items() if self._load[o] >= self.per_receiver]

    async def _next_due(self) -> datetime | None:
        async with self.db.session() as s:
            return await NotificationRepo(s).next_due(self._saturated())

    async def _claim(self, free: int) -> tuple[list[ClaimedDelivery], bool]:
        """Lease up to ``free`` due deliveries, no receiver over its share. Also says whether
        any were due at all (some may be left for their receiver's share to free up)."""
        now = self.clock()
        lease = timedelta(seconds=self.settings.webhook_timeout_seconds + LEASE_MARGIN)
        async with self.db.session() as s:
            repo = NotificationRepo(s)
            await repo.begin_write()
            candidates = await repo.due(now, free, self._saturated())
            load = Tally(self._load)
            taken: list[ClaimedDelivery] = []
            for c in candidates:
                receiver = origin(c.endpoint)
                self._origins[c.notification_id] = receiver
                if load[receiver] >= self.per_receiver:
                    continue
                load[receiver] += 1
                taken.append(c)
            await repo.lease([c.id for c in taken], now + lease)
        return taken, bool(candidates)

    def _start(self, client: httpx.AsyncClient, delivery: ClaimedDelivery) -> None:
        receiver = origin(delivery.endpoint)
        self._load[receiver] += 1
        IN_FLIGHT.inc()
        # one delivery attempt, not a loop (the dispatcher, a worker, owns and stops them)
        self._running[delivery.id] = asyncio.create_task(  # noqa: TID251
            self._send(client, delivery, receiver), name=f"webhook-delivery-{delivery.id}"
        )

    async def _send(
        self, client: httpx.AsyncClient, delivery: ClaimedDelivery, receiver: str
    ) -> None:
        try:
            try:
                outcome = await self._attempt(client, delivery)
            except Exception:  # a bug: recorded as a failed attempt so it cannot loop
                log.exception("webhooks: delivery %s could not be attempted", delivery.uuid)
                outcome = _Outcome(None, "internal error while sending", 0.0)
            self.sent += 1
            attempts = delivery.attempts + 1
            state = after_attempt(outcome.status_code, attempts, self.settings.webhook_max_attempts)
            now = self.clock()
            next_at = None
            if state is DeliveryState.PENDING:
                delay = backoff_delay(attempts, self.settings.webhook_backoff_seconds)
                next_at = now + timedelta(seconds=delay)
            self._results.append(
                AttemptResult(
                    delivery_id=delivery.id,
                    at=now,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    duration_ms=outcome.duration_ms,
                    attempts=attempts,
                    state=state,
                    next_at=next_at,
                )
            )
            ATTEMPTS.labels(state.value if state is not DeliveryState.PENDING else "retry").inc()
            last = outcome.status_code or outcome.detail or outcome.error
            if state is DeliveryState.FAILED:
                log.warning(
                    "webhook delivery %s to %s failed after %d attempts (last: %s)",
                    delivery.uuid,
                    receiver,
                    attempts,
                    last,
                )
            elif outcome.status_code is None:
                log.info(
                    "webhook delivery %s to %s: attempt %d: %s",
                    delivery.uuid,
                    receiver,
                    attempts,
                    last,
                )
        finally:
            self._running.pop(delivery.id, None)
            self._load[receiver] -= 1
            if self._load[receiver] <= 0:
                del self._load[receiver]
            IN_FLIGHT.dec()
            self._wake.set()

    async def _attempt(self, client: httpx.AsyncClient, delivery: ClaimedDelivery) -> _Outcome:
        try:
            secret = self._secret(delivery.notification_id, delivery.secret_sealed)
        except StorageError:
            return _Outcome(None, "the signing secret does not open with this server key", 0.0)
        raw = encode(delivery.body)
        signed = headers(
            delivery.event_type, delivery.uuid, secret, raw, int(self.clock().timestamp())
        )
        timeout = self.settings.webhook_timeout_seconds
        return await _post(client, delivery.endpoint, raw, signed, timeout)

    def _secret(self, notification_id: int, sealed: str) -> str:
        cached = self._secrets.get(notification_id)
        if cached is not None and cached[0] == sealed:
            return cached[1]
        plain = self.box.open(sealed)
        self._secrets[notification_id] = (sealed, plain)
        return plain

    async def _flush(self) -> None:
        """Record the attempts finished since the last flush, in one transaction (split
        around any the database refuses). An outage hands them back for the next round."""
        if not self._results:
            return
        results, self._results = self._results, []
        try:
            await self._batches.write(results, self._record, _describe_attempt, wait=False)
        except BaseException:
            self._results[:0] = results
            raise

    async def _record(self, results: Sequence[AttemptResult]) -> None:
        async with self.db.session() as s:
            repo = NotificationRepo(s)
            await repo.begin_write()
            await repo.record(results)

    async def _stop(self) -> None:
        """On shutdown: stop sends in flight, record what finished, and hand the unfinished
        back (due now) so a restart or another instance sends them without waiting out
        their lease. A send cut short may have reached its receiver: it goes again."""
        unfinished = list(self._running)
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._flush()
            if unfinished:
                async with self.db.session() as s:
                    await NotificationRepo(s).release(unfinished, self.clock())
        except Exception as exc:
            log.warning(
                "webhooks: on shutdown, %d attempts not recorded and %d leases kept (%s)",
                len(self._results),
                len(unfinished),
                exc.__class__.__name__,
            )

    # --- tests and shutdown -----------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._running)


def _describe_attempt(result: AttemptResult) -> str:
    return f"attempt {result.attempts} of webhook delivery {result.delivery_id}"


def public_fields(row: Notification) -> dict[str, Any]:
    """A subscription in the original's shape."""
    return {
        "uuid": row.uuid,
        "eventType": row.event_type,
        "protocol": row.protocol,
        "endpoint": row.endpoint,
        "status": row.status,
    }


async def _post(
    client: httpx.AsyncClient, url: str, raw: bytes, sent: dict[str, str], seconds: float
) -> _Outcome:
    """POST ``raw`` and report the status code or why there was none. ``seconds`` bounds the
    whole exchange (httpx's own timeout bounds each read and write)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    code: int | None = None
    error = detail = ""
    try:
        async with asyncio.timeout(seconds):
            async with client.stream("POST", url, content=raw, headers=sent) as response:
                code = response.status_code
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > MAX_RESPONSE_BYTES:
                        break
    except EgressRefusedError as exc:
        error, detail = REFUSED, exc.message
    except (TimeoutError, httpx.TimeoutException):
        error, detail = UNREACHABLE, f"no answer within {seconds:g} s"
    except httpx.HTTPError as exc:
        error, detail = UNREACHABLE, _describe(exc)
    elapsed = round((loop.time() - start) * 1000, 3)
    return _Outcome(code, error, elapsed, detail[:500])


def _describe(exc: Exception) -> str:
    detail = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {detail}" if detail != exc.__class__.__name__ else detail


__all__ = [
    "Confirmation",
    "DeliveryView",
    "NotificationService",
    "Subscription",
    "public_fields",
]
