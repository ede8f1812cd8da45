"""Webhook subscriptions, their deliveries and every delivery attempt.

Deliveries are claimed with a *lease*: the claim pushes ``next_at`` past the send's deadline,
so a delivery being sent is not due for anyone else; a server that dies mid-send leaves it
to be sent again when the lease runs out. On PostgreSQL the claim reads with
``FOR UPDATE SKIP LOCKED``, so server instances claiming at once never take the same row.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import DeliveryAttempt, Notification, WebhookDelivery
from edgefleet.domain.webhooks import TERMINAL, DeliveryState, SubscriptionStatus
from edgefleet.errors import DuplicateError


@dataclass(frozen=True)
class Subscriber:
    """A Ready subscription, as the event hook needs it."""

    id: int
    uuid: str
    event_type: str


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    uuid: str
    notification_id: int
    endpoint: str
    secret_sealed: str
    event_type: str
    body: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class AttemptResult:
    """One attempt, and what it leaves the delivery in."""

    delivery_id: int
    at: datetime
    status_code: int | None
    error: str
    duration_ms: float
    attempts: int
    state: DeliveryState
    next_at: datetime | None


READY = SubscriptionStatus.READY.value
PENDING = DeliveryState.PENDING.value


class NotificationRepo:
    def __init__(self, s: AsyncSession) -> None:
        self.s = s
        self._dialect = s.get_bind().dialect.name

    async def begin_write(self) -> None:
        """SQLite: take the write lock first, so a read-then-write transaction waits its turn
        instead of failing on a stale snapshot (see TaskRepo.begin_write)."""
        if self._dialect == "sqlite":
            await self.s.execute(text("DELETE FROM delivery_attempts WHERE 0"))

    # --- subscriptions ----------------------------------------------------------------------

    async def add(self, row: Notification) -> None:
        self.s.add(row)
        try:
            await self.s.flush()
        except IntegrityError as exc:
            raise DuplicateError(
                "notification", "eventType and endpoint", f"{row.event_type} {row.endpoint}"
            ) from exc

    async def get(self, uuid: str, *, for_update: bool = False) -> Notification | None:
        q = select(Notification).where(Notification.uuid == uuid)
        if for_update:
            q = q.with_for_update()
        return cast(Notification | None, await self.s.scalar(q))

    async def find(self, event_type: str, endpoint: str) -> Notification | None:
        return cast(
            Notification | None,
            await self.s.scalar(
                select(Notification).where(
                    Notification.event_type == event_type, Notification.endpoint == endpoint
                )
            ),
        )

    async def all(self) -> list[Notification]:
        return list(await self.s.scalars(select(Notification).order_by(Notification.id)))

    async def existing(self, uuids: Collection[str]) -> set[str]:
        if not uuids:
            return set()
        rows = await self.s.scalars(select(Notification.uuid).where(Notification.uuid.in_(uuids)))
        return set(rows)

    async def delete(self, uuids: Collection[str]) -> int:
        """Delete subscriptions; their deliveries and attempts go with them (cascade)."""
        if not uuids:
            return 0
        result = await self.s.execute(
            delete(Notification)
            .where(Notification.uuid.in_(uuids))
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def ready_types(self) -> frozenset[str]:
        """The event types at least one Ready subscription listens to."""
        rows = await self.s.scalars(
            select(Notification.event_type).where(Notification.status == READY).distinct()
        )
        return frozenset(rows)

    async def ready_for(self, event_types: Collection[str]) -> list[Subscriber]:
        """The Ready subscriptions to these types. On PostgreSQL they are locked against
        deletion (``FOR KEY SHARE``) until the caller's deliveries to them are committed."""
        q = (
            select(Notification.id, Notification.uuid, Notification.event_type)
            .where(Notification.status == READY, Notification.event_type.in_(event_types))
            .order_by(Notification.id)
        )
        if self._dialect == "postgresql":
            q = q.with_for_update(read=True, key_share=True)
        return [Subscriber(*r) for r in await self.s.execute(q)]

    # --- deliveries -------------------------------------------------------------------------

    async def queue(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert deliveries (dicts of WebhookDelivery columns) in bulk."""
        for start in range(0, len(rows), 1000):
            await self.s.execute(insert(WebhookDelivery), list(rows[start : start + 1000]))

    async def due(
        self, now: datetime, limit: int, exclude: Collection[int] = ()
    ) -> list[ClaimedDelivery]:
        """Up to ``limit`` pending deliveries due by ``now`` to Ready subscriptions (not those
        of ``exclude``), oldest first; on PostgreSQL locked, skipping rows another claim holds.
        ``lease()`` the ones taken before the transaction ends."""
        q = (
            select(
                WebhookDelivery.id,
                WebhookDelivery.uuid,
                WebhookDelivery.notification_id,
                Notification.endpoint,
                Notification.secret_sealed,
                WebhookDelivery.event_type,
                WebhookDelivery.body,
                WebhookDelivery.attempts,
            )
            .join(Notification, Notification.id == WebhookDelivery.notification_id)
            .where(
                WebhookDelivery.state == PENDING,
                WebhookDelivery.next_at <= now,
                Notification.status == READY,
            )
            .order_by(WebhookDelivery.next_at, WebhookDelivery.id)
            .limit(limit)
        )
        if exclude:
            q = q.where(WebhookDelivery.notification_id.not_in(list(exclude)))
        if self._dialect == "postgresql":
            q = q.with_for_update(of=WebhookDelivery, skip_locked=True)
        return [ClaimedDelivery(*r) for r in await self.s.execute(q)]

    async def lease(self, ids: Sequence[int], until: datetime) -> None:
        if ids:
            await self.s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(next_at=until)
                .execution_options(synchronize_session=False)
            )

    async def next_due(self, exclude: Collection[int] = ()) -> datetime | None:
        """When the earliest pending delivery to a Ready subscription is due."""
        q = (
            select(func.min(WebhookDelivery.next_at))
            .join(Notification, Notification.id == WebhookDelivery.notification_id)
            .where(WebhookDelivery.state == PENDING, Notification.status == READY)
        )
        if exclude:
            q = q.where(WebhookDelivery.notification_id.not_in(list(exclude)))
        return cast(datetime | None, await self.s.scalar(q))  # min() keeps the column type

    async def record(self, results: Sequence[AttemptResult]) -> int:
        """Store attempts and their deliveries' new state; deliveries deleted meanwhile (their
        subscription was) are skipped. Returns how many were recorded."""
        ids = sorted({r.delivery_id for r in results})
        if not ids:
            return 0
        q = select(WebhookDelivery.id).where(WebhookDelivery.id.in_(ids))
        if self._dialect == "postgresql":
            q = q.with_for_update()
        present = set(await self.s.scalars(q))
        kept = [r for r in results if r.delivery_id in present]
        if not kept:
            return 0
        t = cast(Table, WebhookDelivery.__table__)
        await self.s.execute(
            update(t)
            .where(t.c.id == bindparam("did"))
            .values(
                state=bindparam("new_state"),
                attempts=bindparam("new_attempts"),
                next_at=bindparam("new_next"),
                last_code=bindparam("code"),
                last_error=bindparam("err"),
                delivered_at=bindparam("done"),
            ),
            [
                {
                    "did": r.delivery_id,
                    "new_state": r.state.value,
                    "new_attempts": r.attempts,
                    "new_next": r.next_at,
                    "code": r.status_code,
                    "err": r.error[:500],
                    "done": r.at if r.state is DeliveryState.DELIVERED else None,
                }
                for r in sorted(kept, key=lambda r: r.delivery_id)
            ],
        )
        await self.s.execute(
            insert(DeliveryAttempt),
            [
                {
                    "delivery_id": r.delivery_id,
                    "at": r.at,
                    "status_code": r.status_code,
                    "error": r.error[:500],
                    "duration_ms": r.duration_ms,
                }
                for r in kept
            ],
        )
        return len(kept)

    async def release(self, ids: Sequence[int], now: datetime) -> None:
        """Give leased deliveries back (due now): a server stopping before it sent them."""
        if ids:
            await self.s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids), WebhookDelivery.state == PENDING)
                .values(next_at=now)
                .execution_options(synchronize_session=False)
            )

    async def delete_finished_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to ``limit`` delivered or failed deliveries queued before ``cutoff``
        (their attempts go with them); the caller repeats until it gets fewer."""
        ids = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.state.in_([s.value for s in TERMINAL]),
                WebhookDelivery.created_at < cutoff,
            )
            .order_by(WebhookDelivery.id)
            .limit(limit)
        )
        result = await self.s.execute(
            delete(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids.scalar_subquery()))
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def deliveries(
        self, notification_id: int, *, limit: int, before: int | None = None
    ) -> list[WebhookDelivery]:
        """A subscription's deliveries, newest first (``before``: ids below it)."""
        q = (
            select(WebhookDelivery)
            .where(WebhookDelivery.notification_id == notification_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        if before is not None:
            q = q.where(WebhookDelivery.id < before)
        return list(await self.s.scalars(q))

    async def attempts(self, delivery_ids: Iterable[int]) -> dict[int, list[DeliveryAttempt]]:
        """The attempts of these deliveries, oldest first."""
        ids = list(delivery_ids)
        out: dict[int, list[DeliveryAttempt]] = {i: [] for i in ids}
        if not ids:
            return out
        rows = await self.s.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_(ids))
            .order_by(DeliveryAttempt.delivery_id, DeliveryAttempt.id)
        )
        for row in rows:
            out[row.delivery_id].append(row)
        return out

    async def counts(self, notification_id: int) -> dict[str, int]:
        """How many of a subscription's deliveries are in each state."""
        rows = await self.s.execute(
            select(WebhookDelivery.state, func.count())
            .where(WebhookDelivery.notification_id == notification_id)
            .group_by(WebhookDelivery.state)
        )
        got = {state: int(n) for state, n in rows}
        return {s.value: got.get(s.value, 0) for s in DeliveryState}
