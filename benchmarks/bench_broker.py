"""Broker capacity with presence tracked (P1), the reconnect storm after a broker restart
(P2), and the server's memory per online gateway (P8).

One ``edgefleet serve`` (PostgreSQL, embedded Mosquitto) and several ``edgefleet simulate``
processes on this machine, every gateway a real TLS-PSK MQTT client. Figures:
- time until the server's database shows every gateway online, and the rate;
- the server's and the broker's RSS at that count, and KiB per online gateway;
- after ``kill -9`` of the broker (its supervisor restarts it): seconds from the kill until
  every simulated gateway is connected again, and until the server has confirmed every one
  (online, properties fetched after the kill);
- after ``kill -9`` of the simulators (the kernel closes their sockets; the broker publishes
  the wills): time until the database shows them all offline.

EDGEFLEET_BENCH_GATEWAYS (default 10000), EDGEFLEET_BENCH_SIM_PROCS (default 4) and
EDGEFLEET_BENCH_CONNECT_RATE (new connections per second over all simulators, default 1500)
size it;
EDGEFLEET_BENCH_SERVER_LOG=INFO shows the server's log on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.common import (
    broker_of,
    count_status,
    cpu_seconds,
    fresh_database,
    report,
    rss_kib,
    start_server,
    start_simulators,
    wait_for,
)
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade
from edgefleet.secretbox import SecretBox
from edgefleet.services.fleet import FleetService
from edgefleet.simulator.fleet import ensure_devices

DB = "edgefleet_bench_broker"
STEP_TIMEOUT = 240.0


async def _follow(proc: asyncio.subprocess.Process, latest: dict[int, dict[str, Any]]) -> None:
    """Keep the newest stats line a simulator printed."""
    assert proc.stdout is not None
    async for line in proc.stdout:
        try:
            latest[proc.pid] = json.loads(line)
        except ValueError:
            continue


async def main() -> None:
    n = int(os.environ.get("EDGEFLEET_BENCH_GATEWAYS", "10000"))
    procs = int(os.environ.get("EDGEFLEET_BENCH_SIM_PROCS", "4"))
    rate = float(os.environ.get("EDGEFLEET_BENCH_CONNECT_RATE", "1500"))
    per = -(-n // procs)
    url = await fresh_database(DB)
    await asyncio.to_thread(upgrade, url)
    secret = "bench-" + os.urandom(16).hex()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(
            url,
            Path(tmp),
            {
                "EDGEFLEET_SECRET_KEY": secret,
                "EDGEFLEET_LOG_LEVEL": os.environ.get("EDGEFLEET_BENCH_SERVER_LOG", "WARNING"),
            },
        )
        sims: list[asyncio.subprocess.Process] = []
        latest: dict[int, dict[str, Any]] = {}
        readers: list[asyncio.Task[None]] = []
        pg = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            broker_pid = broker_of(server)
            idle_server, idle_broker = rss_kib(server.proc.pid), rss_kib(broker_pid)
            db = Database(make_engine(url))
            fleet = FleetService(db, SecretBox(secret.encode()))
            t0 = time.monotonic()
            for k in range(procs):
                await ensure_devices(fleet, f"bench{k}", min(per, n - k * per))
            register_s = time.monotonic() - t0
            await db.dispose()
            await asyncio.sleep(2.5)  # the embedded broker notices the new keys (polls 2 s)

            env = {**os.environ, **server.env, "EDGEFLEET_LOG_LEVEL": "WARNING"}
            env.pop("EDGEFLEET_HTTP__PORT", None)
            cpu0 = server.cpu_seconds()
            t0 = time.monotonic()
            sims += await start_simulators(
                env, n, procs, rate, "--stats-interval", "0.5", stdout=asyncio.subprocess.PIPE
            )

            readers = [asyncio.create_task(_follow(p, latest)) for p in sims]

            online_s = await wait_for("all online", lambda: count_status(pg, "online"), n)

            async def with_properties() -> int:
                return int(await pg.fetchval("select count(*) from devices where model_name <> ''"))

            await wait_for("properties cached", with_properties, n)
            properties_s = time.monotonic() - t0
            await asyncio.sleep(2)  # the last writes settle before memory is read
            server_cpu = server.cpu_seconds() - cpu0
            server_rss, broker_rss = rss_kib(server.proc.pid), rss_kib(broker_pid)
            sim_rss = sum(rss_kib(s.pid) for s in sims)

            # P2: the broker dies; its supervisor restarts it; every gateway reconnects
            sessions_before = sum(x.get("sessions", 0) for x in latest.values())
            kill_at = datetime.now(UTC).replace(tzinfo=None)
            killed = time.monotonic()
            storm_cpu0 = server.cpu_seconds()
            os.kill(broker_pid, signal.SIGKILL)

            async def reconnected() -> int:
                # sessions opened since the kill (no gateway flaps here: one each)
                return sum(x.get("sessions", 0) for x in latest.values()) - sessions_before

            async def confirmed() -> int:
                # every gateway said "1" again or answered the server's probe: either way
                # the server asked for its properties after the restart
                fresh = await pg.fetchval(
                    "select count(*) from devices where connection_status = 'online' "
                    "and properties_updated_at > $1",
                    kill_at,
                )
                return int(fresh)

            await wait_for("reconnect storm", reconnected, n)
            reconnect_s = time.monotonic() - killed
            await wait_for("server confirmed", confirmed, n)
            confirmed_s = time.monotonic() - killed
            # CPU the storm cost the server, and the new broker since it started: with the
            # simulators on other machines, these bound how fast a storm can go
            storm_server_cpu = server.cpu_seconds() - storm_cpu0
            storm_broker_cpu = cpu_seconds(broker_of(server))
            broker_pid = broker_of(server)
            online_after_storm = await count_status(pg, "online")

            # wills: the simulators die at once
            for s in sims:
                s.kill()
            for s in sims:
                await s.wait()

            offline_s = await wait_for("all offline", lambda: count_status(pg, "offline"), n)
        finally:
            for s in sims:
                if s.returncode is None:
                    s.kill()
            for r in readers:
                r.cancel()
            await pg.close()
            server.stop()
    rows = [
        {
            "gateways": n,
            "sim_processes": procs,
            "connect_rate_asked": rate,
            "register_s": round(register_s, 1),
            "all_online_s": round(online_s, 1),
            "connects_per_s": round(n / online_s, 1),
            "all_properties_s": round(properties_s, 1),
            "server_rss_mib": round(server_rss / 1024, 1),
            "server_kib_per_gateway": round((server_rss - idle_server) / n, 2),
            "server_cpu_ms_per_connect": round(server_cpu / n * 1000, 3),
            "broker_rss_mib": round(broker_rss / 1024, 1),
            "broker_kib_per_gateway": round((broker_rss - idle_broker) / n, 2),
            "simulator_kib_per_gateway": round(sim_rss / n, 1),
            "storm_reconnected_s": round(reconnect_s, 1),  # from the kill
            "storm_server_confirmed_s": round(confirmed_s, 1),  # from the kill
            "storm_server_cpu_ms_per_gateway": round(storm_server_cpu / n * 1000, 3),
            "storm_broker_cpu_ms_per_gateway": round(storm_broker_cpu / n * 1000, 3),
            "online_after_storm": online_after_storm,
            "wills_all_offline_s": round(offline_s, 1),
        }
    ]
    report(
        "broker_capacity",
        rows,
        {"machine": os.uname().nodename},
    )


if __name__ == "__main__":
    # a SIGTERM (timeout, CI) unwinds like Ctrl-C, so the server and simulators are stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main())
