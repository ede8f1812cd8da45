"""Group task fan-out (P3): one task to every gateway of a group, dispatched by the server's
task engine over the broker to simulated gateways, every result stored.

One ``edgefleet serve`` (PostgreSQL, embedded Mosquitto) and several ``edgefleet simulate``
processes on this machine. Two group tasks, created over REST:
- ``GET /system/status``: seconds from the POST until every execution is stored finished,
  and executions per second;
- ``POST /system/reboot``: seconds until every gateway acknowledged, and until every
  execution is SUCCESS (the gateway rebooted and came back online).

EDGEFLEET_BENCH_GATEWAYS (default 10000), EDGEFLEET_BENCH_SIM_PROCS (default 4),
EDGEFLEET_BENCH_CONNECT_RATE (default 1500) size it; EDGEFLEET_BENCH_SERVER_LOG=INFO shows
the server's log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from benchmarks.common import (
    count_status,
    fresh_database,
    report,
    start_server,
    start_simulators,
    wait_for,
    writer_token,
)
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade
from edgefleet.secretbox import SecretBox
from edgefleet.services.fleet import FleetService
from edgefleet.simulator.fleet import ensure_devices

DB = "edgefleet_bench_tasks"


async def _finished(pg: asyncpg.Connection, task_uuid: str, states: tuple[str, ...]) -> int:
    n = await pg.fetchval(
        "select count(*) from executions e join tasks t on t.id = e.task_id "
        "where t.uuid = $1 and e.state = any($2::text[])",
        task_uuid,
        list(states),
    )
    return int(n)


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
        pg = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            db = Database(make_engine(url))
            fleet = FleetService(db, SecretBox(secret.encode()))
            for k in range(procs):
                await ensure_devices(fleet, f"bench{k}", min(per, n - k * per))
            await db.dispose()
            gid = await pg.fetchval(
                "insert into groups (name, description, created_at, updated_at) "
                "values ('bench', '', now(), now()) returning id"
            )
            await pg.execute("update devices set group_id = $1", gid)
            token = await writer_token(url, Path(tmp), secret)
            await asyncio.sleep(2.5)  # the embedded broker notices the new keys

            env = {**os.environ, **server.env, "EDGEFLEET_LOG_LEVEL": "WARNING"}
            env.pop("EDGEFLEET_HTTP__PORT", None)
            sims += await start_simulators(
                env, n, procs, rate, "--reboot-delay", "0.5", "--boot-seconds", "2"
            )
            await wait_for("all online", lambda: count_status(pg, "online"), n)

            async def with_properties() -> int:
                return int(await pg.fetchval("select count(*) from devices where model_name <> ''"))

            await wait_for("properties cached", with_properties, n)
            await asyncio.sleep(2)
            rows = []
            async with httpx.AsyncClient(
                base_url=server.base_url, headers={"mx-api-token": token}, timeout=60
            ) as api:
                for payload in (
                    {"method": "get", "resource": "/system/status"},
                    {"method": "post", "resource": "/system/reboot", "data": {"delay": 0.5}},
                ):
                    t0 = time.monotonic()
                    r = await api.post(
                        "/api/v1/groupTasks", json={"groupId": gid, "payload": payload}
                    )
                    r.raise_for_status()
                    created_s = time.monotonic() - t0
                    task = r.json()["taskUUID"]
                    acked_s = None
                    if payload["resource"] == "/system/reboot":

                        async def acked(task: str = task) -> int:
                            n_ = await pg.fetchval(
                                "select count(*) from executions e join tasks t "
                                "on t.id = e.task_id where t.uuid = $1 and e.acked_at is not null",
                                task,
                            )
                            return int(n_)

                        await wait_for("acknowledged", acked, n, 600)
                        acked_s = time.monotonic() - t0

                    async def done(task: str = task) -> int:
                        return await _finished(pg, task, ("SUCCESS", "FAILURE", "REVOKED"))

                    await wait_for(f"{payload['resource']} finished", done, n, 900)
                    done_s = time.monotonic() - t0
                    success = await _finished(pg, task, ("SUCCESS",))
                    rows.append(
                        {
                            "gateways": n,
                            "request": f"{payload['method']} {payload['resource']}",
                            "post_s": round(created_s, 2),
                            "acknowledged_s": None if acked_s is None else round(acked_s, 1),
                            "all_results_stored_s": round(done_s, 1),
                            "executions_per_s": round(n / done_s, 1),
                            "success": success,
                        }
                    )
                    print(rows[-1], file=sys.stderr)

                    async def closed(task: str = task) -> int:
                        state = await pg.fetchval("select state from tasks where uuid = $1", task)
                        return int(state not in ("PENDING", "RUNNING", "PAUSED"))

                    await wait_for("task closed", closed, 1)
        finally:
            for s in sims:
                if s.returncode is None:
                    s.kill()
            await pg.close()
            server.stop()
    report("group_task_fanout", rows, {"machine": os.uname().nodename})


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main())
