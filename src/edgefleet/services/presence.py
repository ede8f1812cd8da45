"""Presence and cached properties of gateways, from what they publish.

Status messages are queued and written in batches (one statement for many gateways), so a
reconnect storm of thousands of gateways costs a few transactions, not thousands. Within a
batch the last status of each gateway wins, which keeps MQTT's per-topic order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.domain.devices import ConnectionStatus
from edgefleet.errors import StorageError

log = logging.getLogger(__name__)

PROPERTIES = "/system/properties"


@dataclass(frozen=True)
class PropertyChange:
    device_uuid: str
    key: str | None
    """The property set, or None when the whole object was replaced."""
    value: Any


class PresenceService:
    def __init__(
        self,
        db: Database,
        clock: Clock = utcnow,
        *,
        batch_size: int = 2000,
        batch_delay: float = 0.05,
    ) -> None:
        self.db = db
        self.clock = clock
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self._queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0

    def apply_status(self, device_uuid: str, online: bool) -> None:
        """Record a status message; written by ``run`` shortly after."""
        self._idle.clear()
        self._queue.put_nowait((device_uuid, online))

    async def run(self) -> None:
        """Write queued statuses in batches until cancelled; a database outage is retried."""
        while True:
            first = await self._queue.get()
            batch = {first[0]: first[1]}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.batch_delay
            while len(batch) < self.batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    uuid, online = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                batch.pop(uuid, None)  # re-insert so the latest status is last
                batch[uuid] = online
            await self._write(batch)
            if self._queue.empty():
                self._idle.set()

    async def _write(self, batch: dict[str, bool]) -> None:
        rows = [
            (uuid, (ConnectionStatus.ONLINE if online else ConnectionStatus.OFFLINE).value)
            for uuid, online in batch.items()
        ]
        delay = 0.5
        while True:
            try:
                async with self.db.session() as s:
                    await DeviceRepo(s).set_statuses(rows, self.clock())
                self.written += len(rows)
                return
            except StorageError:
                log.warning("presence: database unavailable, retrying %d statuses", len(rows))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def online_uuids(self) -> list[str]:
        """Gateways the database holds online."""
        async with self.db.session() as s:
            return await DeviceRepo(s).uuids_with_status(ConnectionStatus.ONLINE.value)

    async def drained(self) -> None:
        """Wait until every queued status is written (tests, shutdown)."""
        await self._idle.wait()

    async def replace_properties(self, device_uuid: str, properties: dict[str, Any]) -> None:
        async with self.db.session() as s:
            await DeviceRepo(s).set_properties(device_uuid, properties, self.clock())

    async def apply_property_event(
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
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            device = await repo.get(device_uuid)
            if device is None:
                return None
            await repo.set_properties(
                device_uuid, {**(device.properties or {}), **patch}, self.clock()
            )
        return PropertyChange(device_uuid, key, patch if key is None else patch[key])
