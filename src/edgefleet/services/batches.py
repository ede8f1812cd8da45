"""Batch writes that neither stop for a bad row nor lose rows to an outage.

The batched writers (presence, task results, events, webhook attempts) write many rows in one
transaction. Two failures look alike there and need opposite answers:

- **the database is unavailable** (``StorageError``: the connection failed, SQLite is
  locked; or any error while the database does not answer a ping): the batch is kept and
  written again after a backoff, however long the outage lasts;
- **the database refuses the content** (any other error while it answers: a NUL or a lone
  surrogate in a text column, a number out of range, JSON it does not take): the batch is
  split in halves, each written on its own, until the refused rows stand alone. Each of
  those is set aside — logged once with the reason and what it was (the gateway's uuid),
  counted in ``edgefleet_rows_rejected_total{writer}`` — and everything else is written.
  One bad row in a batch of n costs about 2·log2(n) extra transactions.

An error that is not the database's (a bug in the writer) is handled as a refusal too, so
one bad batch cannot stop the pipeline; its stack is logged once per batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from prometheus_client import Counter
from sqlalchemy.exc import StatementError

from edgefleet.db.engine import Database
from edgefleet.errors import StorageError
from edgefleet.workers import failure_reason, printable

log = logging.getLogger(__name__)

REJECTED = Counter(
    "edgefleet_rows_rejected_total",
    "Rows a batched writer set aside because the database refused them (each logged)",
    ["writer"],
)

T = TypeVar("T")
R = TypeVar("R")

Describe = Callable[[T], str]
"""What a row is, for the log: ``status of <uuid>``."""


def _refusal(exc: Exception) -> bool:
    """The database (or its driver, encoding a value) refused the content, as opposed to a
    bug of ours."""
    return isinstance(exc, StatementError | ValueError | OverflowError)


class BatchWriter:
    """Writes batches for one writer (the ``writer`` label of its metric and logs)."""

    def __init__(
        self,
        db: Database,
        writer: str,
        *,
        first_delay: float = 0.5,
        max_delay: float = 10.0,
    ) -> None:
        self.db = db
        self.writer = writer
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.rejected = 0

    async def write(
        self,
        items: Sequence[T],
        write: Callable[[Sequence[T]], Awaitable[R]],
        describe: Describe[T],
        *,
        wait: bool = True,
        on_reject: Callable[[T], None] | None = None,
    ) -> list[R]:
        """Write ``items`` with ``write`` (one transaction per call), splitting around the
        rows the database refuses; returns what each successful call returned, in order.

        An outage is waited out (each part again until it is written), or with ``wait``
        false raises ``StorageError`` if nothing has been written yet (the caller keeps the
        items); once a batch has been split, parts already committed are never written
        again, so the outage is waited out then."""
        if not items:
            return []
        results: list[R] = []
        logged_bug = False

        async def attempt(part: Sequence[T], patient: bool) -> None:
            nonlocal logged_bug
            error = await self._write_part(part, write, results, patient)
            if error is None:
                return
            if len(part) == 1:
                reason = failure_reason(error)
                if not _refusal(error) and not logged_bug:
                    logged_bug = True
                    log.error(
                        "%s: a write failed (not a refusal of the database)",
                        self.writer,
                        exc_info=error,
                    )
                self.rejected += 1
                REJECTED.labels(self.writer).inc()
                log.warning(
                    "%s: %s refused by the database and set aside: %s",
                    self.writer,
                    printable(describe(part[0])),
                    reason,
                )
                if on_reject is not None:
                    on_reject(part[0])
                return
            middle = len(part) // 2
            await attempt(part[:middle], True)
            await attempt(part[middle:], True)

        await attempt(items, wait)
        return results

    async def _write_part(
        self,
        part: Sequence[T],
        write: Callable[[Sequence[T]], Awaitable[R]],
        results: list[R],
        patient: bool,
    ) -> Exception | None:
        """Write one part, waiting out an outage (or raising it when not ``patient``);
        returns the error if the database refused it."""
        delay = self.first_delay
        outage = False
        while True:
            try:
                results.append(await write(part))
            except StorageError as exc:
                if not patient:
                    raise
                reason = exc.message
            except Exception as exc:
                if await self.db.ping():
                    return exc
                if not patient:
                    raise StorageError(f"database unavailable: {failure_reason(exc)}") from exc
                reason = failure_reason(exc)
            else:
                if outage:
                    log.info("%s: database back, %d rows written", self.writer, len(part))
                return None
            if not outage:
                outage = True
                log.warning(
                    "%s: database unavailable (%s); holding %d rows", self.writer, reason, len(part)
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay)
