"""The webhook dispatcher: sends the queued deliveries (see the package's docstring).

Its own worker, never in the event writer's path. The event listener wakes it when a batch
queued deliveries, a timer when a retry falls due. It claims due deliveries with a lease
(db/repos/notifications.py), POSTs each with one shared httpx client, with at most
``webhook_concurrency`` requests in flight and at most a quarter of them to one receiver
(``scheme://host:port``), so a slow or dead receiver holds up only itself. Every attempt is
recorded; a 2xx answer delivers, anything else is retried after ``backoff_delay`` until
``webhook_max_attempts``, then the delivery has failed. Finished deliveries are deleted after
the events' ``retention_days``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import httpx
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.engine import Database
from edgefleet.db.repos.notifications import AttemptResult, ClaimedDelivery, NotificationRepo
from edgefleet.domain.webhooks import (
    DeliveryState,
    after_attempt,
    backoff_delay,
    encode,
    headers,
    origin,
)
from edgefleet.errors import StorageError
from edgefleet.secretbox import SecretBox
from edgefleet.services.batches import BatchWriter
from edgefleet.services.egress import Egress, guarded_client
from edgefleet.services.notifications.posting import Outcome, post
from edgefleet.services.retention import delete_in_batches, every
from edgefleet.settings import EventSettings

log = logging.getLogger(__name__)

ATTEMPTS = Counter(
    "edgefleet_webhook_attempts_total",
    "Webhook delivery attempts, by what they left the delivery in",
    ["outcome"],
)
IN_FLIGHT = Gauge("edgefleet_webhook_in_flight", "Webhook requests being sent")

POLL_SECONDS = 5.0
"""The dispatcher looks for due deliveries at least this often (other instances' queues,
leases of a server that died)."""
LEASE_MARGIN = 60.0
"""A claimed delivery is not due again until the send's timeout plus this has passed."""
ROUND_CLAIMS = 8
"""Claims in one round before the dispatcher lets others run."""
MIN_WAIT = 0.05


class WebhookDispatcher:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: EventSettings,
        egress: Callable[[], Egress],
        clock: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self._egress = egress
        self.clock = clock
        """The service's clock, read at each use (tests move it)."""
        self.limit = settings.webhook_concurrency
        self.per_receiver = max(1, self.limit // 4)
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._load: Tally[str] = Tally()
        self._origins: dict[int, str] = {}
        self._results: list[AttemptResult] = []
        self._batches = BatchWriter(db, "webhook-dispatcher")
        self._secrets: dict[int, tuple[str, str]] = {}
        self.sent = 0
        """Attempts made by this instance."""

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # --- sending ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Send due deliveries until cancelled (``run_retention`` deletes old ones: both are
        started by the server's supervisor). A database outage skips a round; any other
        error is the supervisor's to report and restart."""
        limits = httpx.Limits(
            max_connections=self.limit, max_keepalive_connections=min(self.limit, 32)
        )
        async with guarded_client(
            self._egress(), self.settings.webhook_timeout_seconds, limits
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
                outcome = Outcome(None, "internal error while sending", 0.0)
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

    async def _attempt(self, client: httpx.AsyncClient, delivery: ClaimedDelivery) -> Outcome:
        try:
            secret = self._secret(delivery.notification_id, delivery.secret_sealed)
        except StorageError:
            return Outcome(None, "the signing secret does not open with this server key", 0.0)
        raw = encode(delivery.body)
        signed = headers(
            delivery.event_type, delivery.uuid, secret, raw, int(self.clock().timestamp())
        )
        timeout = self.settings.webhook_timeout_seconds
        return await post(client, delivery.endpoint, raw, signed, timeout)

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


def _describe_attempt(result: AttemptResult) -> str:
    return f"attempt {result.attempts} of webhook delivery {result.delivery_id}"
