"""The broker tier of independent nodes (issue 20): server CPU per connect and per event with
one and with two server instances, and the failover of a node.

The topology of tests/integration/test_broker_partition.py at benchmark size, all on this
machine: PostgreSQL, three Mosquitto nodes (``edgefleet.brokers.mosquitto``'s configuration,
every gateway's key loaded at start), nginx's stream module as the TCP load balancer in
front of the nodes' gateway listeners, ``edgefleet serve`` instances that share the nodes by
lease (``EDGEFLEET_MQTT__EMBEDDED=false``, ``EDGEFLEET_MQTT__NODES``), and several
``edgefleet simulate`` processes whose TLS-PSK gateways connect through the load balancer and
publish a property event every ``EDGEFLEET_BENCH_TIER_EVENT_INTERVAL`` seconds (mean).

Two rounds in one run, the same gateways, the same nodes:
1. ONE instance holds every lease; the gateways connect; then an event window;
2. a second instance joins and takes its share of the leases (2 + 1); the gateways (all
   offline again after round 1) connect once more; then an event window.
Each round: the nodes' RSS per gateway (less their RSS before any connected); server CPU
(``/proc/<pid>/stat`` utime + stime, summed over the instances) per connect — from the
simulators' start until every gateway is online with its properties fetched since, less that
time's events at the round's figure per event — and per event (stored events over the
window); both raw and less the instances' idle CPU (measured for 10 s before the round).
Then ``kill -9`` of the node holding the most gateways: seconds until every gateway is online
on a survivor with its properties fetched since the kill. Also: the gateways per node
(``devices.broker_node``), the worst ``edgefleet_loop_lag_seconds`` of any instance (scraped
every 5 s), and the machine's load average.

EDGEFLEET_BENCH_TIER_GATEWAYS (default 50000), EDGEFLEET_BENCH_TIER_NODES (default 3),
EDGEFLEET_BENCH_SIM_PROCS (default: 2, or more so that each holds fewer gateways than the
open-file limit of a process),
EDGEFLEET_BENCH_CONNECT_RATE (connections per second over all simulators, default 1000),
EDGEFLEET_BENCH_TIER_EVENT_INTERVAL (default 20) and EDGEFLEET_BENCH_TIER_WINDOW (seconds of
the event window, default 20) size it; EDGEFLEET_BENCH_TIER_REPEAT=k runs the two-instance
round k more times (the ratios are of the last). Needs mosquitto and nginx with its stream module
(scripts/setup-system.sh test). Open files (20,000 per process here): nginx runs as many
workers as its two sockets per gateway need; a node holds a socket per gateway, and after the
kill the survivors hold all of them — 50,000 over 3 nodes is 25,000 per survivor, over this
machine's limit: there, run 4 nodes (16,667 per survivor) or raise the limit.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import (
    PG_ADMIN,
    cpu_seconds,
    free_port,
    fresh_database,
    report,
    rss_kib,
    start_simulators,
    wait_for,
)
from edgefleet.brokers import mosquitto
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade
from edgefleet.processes import die_with_parent
from edgefleet.secretbox import SecretBox
from edgefleet.services.fleet import FleetService
from edgefleet.settings import MQTTSettings
from edgefleet.simulator.fleet import ensure_devices

DB = "edgefleet_bench_tier"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
FILES = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
"""Open files a process may have here (the hard limit: this machine's is 20,000)."""
STEP_TIMEOUT = 600.0
IDLE_SECONDS = 10.0
LAG_SCRAPE_SECONDS = 5.0
"""The lag gauge holds the worst of its last 10 s: a scrape every 5 s sees every stall, and
costs the instances little (a scrape is CPU in each, counted in the figures)."""


@dataclass
class Node:
    name: str
    mqtt: MQTTSettings
    files: mosquitto.MosquittoFiles
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Instance:
    name: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    worst_lag: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def rss_kib(self) -> int:
        assert self.proc is not None
        return rss_kib(self.proc.pid)


@dataclass
class Lag:
    """The worst ``edgefleet_loop_lag_seconds`` of each running instance, scraped every
    ``LAG_SCRAPE_SECONDS``."""

    instances: list[Instance]
    http: httpx.AsyncClient
    worst: dict[str, float] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            for inst in self.instances:
                if inst.proc is None or inst.proc.poll() is not None:
                    continue
                try:
                    text = (await self.http.get(inst.url + "/metrics/", timeout=5)).text
                except httpx.HTTPError:
                    continue
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "edgefleet_loop_lag_seconds":
                            inst.worst_lag = max(inst.worst_lag, sample.value)
            await asyncio.sleep(LAG_SCRAPE_SECONDS)


def _binaries() -> tuple[str, str]:
    """mosquitto and nginx, or a RuntimeError saying how to get them."""
    broker = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(broker).exists():
        raise RuntimeError("mosquitto is missing: scripts/setup-system.sh installs it")
    if not Path(nginx).exists() or not STREAM_MODULE.exists():
        raise RuntimeError(
            "nginx with its stream module is missing: scripts/setup-system.sh test installs "
            "nginx and libnginx-mod-stream"
        )
    return broker, nginx


def _spawn(
    cmd: list[str], env: dict[str, str] | None = None, sig: int = signal.SIGKILL
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=None,  # warnings go to the benchmark's stderr
        preexec_fn=lambda: die_with_parent(sig),
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _nginx_conf(prefix: Path, nodes: list[Node], port: int, gateways: int) -> str:
    connections = 2 * gateways + 1024  # each proxied gateway: one socket each side
    # a worker holds what its open files allow; more workers share the listener (reuseport)
    per_worker = min(connections, FILES - 1024)
    workers = -(-connections // per_worker)
    down = "max_fails=1 fail_timeout=30s"  # a dead node is left alone for 30 s
    upstream = "".join(f"server 127.0.0.1:{x.mqtt.gateway_port} {down}; " for x in nodes)
    return f"""
load_module {STREAM_MODULE};
worker_processes {workers};
worker_rlimit_nofile {per_worker + 1024};
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections {per_worker}; }}
stream {{
  upstream gateways {{ {upstream} }}
  proxy_connect_timeout 1s;
  server {{ listen 127.0.0.1:{port} backlog=4096 reuseport; proxy_pass gateways; }}
}}
"""


async def _until(what: str, check: Callable[[], Awaitable[bool]], limit: float = 90) -> None:
    t0 = time.monotonic()
    while not await check():
        if time.monotonic() - t0 > limit:
            raise RuntimeError(f"{what}: not within {limit} s")
        await asyncio.sleep(0.2)


def _progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr)


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def main() -> None:
    n = int(os.environ.get("EDGEFLEET_BENCH_TIER_GATEWAYS", "50000"))
    nodes = int(os.environ.get("EDGEFLEET_BENCH_TIER_NODES", "3"))
    # a simulator holds a socket per gateway: within the open files of a process
    sims = os.environ.get("EDGEFLEET_BENCH_SIM_PROCS")
    sim_procs = int(sims) if sims else max(2, -(-n // (FILES - 1024)))
    rate = float(os.environ.get("EDGEFLEET_BENCH_CONNECT_RATE", "1000"))
    interval = float(os.environ.get("EDGEFLEET_BENCH_TIER_EVENT_INTERVAL", "20"))
    window = float(os.environ.get("EDGEFLEET_BENCH_TIER_WINDOW", "20"))
    repeat = int(os.environ.get("EDGEFLEET_BENCH_TIER_REPEAT", "0"))
    binaries = _binaries()  # before anything starts: a missing one is said at once
    url = await fresh_database(DB)
    dirs: list[Path] = []
    try:
        await asyncio.to_thread(upgrade, url)
        with tempfile.TemporaryDirectory() as tmp_name:
            rows, meta = await _run(
                Path(tmp_name),
                dirs,
                url,
                n,
                nodes,
                sim_procs,
                rate,
                interval,
                window,
                repeat,
                binaries,
            )
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        await _drop_database(DB)
    report(
        "broker_tier",
        rows,
        {
            "machine": os.uname().nodename,
            "cpus": os.cpu_count(),
            "gateways": n,
            "nodes": nodes,
            "sim_processes": sim_procs,
            "connect_rate_asked": rate,
            "event_interval_s": interval,
            "event_window_s": window,
            **meta,
        },
    )


async def _run(
    tmp: Path,
    dirs: list[Path],
    url: str,
    n: int,
    node_count: int,
    sim_procs: int,
    rate: float,
    interval: float,
    window: float,
    repeat: int,
    binaries: tuple[str, str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    broker_bin, nginx_bin = binaries
    secret = "bench-" + os.urandom(16).hex()
    password = "bench-" + os.urandom(16).hex()
    per = -(-n // sim_procs)
    procs: list[subprocess.Popen[bytes]] = []
    sims: list[asyncio.subprocess.Process] = []
    pg = await asyncpg.connect(url.replace("+asyncpg", ""))
    http = httpx.AsyncClient(timeout=10)
    lag_task: asyncio.Task[None] | None = None
    try:
        # registered before the nodes start: each node loads every key at once
        db = Database(make_engine(url))
        fleet = FleetService(db, SecretBox(secret.encode()))
        t0 = time.monotonic()
        psks: list[tuple[str, str]] = []
        for k in range(sim_procs):
            psks += await ensure_devices(fleet, f"bench{k}", min(per, n - k * per))
        register_s = time.monotonic() - t0
        await db.dispose()
        _progress(f"{n} gateways registered in {register_s:.1f} s")

        nodes: list[Node] = []
        for name in (f"n{i}" for i in range(1, node_count + 1)):
            mqtt = MQTTSettings(
                gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port()
            )
            # not under tmp: a broker started as root drops to the mosquitto user
            directory = Path(tempfile.mkdtemp(prefix=f"edgefleet-bench-{name}-"))
            dirs.append(directory)
            files = mosquitto.MosquittoFiles(directory)
            await asyncio.to_thread(mosquitto.write_all, files, mqtt, password, psks)
            node = Node(name, mqtt, files)
            node.proc = _spawn([broker_bin, "-c", str(files.conf)])
            procs.append(node.proc)
            nodes.append(node)
        lb_port = free_port()
        await _until("the nodes listen", lambda: _listening(nodes), 30)
        idle_rss = [rss_kib(x.proc.pid) for x in nodes if x.proc is not None]
        prefix = tmp / "nginx"
        prefix.mkdir()
        prefix.chmod(0o777)
        (prefix / "nginx.conf").write_text(_nginx_conf(prefix, nodes, lb_port, n))
        procs.append(
            _spawn(
                [
                    *(nginx_bin, "-p", str(prefix)),
                    *("-c", str(prefix / "nginx.conf"), "-g", "daemon off;"),
                ],
                sig=signal.SIGTERM,
            )
        )

        base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        base |= {
            "EDGEFLEET_DATABASE_URL": url,
            "EDGEFLEET_SECRET_KEY": secret,
            "EDGEFLEET_STORAGE__URL": f"file://{tmp / 'files'}",
            "EDGEFLEET_MQTT__EMBEDDED": "false",
            "EDGEFLEET_MQTT__SERVER_PASSWORD": password,
            "EDGEFLEET_MQTT__NODES": ",".join(
                f"{x.name}=127.0.0.1:{x.mqtt.server_port}" for x in nodes
            ),
            "EDGEFLEET_MQTT__GATEWAY_HOST": "127.0.0.1",
            "EDGEFLEET_MQTT__GATEWAY_PORT": str(lb_port),
            "EDGEFLEET_LOG_LEVEL": os.environ.get("EDGEFLEET_BENCH_SERVER_LOG", "WARNING"),
        }
        instances = []
        for name in ("a", "b"):
            port = free_port()
            env = base | {
                "EDGEFLEET_DATA_DIR": str(tmp / name),
                "EDGEFLEET_HTTP__PORT": str(port),
                "EDGEFLEET_MQTT__CLIENT_ID": f"edgefleet-{name}",
            }
            instances.append(Instance(name, port, env))
        lag = Lag(instances, http)

        async def ready(inst: Instance) -> bool:
            assert inst.proc is not None
            if inst.proc.poll() is not None:
                raise RuntimeError(f"instance {inst.name} exited")
            try:
                return (await http.get(inst.url + "/readyz", timeout=2)).status_code == 200
            except httpx.TransportError:
                return False

        async def held() -> dict[str, int]:
            rows = await pg.fetch("select holder, count(*) from broker_leases group by holder")
            return {str(r[0]): int(r[1]) for r in rows}

        async def start(inst: Instance) -> None:
            inst.proc = _spawn(
                [sys.executable, "-m", "edgefleet.cli.main", "serve", "--no-migrate"],
                inst.env,
                sig=signal.SIGTERM,
            )
            procs.append(inst.proc)
            await _until(f"instance {inst.name} ready", lambda: ready(inst))

        a, b = instances
        await start(a)
        await _until("instance a holds every lease", _eq(held, {"edgefleet-a": node_count}))
        lag_task = asyncio.create_task(lag.run(), name="bench:loop-lag")
        sim_args = ("--host", "127.0.0.1", "--port", str(lb_port))
        sim_args += ("--event-interval", str(interval))

        async def round_(running: list[Instance]) -> dict[str, Any]:
            """One round: idle CPU, connect, event window; the simulators stay connected."""
            nonlocal sims
            cpu0 = sum(i.cpu() for i in running)
            await asyncio.sleep(IDLE_SECONDS)
            idle_per_s = (sum(i.cpu() for i in running) - cpu0) / IDLE_SECONDS
            events0 = await _events(pg)
            since = datetime.now(UTC).replace(tzinfo=None)
            each0 = [i.cpu() for i in running]
            cpu0, t0 = sum(each0), time.monotonic()
            sims = await start_simulators(base, n, sim_procs, rate, *sim_args)

            async def confirmed() -> int:
                got = await pg.fetchval(
                    "select count(*) from devices where connection_status = 'online' "
                    "and properties_updated_at > $1",
                    since,
                )
                return int(got)

            await wait_for("online and properties fetched", confirmed, n, STEP_TIMEOUT)
            connect_s = time.monotonic() - t0
            each1 = [i.cpu() for i in running]
            connect_cpu = sum(each1) - cpu0
            connect_events = await _events(pg) - events0
            node_rss = [rss_kib(x.proc.pid) for x in nodes if x.proc is not None]
            # the event window: every gateway connected, only events (and background) remain
            events1, w0, t1 = await _events(pg), [i.cpu() for i in running], time.monotonic()
            await asyncio.sleep(window)
            window_events = await _events(pg) - events1
            window_s = time.monotonic() - t1
            each2 = [i.cpu() for i in running]
            window_cpu = sum(each2) - sum(w0)
            per_event = window_cpu / max(window_events, 1)
            per_event_net = (window_cpu - idle_per_s * window_s) / max(window_events, 1)
            per_connect = (connect_cpu - connect_events * per_event) / n
            per_connect_net = (
                connect_cpu - idle_per_s * connect_s - connect_events * per_event_net
            ) / n
            return {
                "instances": len(running),
                "idle_cpu_ms_per_s": round(idle_per_s * 1000, 1),
                "connect_s": round(connect_s, 1),
                "connects_per_s": round(n / connect_s, 1),
                "events_during_connect": connect_events,
                "cpu_ms_per_connect": round(per_connect * 1000, 3),
                "cpu_ms_per_connect_net": round(per_connect_net * 1000, 3),
                "window_events": window_events,
                "events_per_s": round(window_events / window_s, 1),
                "cpu_ms_per_event": round(per_event * 1000, 3),
                "cpu_ms_per_event_net": round(per_event_net * 1000, 3),
                "node_kib_per_gateway": round((sum(node_rss) - sum(idle_rss)) / n, 1),
                "connect_cpu_s_by_instance": [
                    round(y - x, 2) for x, y in zip(each0, each1, strict=True)
                ],
                "window_cpu_s_by_instance": [
                    round(y - x, 2) for x, y in zip(w0, each2, strict=True)
                ],
                "rss_mib_by_instance": [round(i.rss_kib() / 1024, 1) for i in running],
                "load_avg": [round(x, 2) for x in os.getloadavg()],
            }

        async def stop_simulators() -> None:
            for s in sims:
                if s.returncode is None:
                    s.kill()
            for s in sims:
                await s.wait()

            async def offline() -> int:
                got = await pg.fetchval(
                    "select count(*) from devices where connection_status <> 'online'"
                )
                return int(got)

            # the nodes publish the wills; the lease holders mark the gateways offline
            await wait_for("all offline", offline, n, STEP_TIMEOUT)

        # (1) one instance
        _progress("round 1: one instance, three nodes")
        one = await round_([a])
        one["worst_loop_lag_s"] = round(a.worst_lag, 3)
        await stop_simulators()

        # (2) two instances
        a.worst_lag = 0.0
        await start(b)
        await _until(
            "the leases shared",
            _eq(
                held,
                *(
                    {"edgefleet-a": k, "edgefleet-b": node_count - k}
                    for k in (node_count // 2, node_count - node_count // 2)
                ),
            ),
        )
        _progress("round 2: two instances, three nodes")
        two = await round_([a, b])
        two["worst_loop_lag_s"] = round(max(a.worst_lag, b.worst_lag), 3)
        rounds = [one, two]
        for _ in range(repeat):  # the same again: the second instance is no longer new
            await stop_simulators()
            a.worst_lag = b.worst_lag = 0.0
            _progress("round 2 again")
            two = await round_([a, b])
            two["worst_loop_lag_s"] = round(max(a.worst_lag, b.worst_lag), 3)
            rounds.append(two)
        rows = await pg.fetch(
            "select broker_node, count(*) from devices where connection_status = 'online' "
            "group by broker_node order by broker_node"
        )
        spread = {str(r[0]): int(r[1]) for r in rows}
        leases = await held()

        # (3) failover: the busiest node dies
        victim = next(x for x in nodes if x.name == max(spread, key=lambda k: spread[k]))
        moved = spread[victim.name]
        moved_uuids = [
            str(r[0])
            for r in await pg.fetch("select uuid from devices where broker_node = $1", victim.name)
        ]
        _progress(f"kill -9 of {victim.name} ({moved} gateways)")
        kill_at = datetime.now(UTC).replace(tzinfo=None)
        killed = time.monotonic()
        assert victim.proc is not None
        victim.proc.kill()
        victim.proc.wait()

        async def back() -> int:
            # online on a survivor, and each moved gateway heard from since the kill (its new
            # "1" made its new node's lease holder fetch its properties)
            got = await pg.fetchval(
                "select count(*) from devices where connection_status = 'online' "
                "and broker_node is distinct from $1 "
                "and (not (uuid = any($2::text[])) or properties_updated_at > $3)",
                victim.name,
                moved_uuids,
                kill_at,
            )
            return int(got)

        await wait_for("all online again and confirmed", back, n, STEP_TIMEOUT)
        failover_s = time.monotonic() - killed
        rows = await pg.fetch(
            "select broker_node, count(*) from devices where connection_status = 'online' "
            "group by broker_node order by broker_node"
        )
        spread_after = {str(r[0]): int(r[1]) for r in rows}
        worst_lag = max(a.worst_lag, b.worst_lag)
        await stop_simulators()
    finally:
        if lag_task is not None:
            lag_task.cancel()
        for s in sims:
            if s.returncode is None:
                s.kill()
        for s in sims:
            await s.wait()
        await http.aclose()
        await pg.close()
        _stop(procs)

    def ratio(key: str) -> float:
        return round(two[key] / one[key], 3) if one[key] else float("nan")

    meta = {
        "register_s": round(register_s, 1),
        "gateways_per_node": spread,
        "leases": leases,
        "ratio_cpu_per_connect": ratio("cpu_ms_per_connect"),
        "ratio_cpu_per_connect_net": ratio("cpu_ms_per_connect_net"),
        "ratio_cpu_per_event": ratio("cpu_ms_per_event"),
        "ratio_cpu_per_event_net": ratio("cpu_ms_per_event_net"),
        "killed": victim.name,
        "moved": moved,
        "failover_all_online_confirmed_s": round(failover_s, 1),
        "gateways_per_node_after": spread_after,
        "worst_loop_lag_s": round(worst_lag, 3),
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }
    return rounds, meta


def _eq(
    get: Callable[[], Awaitable[dict[str, int]]], *wanted: dict[str, int]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await get() in wanted

    return check


async def _listening(nodes: list[Node]) -> bool:
    """Every node accepts connections on its server listener."""
    for x in nodes:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", x.mqtt.server_port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
    return True


async def _events(pg: asyncpg.Connection) -> int:
    """Property events stored (presence events are a connect's cost, counted there)."""
    got = await pg.fetchval(
        "select count(*) from events where type not in ('device_online', 'device_offline')"
    )
    return int(got)


if __name__ == "__main__":
    # a SIGTERM (timeout, CI) unwinds like Ctrl-C, so every process started here is stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main())
