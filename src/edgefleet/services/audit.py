"""The audit log: who changed what, when, and whether it worked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.audit import AuditRepo
from edgefleet.db.tables import AuditEntry
from edgefleet.domain.audit import AuditFilter
from edgefleet.domain.limits import storable
from edgefleet.errors import StorageError

log = logging.getLogger(__name__)

ANONYMOUS_WRITERS = 2
"""Database connections the records of anonymous requests may hold at once: a flood of
refused anonymous writes (each is recorded) queues here instead of taking the whole pool."""


@dataclass(frozen=True)
class Actor:
    type: str
    """``user``, ``token``, ``cli``, ``system`` or ``anonymous``."""
    id: str = ""
    name: str = ""


class AuditService:
    def __init__(self, db: Database, clock: Clock = utcnow) -> None:
        self.db = db
        self.clock = clock
        self._anonymous = asyncio.Semaphore(ANONYMOUS_WRITERS)

    async def record(
        self,
        actor: Actor,
        action: str,
        *,
        outcome: str,
        target_type: str = "",
        target_id: str = "",
        status_code: int = 0,
        ip: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        # what a client sent is recorded as far as it can be stored, even when it was refused
        entry = dict(
            at=self.clock(),
            actor_type=actor.type,
            actor_id=storable(actor.id),
            actor_name=storable(actor.name[:254]),
            action=storable(action[:64]),
            target_type=storable(target_type[:32]),
            target_id=storable(target_id[:64]),
            outcome=outcome,
            status_code=status_code,
            ip=ip[:64],
            detail={k: storable(v) if isinstance(v, str) else v for k, v in (detail or {}).items()},
        )
        queue = self._anonymous if actor.type == "anonymous" else contextlib.nullcontext()
        try:
            # one INSERT committing by itself: one round trip, not BEGIN, INSERT and COMMIT
            async with queue, self.db.autocommit() as conn:
                await AuditRepo(conn).add(entry)
        except StorageError:
            # The change itself is already committed; say loudly that its record is missing.
            log.error("audit entry lost: %s %s by %s", action, target_id, actor.name)
            raise

    async def query(self, f: AuditFilter, limit: int) -> list[AuditEntry]:
        async with self.db.session() as s:
            return await AuditRepo(s).query(f, limit)
