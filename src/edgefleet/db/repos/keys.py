"""The log of gateway key changes (``key_changes``) and the reads that follow it.

Writers call :meth:`KeyChangeRepo.record` last in the transaction that registers, re-keys or
deletes gateways. On PostgreSQL it first takes a transaction-level advisory lock, so the
rows' ``seq`` values are handed out in commit order: a reader that has seen ``seq = n``
committed has seen every change below ``n`` too (without the lock, a transaction that took
``n - 1`` but committed later would be skipped for good). The lock is held from that last
statement to the commit, a millisecond or two. SQLite serialises writers anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import Device, KeyChange

ADVISORY_LOCK = 0x6564676B65797300
"""``pg_advisory_xact_lock`` key of the writers of ``key_changes`` ("edgkeys")."""


class KeyChangeRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def record(self, uuids: Sequence[str], at: datetime) -> int:
        """Log a change of these gateways' keys; returns the highest ``seq`` given (0 when
        ``uuids`` is empty). Call it last before the commit."""
        if not uuids:
            return 0
        bind = self.s.get_bind()
        if bind.dialect.name == "postgresql":
            await self.s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})
        rows = [{"device_uuid": u, "at": at} for u in uuids]
        await self.s.execute(insert(KeyChange), rows)
        latest = await self.s.scalar(select(func.max(KeyChange.seq)))
        return int(latest or 0)

    async def latest(self) -> int:
        """The highest ``seq`` committed (0 before any change)."""
        return int(await self.s.scalar(select(func.max(KeyChange.seq))) or 0)

    async def horizon(self) -> int:
        """Changes above this ``seq`` are all still logged (older ones may be pruned)."""
        oldest = await self.s.scalar(select(func.min(KeyChange.seq)))
        return 0 if oldest is None else int(oldest) - 1

    async def since(self, cursor: int, limit: int) -> list[tuple[int, str]]:
        """``(seq, uuid)`` of the changes after ``cursor``, oldest first, at most ``limit``."""
        rows = await self.s.execute(
            select(KeyChange.seq, KeyChange.device_uuid)
            .where(KeyChange.seq > cursor)
            .order_by(KeyChange.seq)
            .limit(limit)
        )
        return [(int(seq), uuid) for seq, uuid in rows]

    async def sealed_keys(self, uuids: Sequence[str]) -> dict[str, str]:
        """``uuid → sealed psk`` of those among ``uuids`` that are registered now."""
        out: dict[str, str] = {}
        for i in range(0, len(uuids), 5000):
            rows = await self.s.execute(
                select(Device.uuid, Device.psk_encrypted).where(
                    Device.uuid.in_(uuids[i : i + 5000])
                )
            )
            out.update({u: p for u, p in rows})
        return out

    async def all_sealed(self, chunk: int) -> AsyncIterator[list[tuple[str, str]]]:
        """``(uuid, sealed psk)`` of every gateway, ``chunk`` rows at a time (a server-side
        cursor: the event loop gets its turn between chunks)."""
        result = await self.s.stream(
            select(Device.uuid, Device.psk_encrypted).execution_options(yield_per=chunk)
        )
        async for rows in result.partitions(chunk):
            yield [(u, p) for u, p in rows]

    async def prune(self, before: datetime) -> int:
        """Delete the changes logged before ``before``, oldest first by ``seq`` (so
        :meth:`horizon` stays exact), always keeping the newest; returns how many went."""
        cut = await self.s.scalar(select(func.max(KeyChange.seq)).where(KeyChange.at < before))
        newest = await self.latest()
        if cut is None or newest == 0:
            return 0
        result = await self.s.execute(
            delete(KeyChange).where(KeyChange.seq <= min(int(cut), newest - 1))
        )
        return int(getattr(result, "rowcount", 0) or 0)
