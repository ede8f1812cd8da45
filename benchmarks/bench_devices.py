"""GET /api/v1/devices at 100,000 devices on PostgreSQL: paged, filtered, fleet queries, and
sorted as the console's gateway list sorts (by any column, both ways, deep pages).

Seeds the devices with COPY, starts a real server process (one uvicorn worker), and
measures sequential latency (p50/p95/p99) and closed-loop throughput with the server's
CPU time per request. Environment: EDGEFLEET_BENCH_PG (admin DSN), BENCH_DEVICES.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import time
import uuid as uuidlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from benchmarks.common import (
    api_token,
    fresh_database,
    latency,
    report,
    start_server,
    throughput,
)
from edgefleet.db.migrate import upgrade_async
from edgefleet.domain.auth import Scope
from edgefleet.domain.devices import indexed_properties
from edgefleet.secretbox import SecretBox

DEVICES = int(os.environ.get("BENCH_DEVICES", "100000"))
MODELS = ["UC-8112-LX-CG", "UC-8112A-ME-T-LX", "UC-2112-LX", "UC-3111-T-US-LX", "UC-8220-T-LX"]
VERSIONS = ["version 2.3.2 Build 18102617", "2.4.0", "2.4.1", "2.5.0", "2.10.3", "1.9.8"]
STATUSES = ["online"] * 7 + ["offline"] * 2 + ["created"]
QUERY = 'model = "UC-8112-LX-CG" and softwareVersion < "2.4" and tag:line-3'
SECRET = "bench"
"""The server key the seeded PSKs are sealed with: the server is started with it (it opens
every key at start, and refuses to start when one does not open)."""


GROUP_IDS = list(range(1, 41))
"""40 groups, named out of id order; 90 % of the seeded gateways in one of them."""


async def seed(url: str, n: int, statuses: list[str] = STATUSES) -> float:
    """Insert ``n`` devices by COPY (connection states drawn from ``statuses``)."""
    rng = random.Random(42)
    box = SecretBox(SECRET.encode())
    sealed = box.seal("00" * 32)  # one sealed PSK for all rows: sealing 100k would dominate
    now = datetime.now(UTC).replace(tzinfo=None)
    devices, tags = [], []
    for i in range(n):
        uuid = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
        props = {
            "aliasName": f"gw-{i}",
            "modelName": rng.choice(MODELS),
            "softwareVersion": rng.choice(VERSIONS),
            "defaultRoute": rng.choice(["eth0", "wlan0", "wwan0"]),
            "gps": {"lat": rng.uniform(-60, 60), "lng": rng.uniform(-180, 180)},
        }
        ix = indexed_properties(props)
        created = now - timedelta(seconds=n - i)
        devices.append(
            (
                uuid,
                f"Gateway {i:06d}",
                f"0090E8{i:06X}",
                f"0090e8{i:06x}",
                f"MOXA{i:08d}",
                "",
                "",
                sealed,
                rng.choice(statuses),
                created,
                json.dumps(props),
                created,
                ix["model_name"],
                ix["software_version"],
                ix["software_version_key"],
                ix["default_route"],
                ix["alias_name"],
                "{}",
                rng.choice(GROUP_IDS) if rng.random() < 0.9 else None,
                created,
                created,
            )
        )
        if i % 10 == 0:
            tags.append((uuid, f"line-{i % 7}"))
    cols = [
        "uuid",
        "display_name",
        "mac",
        "mac_key",
        "serial_number",
        "description",
        "icc_id",
        "psk_encrypted",
        "connection_status",
        "connection_changed_at",
        "properties",
        "properties_updated_at",
        "model_name",
        "software_version",
        "software_version_key",
        "default_route",
        "alias_name",
        "attributes",
        "group_id",
        "created_at",
        "updated_at",
    ]
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.set_type_codec(
            "json", encoder=str.encode, decoder=json.loads, schema="pg_catalog", format="binary"
        )
        t0 = time.perf_counter()
        await conn.copy_records_to_table(
            "groups",
            records=[(g, f"line-{(g * 17) % len(GROUP_IDS):02d}", "", now, now) for g in GROUP_IDS],
            columns=["id", "name", "description", "created_at", "updated_at"],
        )
        await conn.execute(f"SELECT setval('groups_id_seq', {len(GROUP_IDS)})")
        await conn.copy_records_to_table("devices", records=devices, columns=cols)
        await conn.copy_records_to_table(
            "device_tags", records=tags, columns=["device_uuid", "tag"]
        )
        elapsed = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return elapsed


async def main() -> None:
    url = await fresh_database("edgefleet_bench")
    await upgrade_async(url)
    seconds = await seed(url, DEVICES)
    print(f"seeded {DEVICES} devices by COPY in {seconds:.2f} s ({DEVICES / seconds:,.0f} rows/s)")
    with tempfile.TemporaryDirectory() as tmp:
        token = await api_token(url, Path(tmp), SECRET, Scope.READ)
        server = start_server(url, Path(tmp), {"EDGEFLEET_SECRET_KEY": SECRET})
        try:
            h = {"mx-api-token": token}
            rng = random.Random(1)
            legacy = json.dumps({"keys": {"displayName": {"filter": "Gateway 0042"}}})
            scenarios = {
                "page (limit 20, offset<2000)": lambda c, i: c.get(
                    "/api/v1/devices",
                    headers=h,
                    params={"offset": rng.randrange(0, 2000), "limit": 20},
                ),
                "status filter page": lambda c, i: c.get(
                    "/api/v1/devices",
                    headers=h,
                    params={"status": "offline", "offset": rng.randrange(0, 500)},
                ),
                "exact mac": lambda c, i: c.get(
                    "/api/v1/devices",
                    headers=h,
                    params={"mac": f"0090e8{rng.randrange(DEVICES):06x}"},
                ),
                "legacy partial query": lambda c, i: c.get(
                    "/api/v1/devices", headers=h, params={"query": legacy}
                ),
                "fleet query": lambda c, i: c.get(
                    "/api/v1/devices", headers=h, params={"q": QUERY}
                ),
                # the console's list: any column, both ways, any page (an index each)
                "sorted by name, deep page": lambda c, i: c.get(
                    "/api/v1/devices",
                    headers=h,
                    params={"sort": "-name", "offset": rng.randrange(0, 20000), "limit": 50},
                ),
                "sorted by firmware": lambda c, i: c.get(
                    "/api/v1/devices",
                    headers=h,
                    params={"sort": rng.choice(["firmware", "-firmware"]), "limit": 50},
                ),
                "sorted by group, deep page": lambda c, i: c.get(
                    "/api/v1/devices",
                    headers=h,
                    params={
                        "sort": rng.choice(["group", "-group"]),
                        "offset": rng.randrange(0, 20000),
                        "limit": 50,
                    },
                ),
                "filtered and sorted by state": lambda c, i: c.get(
                    "/api/v1/devices",
                    headers=h,
                    params={"q": 'model = "UC-2112-LX"', "sort": "status", "limit": 50},
                ),
            }
            rows = []
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                for name, make in scenarios.items():
                    for i in range(20):  # warm-up
                        await make(client, i)
                    lat = await latency(client, lambda i, m=make: m(client, i), 300)
                    rows.append({"scenario": name, **lat})
            for name in ("page (limit 20, offset<2000)", "fleet query"):
                tp = await throughput(server, scenarios[name], concurrency=16, seconds=10)
                next(r for r in rows if r["scenario"] == name).update(tp)
        finally:
            server.stop()
    report(
        "devices_api",
        rows,
        {
            "devices": DEVICES,
            "database": "postgresql",
            "workers": 1,
            "fleet_query": QUERY,
            "copy_rows_per_s": round(DEVICES / seconds),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
