"""Broker-node leases and the server instances that share them (services/nodes.py).

Each statement is atomic on its own (one UPDATE, or one INSERT … ON CONFLICT DO UPDATE with
a condition), so two instances racing for one free lease cannot both get it, on PostgreSQL
and on SQLite alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import BrokerLease, RegisteredNode, ServerInstance


class NodeRepo:
    def __init__(self, s: AsyncSession) -> None:
        self.s = s
        self._dialect = s.get_bind().dialect.name

    def _insert(
        self, table: type[BrokerLease] | type[ServerInstance] | type[RegisteredNode]
    ) -> sqlite.Insert:
        make = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        return make(table)  # type: ignore[return-value]  # the two share this API

    async def heartbeat(
        self, instance: str, now: datetime, previous: datetime | None = None
    ) -> bool:
        """This instance is alive now; whether, since its ``previous`` beat, another process
        beat under the same id (two instances misconfigured with one id)."""
        shared = False
        if previous is not None:
            other = await self.s.scalar(
                select(func.count())
                .select_from(ServerInstance)
                .where(ServerInstance.id == instance, ServerInstance.seen_at != previous)
            )
            shared = bool(other)
        stmt = self._insert(ServerInstance).values(id=instance, seen_at=now)
        await self.s.execute(
            stmt.on_conflict_do_update(index_elements=["id"], set_={"seen_at": now})
        )
        return shared

    async def live_instances(self, since: datetime) -> int:
        """Instances heard from since ``since``."""
        n = await self.s.scalar(
            select(func.count()).select_from(ServerInstance).where(ServerInstance.seen_at >= since)
        )
        return int(n or 0)

    async def forget_instance(self, instance: str) -> None:
        await self.s.execute(delete(ServerInstance).where(ServerInstance.id == instance))

    async def forget_instances_before(self, before: datetime) -> None:
        """Instances not heard from for long are dropped (they left without a word)."""
        await self.s.execute(delete(ServerInstance).where(ServerInstance.seen_at < before))

    async def renew(self, holder: str, nodes: Sequence[str], expires_at: datetime) -> set[str]:
        """Extend ``holder``'s leases on these nodes; the nodes it still holds."""
        if not nodes:
            return set()
        rows = await self.s.execute(
            update(BrokerLease)
            .where(BrokerLease.holder == holder, BrokerLease.node.in_(list(nodes)))
            .values(expires_at=expires_at)
            .returning(BrokerLease.node)
            .execution_options(synchronize_session=False)
        )
        return {n for (n,) in rows}

    async def take(self, holder: str, node: str, now: datetime, expires_at: datetime) -> bool:
        """Take the lease on ``node`` if it is free, expired, or ``holder``'s already."""
        stmt = self._insert(BrokerLease).values(node=node, holder=holder, expires_at=expires_at)
        excluded = stmt.excluded
        rows = await self.s.execute(
            stmt.on_conflict_do_update(
                index_elements=["node"],
                set_={"holder": excluded.holder, "expires_at": excluded.expires_at},
                where=(BrokerLease.expires_at < now) | (BrokerLease.holder == holder),
            ).returning(BrokerLease.node)
        )
        return rows.first() is not None

    async def release(self, holder: str, nodes: Sequence[str] | None = None) -> None:
        """Give up ``holder``'s leases (on ``nodes`` only, if given)."""
        stmt = delete(BrokerLease).where(BrokerLease.holder == holder)
        if nodes is not None:
            stmt = stmt.where(BrokerLease.node.in_(list(nodes)))
        await self.s.execute(stmt)

    async def leases(self) -> dict[str, tuple[str, datetime]]:
        """``{node: (holder, expires_at)}``."""
        rows = await self.s.execute(
            select(BrokerLease.node, BrokerLease.holder, BrokerLease.expires_at)
        )
        return {n: (h, e) for n, h, e in rows}

    # --- nodes that register themselves ------------------------------------------------

    async def register(
        self,
        name: str,
        host: str,
        port: int,
        now: datetime,
        *,
        live_since: datetime,
        limit: int,
    ) -> Literal["ok", "taken", "full"]:
        """Node ``name`` is up now, its server listener at ``host:port``: ``"ok"``; or
        ``"taken"`` (a node registered since ``live_since`` holds the name at another
        address), ``"full"`` (a new name with ``limit`` nodes live already): nothing written."""
        held = (
            await self.s.execute(
                select(
                    RegisteredNode.host,
                    RegisteredNode.port,
                    (RegisteredNode.seen_at >= live_since).label("live"),
                )
                .where(RegisteredNode.name == name)
                .with_for_update()
            )
        ).first()
        live_here = held is not None and bool(held.live)
        if live_here and held is not None and (held.host, held.port) != (host, port):
            return "taken"
        if not live_here:
            live = await self.s.scalar(
                select(func.count())
                .select_from(RegisteredNode)
                .where(RegisteredNode.seen_at >= live_since)
            )
            if (live or 0) >= limit:
                return "full"
        stmt = self._insert(RegisteredNode).values(name=name, host=host, port=port, seen_at=now)
        await self.s.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"], set_={"host": host, "port": port, "seen_at": now}
            )
        )
        return "ok"

    async def withdraw(self, name: str) -> bool:
        """Node ``name`` is going; whether it was registered."""
        rows = await self.s.execute(
            delete(RegisteredNode).where(RegisteredNode.name == name).returning(RegisteredNode.name)
        )
        return rows.first() is not None

    async def registered(self, since: datetime) -> list[tuple[str, str, int]]:
        """``(name, host, port)`` of the nodes registered since ``since``, by name."""
        rows = await self.s.execute(
            select(RegisteredNode.name, RegisteredNode.host, RegisteredNode.port)
            .where(RegisteredNode.seen_at >= since)
            .order_by(RegisteredNode.name)
        )
        return [(n, h, p) for n, h, p in rows]

    async def forget_registered_before(self, before: datetime) -> None:
        await self.s.execute(delete(RegisteredNode).where(RegisteredNode.seen_at < before))
