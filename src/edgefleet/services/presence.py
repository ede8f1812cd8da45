"""Presence and cached properties of gateways, from what they publish.

Status messages and property updates are queued and written in batches (one statement for
many gateways), so a reconnect storm of thousands of gateways costs a few transactions, not
thousands. Within a batch the last status of each gateway wins and its property updates are
folded in arrival order, which keeps MQTT's per-topic order. A database outage is waited
out; a gateway's row the database refuses (a NUL in a property on PostgreSQL) is set aside
and the rest of its batch written (services/batches.py), so nothing a gateway sends can stop
presence for the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.domain.devices import ConnectionStatus
from edgefleet.services.batches import BatchWriter

log = logging.getLogger(__name__)

WRITTEN = Counter(
    "edgefleet_presence_rows_written_total",
    "Gateway rows written by the presence writer",
    ["kind"],  # status | properties
)
BATCH_SECONDS = Histogram(
    "edgefleet_presence_batch_seconds",
    "Time to write one presence batch",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

K = TypeVar("K")
V = TypeVar("V")

PROPERTIES = "/system/properties"


@dataclass
class _PendingProperties:
    whole: bool
    """True: ``values`` is the gateway's whole object; False: keys to set on the stored one."""
    values: dict[str, Any]


def _take(pending: dict[K, V], limit: int) -> dict[K, V]:
    """Remove and return up to ``limit`` of the oldest entries."""
    if len(pending) <= limit:
        batch = dict(pending)
        pending.clear()
        return batch
    keys = list(itertools.islice(pending, limit))
    return {k: pending.pop(k) for k in keys}


@dataclass(frozen=True)
class PropertyChange:
    device_uuid: str
    key: str | None
    """The property set, or None when the whole object was replaced."""
    value: Any


class PresenceService:
    """Queues statuses and property updates and writes them in batches, from one task.

    One writer keeps each gateway's updates in arrival order and never has two of its own
    transactions waiting on each other's rows; rows are written in uuid order, so several
    server instances lock them in the same order too.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock = utcnow,
        *,
        batch_size: int = 5000,
        batch_delay: float = 0.05,
        properties_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.properties_interval = properties_interval
        """Property updates are written at most this often (statuses at every batch): a
        gateway's changes within it fold into one row write."""
        self._statuses: dict[str, bool] = {}
        self._properties: dict[str, _PendingProperties] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0
        self.properties_written = 0
        self._batches = BatchWriter(db, "presence-writer")

    def apply_status(self, device_uuid: str, online: bool) -> None:
        """Record a status message; written by ``run`` shortly after (the latest wins)."""
        self._statuses.pop(device_uuid, None)
        self._statuses[device_uuid] = online
        self._pending()

    def replace_properties(self, device_uuid: str, properties: dict[str, Any]) -> None:
        """Record a gateway's whole properties object (its answer to ``GET
        /system/properties``); written shortly after."""
        self._properties[device_uuid] = _PendingProperties(True, dict(properties))
        self._pending()

    def apply_property_event(
        self, device_uuid: str, method: str, resource: str, data: Any
    ) -> PropertyChange | None:
        """``PUT /system/properties/<key>`` or ``/system/properties`` events update the cache."""
        if method not in ("put", "post") or not resource.startswith(PROPERTIES):
            return None
        rest = resource[len(PROPERTIES) :].split("?", 1)[0].strip("/")
        if not rest:
            if not isinstance(data, dict):
                return None
            patch = data
            key = None
        else:
            key = rest.split("/", 1)[0]
            # the gateway's own REST body is {"data": value}; events carry the value itself
            value = data["data"] if isinstance(data, dict) and set(data) == {"data"} else data
            patch = {key: value}
        pending = self._properties.setdefault(device_uuid, _PendingProperties(False, {}))
        pending.values.update(patch)
        self._pending()
        return PropertyChange(device_uuid, key, patch if key is None else patch[key])

    def _pending(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    async def run(self) -> None:
        """Write what is queued in batches until cancelled; a database outage is retried."""
        loop = asyncio.get_running_loop()
        properties_due = 0.0
        if self._statuses or self._properties:  # queued before a start or a restart
            self._wakeup.set()
        while True:
            if self._properties and not self._statuses:
                # only properties wait: until a status comes or they are due
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wakeup.wait(), max(0.0, properties_due - loop.time())
                    )
            else:
                await self._wakeup.wait()
            await asyncio.sleep(self.batch_delay)  # let a batch gather
            self._wakeup.clear()
            statuses = _take(self._statuses, self.batch_size)
            if statuses:
                await self._batches.write(
                    sorted(statuses.items()), self._write_statuses, _describe_status
                )
            if self._properties and (
                loop.time() >= properties_due or len(self._properties) >= self.batch_size
            ):
                properties = _take(self._properties, self.batch_size)
                await self._batches.write(
                    sorted(properties.items()), self._write_properties, _describe_properties
                )
                properties_due = loop.time() + self.properties_interval
            if self._statuses:
                self._wakeup.set()
            elif not self._properties:
                self._idle.set()

    async def _write_statuses(self, batch: Sequence[tuple[str, bool]]) -> None:
        """``(uuid, online)`` pairs in uuid order."""
        rows = [
            (uuid, (ConnectionStatus.ONLINE if online else ConnectionStatus.OFFLINE).value)
            for uuid, online in batch
        ]
        with BATCH_SECONDS.labels("status").time():
            async with self.db.session() as s:
                await DeviceRepo(s).set_statuses(rows, self.clock())
        self.written += len(rows)
        WRITTEN.labels("status").inc(len(rows))

    async def _write_properties(self, batch: Sequence[tuple[str, _PendingProperties]]) -> None:
        """``(uuid, pending)`` pairs in uuid order."""
        with BATCH_SECONDS.labels("properties").time():
            rows = await self._store_properties(batch)
        self.properties_written += len(rows)
        WRITTEN.labels("properties").inc(len(rows))

    async def _store_properties(
        self, batch: Sequence[tuple[str, _PendingProperties]]
    ) -> list[tuple[str, dict[str, Any]]]:
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            patch_only = [u for u, p in batch if not p.whole]
            current = await repo.properties_of(patch_only) if patch_only else {}
            rows: list[tuple[str, dict[str, Any]]] = []
            for uuid, pending in batch:
                if pending.whole:
                    rows.append((uuid, pending.values))
                elif uuid in current:  # an unknown device has nothing to update
                    rows.append((uuid, {**current[uuid], **pending.values}))
            await repo.set_many_properties(rows, self.clock())
        return rows

    async def statuses_of(self, device_uuids: Sequence[str]) -> dict[str, str]:
        """The stored connection status of each of these gateways that exists."""
        async with self.db.session() as s:
            return await DeviceRepo(s).statuses_of(device_uuids)

    async def online_uuids(self) -> list[str]:
        """Gateways the database holds online."""
        async with self.db.session() as s:
            return await DeviceRepo(s).uuids_with_status(ConnectionStatus.ONLINE.value)

    async def drained(self) -> None:
        """Wait until every queued status is written (tests, shutdown)."""
        await self._idle.wait()


def _describe_status(item: tuple[str, bool]) -> str:
    return f"status {'online' if item[1] else 'offline'} of {item[0]}"


def _describe_properties(item: tuple[str, _PendingProperties]) -> str:
    return f"properties of {item[0]}"
