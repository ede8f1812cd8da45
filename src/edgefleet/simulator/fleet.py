"""Many virtual gateways in one asyncio process, for tests, demos and benchmarks.

Each gateway is a real MQTT client with its own TLS-PSK identity. Simulated devices are
registered once and found again by their MAC address, which is derived from the fleet's
prefix and the gateway's index (locally administered: ``02:ef:…``), so a second run reuses
them. The gateways share one HTTP client (a bounded pool) for firmware and import downloads.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

from edgefleet.services.fleet import FleetService, Registration
from edgefleet.simulator.gateway import Behaviour, VirtualGateway, download_client

MODELS = ("UC-8112-LX-CG", "UC-8220-T-LX", "UC-3111-T-US-LX", "MC-1121-KL1-T")


def simulated_mac(prefix: str, index: int) -> str:
    if not 0 <= index < 1 << 24:
        raise ValueError("a simulated fleet holds at most 16,777,216 gateways")
    return f"02ef{zlib.crc32(prefix.encode()) & 0xFF:02x}{index:06x}"


async def ensure_devices(fleet: FleetService, prefix: str, n: int) -> list[tuple[str, str]]:
    """``(uuid, psk)`` of gateways ``prefix-0 … prefix-(n-1)``, registering those missing."""
    macs = [simulated_mac(prefix, i) for i in range(n)]
    known = await fleet.credentials_by_mac(macs)
    missing = [
        Registration(
            display_name=f"{prefix}-{i}",
            mac=mac,
            serial_number=f"SIM{i:08d}",
            description="simulated gateway",
            tags=("simulated",),
        )
        for i, mac in enumerate(macs)
        if mac not in known
    ]
    for start in range(0, len(missing), 1000):
        for view, psk in await fleet.register_many(missing[start : start + 1000]):
            known[view.device.mac_key] = (view.device.uuid, psk)
    return [known[mac] for mac in macs]


def properties_for(prefix: str, index: int, uuid: str) -> dict[str, Any]:
    return {
        "modelName": MODELS[index % len(MODELS)],
        "serialNumber": f"SIM{index:08d}",
        "hostName": f"{prefix}-{index}",
        "macAddress": simulated_mac(prefix, index),
        "softwareVersion": "1.2.0",
        "defaultRoute": "eth0",
        "deviceUUID": uuid,
    }


@dataclass
class SimulatedFleet:
    credentials: list[tuple[str, str]]
    host: str
    port: int
    prefix: str = "sim"
    behaviour: Behaviour = field(default_factory=Behaviour)
    connect_rate: float = 300.0
    """New connections started per second (TLS handshakes cost the broker and this process)."""
    keepalive: int = 60
    seed: int | None = None

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)  # noqa: S311 - simulation, not security
        self.gateways = [
            VirtualGateway(
                uuid,
                psk,
                self.host,
                self.port,
                properties_for(self.prefix, i, uuid),
                keepalive=self.keepalive,
                behaviour=self.behaviour,
                rng=random.Random(rng.random()),  # noqa: S311
            )
            for i, (uuid, psk) in enumerate(self.credentials)
        ]
        self.stop = asyncio.Event()

    async def run(self) -> None:
        """Start every gateway (ramped at ``connect_rate``) and keep them until ``stop``."""
        async with download_client() as http:
            for gw in self.gateways:
                gw.http = http
            try:
                await self._run()
            finally:
                for gw in self.gateways:
                    gw.http = None

    async def _run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            for i, gw in enumerate(self.gateways):
                if self.stop.is_set():
                    break
                tasks.append(asyncio.create_task(gw.serve(self.stop), name=f"gw:{gw.uuid}"))
                if self.connect_rate and i % 10 == 9:
                    await asyncio.sleep(10 / self.connect_rate)
            await self.stop.wait()
        finally:
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, int]:
        return {
            "gateways": len(self.gateways),
            "connected": sum(g.connected.is_set() for g in self.gateways),
            "sessions": sum(g.sessions for g in self.gateways),
            "requests": sum(g.requests for g in self.gateways),
            "events": sum(g.events for g in self.gateways),
            "connect_failures": sum(g.failures for g in self.gateways),
            "reboots": sum(g.reboots for g in self.gateways),
            "upgrades": sum(g.upgrades for g in self.gateways),
            "failed_upgrades": sum(g.failed_upgrades for g in self.gateways),
            "cancelled": sum(g.cancelled for g in self.gateways),
            "jobs": sum(len(g.jobs) for g in self.gateways),
        }
