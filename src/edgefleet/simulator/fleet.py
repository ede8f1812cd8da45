"""Many virtual gateways in one asyncio process, for tests, demos and benchmarks.

Each gateway is a real MQTT client with its own TLS-PSK identity. Simulated devices are
registered once and found again by their MAC address, which is derived from the fleet's
prefix and the gateway's index (locally administered: ``02:ef:…``), so a second run reuses
them. The gateways share one HTTP client (a bounded pool) for firmware and import downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

from edgefleet.services.fleet import FleetService, Registration
from edgefleet.simulator.gateway import Behaviour, VirtualGateway, download_client

MODELS = ("UC-8112-LX-CG", "UC-8220-T-LX", "UC-3111-T-US-LX", "MC-1121-KL1-T")

REGIONS = (  # industrial areas, each (latitude, longitude) of its centre, on land
    (24.80, 120.97),  # Hsinchu
    (24.15, 120.67),  # Taichung
    (22.62, 120.30),  # Kaohsiung
    (22.55, 114.06),  # Shenzhen
    (31.23, 121.47),  # Shanghai
    (35.00, 136.90),  # Nagoya
    (34.70, 135.50),  # Osaka
    (35.55, 129.32),  # Ulsan
    (51.45, 7.01),  # Ruhr
    (48.78, 9.18),  # Stuttgart
    (45.46, 9.19),  # Milan
    (52.48, -1.90),  # Birmingham
    (50.08, 14.43),  # Prague
    (42.33, -83.05),  # Detroit
    (29.76, -95.37),  # Houston
    (25.69, -100.32),  # Monterrey
    (-23.55, -46.63),  # São Paulo
    (18.52, 73.86),  # Pune
    (13.08, 80.27),  # Chennai
    (-26.20, 28.05),  # Johannesburg
)
SPREAD = 0.35
"""Degrees around a region's centre a simulated gateway may be (a few tens of km)."""


def position_for(uuid: str) -> dict[str, float]:
    """A plausible GPS position for a simulated gateway: one of ``REGIONS`` with an offset,
    both derived from its uuid, so a gateway keeps its place from run to run."""
    digest = hashlib.sha256(uuid.encode()).digest()
    lat0, lng0 = REGIONS[int.from_bytes(digest[:4], "big") % len(REGIONS)]
    # an offset within a disc (square root of the radius: even over its area)
    radius = SPREAD * math.sqrt(int.from_bytes(digest[4:8], "big") / 2**32)
    angle = 2 * math.pi * int.from_bytes(digest[8:12], "big") / 2**32
    return {
        "lat": round(lat0 + radius * math.sin(angle), 5),
        "lng": round(lng0 + radius * math.cos(angle) / math.cos(math.radians(lat0)), 5),
    }


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
        "gps": position_for(uuid),
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
