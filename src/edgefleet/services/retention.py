"""Retention: old rows deleted in short batches, now and periodically."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.engine import Database
from edgefleet.errors import StorageError

log = logging.getLogger(__name__)

DeleteBatch = Callable[[AsyncSession, int], Awaitable[int]]
"""Deletes up to ``limit`` rows in the session given; returns how many it deleted."""


async def delete_in_batches(db: Database, delete: DeleteBatch, batch: int) -> int:
    """Run ``delete`` in one transaction per batch until a batch comes back short, letting
    other work run in between; returns the total deleted."""
    total = 0
    while True:
        async with db.session() as s:
            n = await delete(s, batch)
        total += n
        if n < batch:
            return total
        await asyncio.sleep(0)


async def every(seconds: float, purge: Callable[[], Awaitable[int]], what: str) -> None:
    """Call ``purge`` now and every ``seconds`` until cancelled; an outage skips a round."""
    while True:
        try:
            await purge()
        except StorageError as exc:
            log.warning("%s: retention skipped: %s", what, exc.message)
        await asyncio.sleep(seconds)
