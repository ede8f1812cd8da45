"""The presence rules (services/presence.py ``PresenceMonitor``) without a broker or a
database: a fake presence store and a fake probe."""

from __future__ import annotations

import asyncio

from edgefleet.services.presence import RECONCILE_IN_FLIGHT, PresenceMonitor


class Store:
    """What the monitor asks of ``PresenceService``: who is believed online; what it sets."""

    def __init__(self, online: list[str]) -> None:
        self.online = online
        self.offline: list[str] = []

    async def drained(self) -> None:
        return None

    async def online_uuids(self) -> list[str]:
        return list(self.online)

    def apply_status(self, device_uuid: str, online: bool) -> None:
        if not online:
            self.offline.append(device_uuid)


async def test_a_reconciliation_probes_a_large_fleet_a_bounded_number_at_a_time() -> None:
    """After a restart with 12,000 gateways believed online and none connected, the probes go
    out at most RECONCILE_IN_FLIGHT at once (all at once, 69,868 of them, burst the broker
    link's queue and lost the link), and every silent gateway ends offline."""
    fleet = [f"gw-{i:05d}" for i in range(12_000)]
    store = Store(fleet)
    in_flight = peak = 0

    async def probe(device_uuid: str, wait: float) -> bool:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)  # silence: no answer within its wait
        in_flight -= 1
        return False

    monitor = PresenceMonitor(
        store,  # type: ignore[arg-type]
        probe,
        grace=0,
        settle_max=0,
        probe_timeout=0.01,
        heal=False,
    )
    monitor.connected()
    await asyncio.wait_for(monitor.reconciled.wait(), 60)
    assert peak == RECONCILE_IN_FLIGHT < len(fleet)
    assert sorted(store.offline) == fleet
