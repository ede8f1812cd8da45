"""A server killed (SIGKILL) in the middle of a rollout and started again finishes it: no
execution lost, none run twice. A real ``edgefleet serve`` process on PostgreSQL with its
embedded Mosquitto, and simulated gateways that answer slowly."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from pathlib import Path

import httpx
import pytest

from edgefleet.bootstrap import build
from edgefleet.db.migrate import upgrade_async
from edgefleet.domain.tasks import TaskKind
from edgefleet.services.tasks import TaskSpec, TaskView
from edgefleet.settings import Settings
from edgefleet.simulator.fleet import SimulatedFleet, ensure_devices
from edgefleet.simulator.gateway import Behaviour
from tests.brokers import free_port
from tests.gateways import count, eventually
from tests.integration.test_serve import _env
from tests.pgserver import PostgresServer

N = 30


async def _serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "edgefleet.cli.main", "serve"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{env['EDGEFLEET_HTTP__PORT']}/readyz"

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(url, timeout=1)).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ready, 60)
    return proc


@pytest.mark.postgres
async def test_a_server_killed_mid_rollout_finishes_it_after_a_restart(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    name = f"edgefleet_kill_{secrets.token_hex(3)}"
    await pg_server.create_database(name)
    url = pg_server.url(name)
    await upgrade_async(url)
    secret = secrets.token_urlsafe(32)
    env = _env(tmp_path, free_port())
    env.update({"EDGEFLEET_DATABASE_URL": url, "EDGEFLEET_SECRET_KEY": secret})
    # this test's own handle on the same database: registers, creates, watches
    c = build(Settings(data_dir=tmp_path / "data", database_url=url, secret_key=secret))
    creds = await ensure_devices(c.fleet, "kill", N)
    server = await _serve(env)
    fleet = SimulatedFleet(
        creds,
        "127.0.0.1",
        int(env["EDGEFLEET_MQTT__GATEWAY_PORT"]),
        prefix="kill",
        behaviour=Behaviour(latency=0.5),  # answers take a while: some are in flight
        connect_rate=200,
    )
    running = asyncio.create_task(fleet.run())
    try:

        async def online() -> bool:
            return await count(c, "online") == N

        await eventually(online, 60)
        view = await c.tasks.create(
            TaskSpec(
                kind=TaskKind.ROLLOUT,
                method="get",
                resource="/system/status",
                devices=[u for u, _ in creds],
                waves=[5] * 6,
            )
        )
        uuid = view.task.uuid
        latest: list[TaskView] = []

        async def mid_way() -> bool:
            v = await c.tasks.get(uuid)
            latest[:] = [v]
            states = v.by_state()
            return states.get("SUCCESS", 0) >= 10 and states.get("RUNNING", 0) > 0

        await eventually(mid_way, 60)
        server.send_signal(signal.SIGKILL)
        await server.wait()
        at_kill = latest[0].by_state()
        assert at_kill.get("SUCCESS", 0) < N

        env["EDGEFLEET_HTTP__PORT"] = str(free_port())  # the same broker ports as before
        server = await _serve(env)

        async def finished() -> bool:
            v = await c.tasks.get(uuid)
            latest[:] = [v]
            return v.task.state not in ("PENDING", "RUNNING")

        await eventually(finished, 90)
        _, failed = await c.tasks.executions(uuid, states=["FAILURE"])
        assert latest[0].task.state == "SUCCESS", [(e.detail, e.attempts, e.code) for e in failed]
        assert latest[0].by_state() == {"SUCCESS": N}
        # each gateway ran the request once, though some answers were lost with the server
        assert [g.executed[("get", "/system/status")] for g in fleet.gateways] == [1] * N
    finally:
        fleet.stop.set()
        await asyncio.gather(running, return_exceptions=True)
        if server.returncode is None:
            server.terminate()
            await server.wait()
        await c.close()
        await pg_server.drop_database(name)
