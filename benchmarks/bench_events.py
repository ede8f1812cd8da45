"""Event ingest (P5) and the event write path (P6), in one run on PostgreSQL.

One ``edgefleet serve`` (PostgreSQL, embedded Mosquitto) and several ``edgefleet simulate``
processes on this machine. The simulated gateways emit property events (``put
/system/properties/cpuUsage``, ≈ 126 B of JSON with their ``event_id``, QoS 1) at a target
aggregate rate (``--event-interval`` = gateways / rate, Poisson per gateway); the server
stores them as ``property_update`` rows. The simulators run at nice 10 by default: on a
small box they cost more CPU per event than the server, and at equal priority they starve
it (its MQTT backlog, not its speed, is then what one measures); they emit what is left.
Figures:

- *ingest*: events emitted (the simulators' own counts, exact in their last line, once they
  stopped), events stored (rows), the emitted and stored rates over the steady window (it
  starts once every gateway is online, a warm-up passed and the connect phase's backlog is
  gone, 30 s at most), the backlog (emitted, not stored: in the broker or the server) at
  both ends of the window, none lost (stored == emitted after the drain), the drain time
  once the simulators stopped;
- *lag*: the benchmark itself is a few more gateways publishing probe events (``put
  /bench/probe``, the send time in their data) through the same broker during the window,
  and polls the database every 20 ms for their rows: p50/p99/max from send to the committed
  row being visible (end to end), and from send to the server's arrival stamp (``at``), and
  the worst of each second; the server's own ``edgefleet_events_lag_seconds`` histogram
  (arrival of each batch's oldest event → commit) over the window, from ``/metrics``
  (bucket upper bounds);
- *cost*: CPU µs per stored event over the window of the server process, the broker and the
  server's PostgreSQL backends, and of the simulators per emitted event; the server's CPU %,
  the whole machine's, and the server's peak RSS;
- *ceiling*: after the window the server is stopped (SIGSTOP) for a few seconds while the
  gateways go on, so the broker holds a backlog; then continued: rows stored per second
  while it catches up (the gateways still emitting), its CPU per event and CPU %;
- *limits*, once the server is stopped, with the stored rows themselves: raw COPY into a
  scratch table ``LIKE events INCLUDING ALL`` (same indexes), in one COPY and in COPYs of
  5,000 (a commit each); the write path without MQTT: ``EventRepo.insert`` in transactions
  of 5,000 and ``EventService`` (queue, batches of 5,000, hooks) into ``events`` (fresh
  keys), with this process's and PostgreSQL's CPU per row; the ratios sustained ingest /
  raw COPY and catch-up / raw COPY.

Sized by EDGEFLEET_BENCH_EVENT_GATEWAYS (default 2000), EDGEFLEET_BENCH_EVENT_RATE (events/s
over all gateways, default 5000), EDGEFLEET_BENCH_EVENT_SECONDS (steady window, default 30),
EDGEFLEET_BENCH_EVENT_WARMUP (seconds between all online and the window, default 3),
EDGEFLEET_BENCH_EVENT_PROBE_RATE (probe events/s, default 20),
EDGEFLEET_BENCH_EVENT_BACKLOG_SECONDS (the server stopped for the ceiling, default 10; 0
skips it), EDGEFLEET_BENCH_SIM_NICE (the simulators' nice value, default 10; 0: equal
priority), EDGEFLEET_BENCH_SIM_PROCS (default 4), EDGEFLEET_BENCH_CONNECT_RATE (default
1500); EDGEFLEET_BENCH_KEEP_DB=1 keeps the database; EDGEFLEET_BENCH_SERVER_LOG=INFO shows
the server's log. Asserts nothing on time. About 2-3 minutes at the defaults.

    EDGEFLEET_BENCH_EVENT_GATEWAYS=1000 EDGEFLEET_BENCH_EVENT_RATE=3000 \\
        EDGEFLEET_BENCH_EVENT_SECONDS=20 .venv/bin/python -m benchmarks.bench_events
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import (
    PG_ADMIN,
    Server,
    broker_of,
    count_status,
    cpu_seconds,
    fresh_database,
    percentile,
    report,
    rss_kib,
    start_server,
    start_simulators,
    wait_for,
)
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade
from edgefleet.db.repos.events import EventRepo
from edgefleet.domain.events import EventType, NewEvent, gateway_key
from edgefleet.secretbox import SecretBox
from edgefleet.services.events import EventService
from edgefleet.services.fleet import FleetService
from edgefleet.settings import EventSettings
from edgefleet.simulator.fleet import ensure_devices
from edgefleet.simulator.gateway import VirtualGateway

DB = "edgefleet_bench_events"
PROBE_PREFIX = "benchprobe"
PROBE_GATEWAYS = 4
PROBE_RESOURCE = "/bench/probe"
POLL_SECONDS = 0.02
BATCH = 5000
COLUMNS = ("id", "at", "type", "device_uuid", "resource", "text", "data", "severity", "key")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def command() -> str:
    names = sorted(k for k in os.environ if k.startswith("EDGEFLEET_BENCH"))
    sizing = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in names)
    return f"{sizing} {sys.executable} -m benchmarks.bench_events".strip()


# --- measuring -------------------------------------------------------------------------------


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of the processes still there (a vanished one counts 0)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            continue
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return float(sum(fields) - idle), float(sum(fields))


async def pg_backends(pg: asyncpg.Connection, exclude: list[int]) -> list[int]:
    rows = await pg.fetch(
        "select pid from pg_stat_activity where datname = $1 and not (pid = any($2::int[]))",
        DB,
        exclude,
    )
    return [int(r["pid"]) for r in rows]


@dataclass
class Metrics:
    stored: dict[str, float] = field(default_factory=dict)
    lag_buckets: dict[float, float] = field(default_factory=dict)
    queued: float = 0.0


async def scrape(http: httpx.AsyncClient) -> Metrics:
    r = await http.get("/metrics/")
    r.raise_for_status()
    m = Metrics()
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name == "edgefleet_events_stored_total":
                m.stored[s.labels["type"]] = s.value
            elif s.name == "edgefleet_events_lag_seconds_bucket":
                m.lag_buckets[float(s.labels["le"])] = s.value
            elif s.name == "edgefleet_events_queued":
                m.queued = s.value
    return m


def bucket_quantile(before: Metrics, after: Metrics, q: float) -> float | None:
    """The upper bound of the histogram bucket holding quantile ``q`` of what was observed
    between two scrapes (``inf``: beyond the last bound)."""
    bounds = sorted(after.lag_buckets)
    counts = [after.lag_buckets[b] - before.lag_buckets.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    for bound, n in zip(bounds, counts, strict=True):
        if n >= q * counts[-1]:
            return bound
    return bounds[-1]


async def follow(proc: asyncio.subprocess.Process, latest: dict[int, dict[str, Any]]) -> None:
    """Keep the newest stats line a simulator printed (the last one is exact)."""
    assert proc.stdout is not None
    async for line in proc.stdout:
        try:
            latest[proc.pid] = json.loads(line)
        except ValueError:
            continue


def emitted(latest: dict[int, dict[str, Any]]) -> int:
    return sum(int(x.get("events", 0)) for x in latest.values())


# --- probes: end-to-end lag -------------------------------------------------------------------


@dataclass
class Probes:
    """Probe events from a few gateways of the benchmark's own, and their rows polled."""

    gateways: list[VirtualGateway]
    pg: asyncpg.Connection
    rate: float
    sent: dict[int, float] = field(default_factory=dict)
    seen: dict[int, float] = field(default_factory=dict)
    arrived: dict[int, float] = field(default_factory=dict)
    failed: int = 0
    _last_id: int = 0
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    async def publish(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        seq = 0
        while (due := start + seq / self.rate) < start + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(self._one(seq))  # a slow PUBACK delays no other probe
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            seq += 1
        await asyncio.gather(*self._pending)

    async def _one(self, seq: int) -> None:
        gw = self.gateways[seq % len(self.gateways)]
        sent = time.time()
        self.sent[seq] = sent
        try:
            await gw.emit("put", PROBE_RESOURCE, {"seq": seq, "sent": sent})
        except Exception:  # counted: a probe that never left
            self.failed += 1
            del self.sent[seq]

    async def poll(self) -> None:
        """Until cancelled: the probe rows committed since the last look."""
        uuids = [g.uuid for g in self.gateways]
        while True:
            rows = await self.pg.fetch(
                "select id, at, data->'data'->>'seq' as seq from events "
                "where device_uuid = any($1::varchar[]) and id > $2 and resource = $3 "
                "order by id",
                uuids,
                self._last_id,
                PROBE_RESOURCE,
            )
            now = time.time()
            for r in rows:
                if r["seq"] is None:
                    continue
                seq = int(r["seq"])
                self.seen.setdefault(seq, now)
                self.arrived[seq] = r["at"].replace(tzinfo=UTC).timestamp()
                self._last_id = max(self._last_id, int(r["id"]))
            await asyncio.sleep(POLL_SECONDS)

    def timeline(self) -> list[float | None]:
        """The worst end-to-end lag (ms) of the probes sent in each second of the window."""
        if not self.sent:
            return []
        t0 = min(self.sent.values())
        worst: dict[int, float] = {}
        for s, t in self.sent.items():
            if s in self.seen:
                k = int(t - t0)
                worst[k] = max(worst.get(k, 0.0), (self.seen[s] - t) * 1000)
        return [round(worst[k]) if k in worst else None for k in range(max(worst, default=-1) + 1)]

    def lags(self) -> dict[str, Any]:
        e2e = [(self.seen[s] - t) * 1000 for s, t in self.sent.items() if s in self.seen]
        arrival = [(self.arrived[s] - t) * 1000 for s, t in self.sent.items() if s in self.arrived]

        def stats(values: list[float], name: str) -> dict[str, Any]:
            if not values:
                return {f"{name}_p50_ms": None, f"{name}_p99_ms": None, f"{name}_max_ms": None}
            return {
                f"{name}_p50_ms": round(statistics.median(values), 1),
                f"{name}_p99_ms": round(percentile(values, 99), 1),
                f"{name}_max_ms": round(max(values), 1),
            }

        return {
            "probes_sent": len(self.sent),
            "probes_stored": sum(1 for s in self.sent if s in self.seen),
            "probe_failures": self.failed,
            **stats(e2e, "lag_e2e"),
            **stats(arrival, "lag_arrival"),
        }


# --- the physical limit and the write path without MQTT ------------------------------------


async def stored_rows(pg: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await pg.fetch(
        f"select {', '.join(COLUMNS)} from events where type = $1 order by id",
        EventType.PROPERTY_UPDATE.value,
    )
    return [tuple(r) for r in rows]


async def raw_copy(pg: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """COPY the rows into a scratch table with the same columns and indexes: in one COPY,
    then in COPYs of 5,000 rows, one commit each (on an emptied table)."""
    await pg.execute("drop table if exists bench_events_copy")
    await pg.execute("create table bench_events_copy (like events including all)")
    backend = [pg.get_server_pid()]
    try:
        cpu0, pg0, t0 = cpu_seconds(os.getpid()), cpu_of(backend), time.perf_counter()
        await pg.copy_records_to_table("bench_events_copy", records=rows, columns=COLUMNS)
        one = time.perf_counter() - t0
        one_pg = cpu_of(backend) - pg0
        one_client = cpu_seconds(os.getpid()) - cpu0
        await pg.execute("truncate bench_events_copy")
        t0 = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            await pg.copy_records_to_table(
                "bench_events_copy", records=rows[start : start + BATCH], columns=COLUMNS
            )
        batched = time.perf_counter() - t0
    finally:
        await pg.execute("drop table if exists bench_events_copy")
    n = max(len(rows), 1)
    return {
        "raw_copy_rows_per_s": round(len(rows) / one),
        "raw_copy_pg_cpu_us_per_row": round(one_pg / n * 1e6, 1),
        "raw_copy_client_cpu_us_per_row": round(one_client / n * 1e6, 1),
        "raw_copy_5000_rows_per_s": round(len(rows) / batched),
    }


def as_events(rows: list[tuple[Any, ...]], tag: str) -> list[NewEvent]:
    """The stored rows as new events again, under fresh keys of the same length."""
    events = []
    for r in rows:
        _, at, kind, device_uuid, resource, text, data, _, _ = r
        events.append(
            NewEvent(
                type=EventType(kind),
                at=at.replace(tzinfo=UTC),
                device_uuid=device_uuid,
                resource=resource,
                text=text,
                data=None if data is None else json.loads(data),
                key=gateway_key(device_uuid or "", f"{tag}-{r[0]}"),
            )
        )
    return events


async def write_path(
    url: str, pg: asyncpg.Connection, rows: list[tuple[Any, ...]]
) -> dict[str, Any]:
    """``EventRepo.insert`` in transactions of 5,000, then ``EventService`` (its queue and
    writer, batches of 5,000, hooks): the same rows into ``events``, fresh keys."""
    out: dict[str, Any] = {}
    db = Database(make_engine(url))
    try:
        async with db.session() as s:  # a pooled connection before the clock starts
            await EventRepo(s).insert([])
            await s.connection()
        n = max(len(rows), 1)

        events = as_events(rows, "repo")
        backends = await pg_backends(pg, [pg.get_server_pid()])
        cpu0, pg0, t0 = cpu_seconds(os.getpid()), cpu_of(backends), time.perf_counter()
        for start in range(0, len(events), BATCH):
            async with db.session() as s:
                await EventRepo(s).insert(events[start : start + BATCH])
        elapsed = time.perf_counter() - t0
        out["write_path_repo_rows_per_s"] = round(len(events) / elapsed)
        out["write_path_repo_cpu_us_per_row"] = round(
            (cpu_seconds(os.getpid()) - cpu0) / n * 1e6, 1
        )
        out["write_path_repo_pg_cpu_us_per_row"] = round((cpu_of(backends) - pg0) / n * 1e6, 1)

        events = as_events(rows, "service")
        service = EventService(db, EventSettings(batch_size=BATCH))
        writer = asyncio.create_task(service.run(), name="bench-event-writer")
        try:
            backends = await pg_backends(pg, [pg.get_server_pid()])
            cpu0, pg0, t0 = cpu_seconds(os.getpid()), cpu_of(backends), time.perf_counter()
            for e in events:
                await service.submit(e)
            await service.drained()
            elapsed = time.perf_counter() - t0
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        out["write_path_service_rows_per_s"] = round(len(events) / elapsed)
        out["write_path_service_cpu_us_per_row"] = round(
            (cpu_seconds(os.getpid()) - cpu0) / n * 1e6, 1
        )
        out["write_path_service_pg_cpu_us_per_row"] = round((cpu_of(backends) - pg0) / n * 1e6, 1)
    finally:
        await db.dispose()
    return out


# --- the run ---------------------------------------------------------------------------------


async def count_stored(pg: asyncpg.Connection) -> int:
    n = await pg.fetchval(
        "select count(*) from events where type = $1", EventType.PROPERTY_UPDATE.value
    )
    return int(n)


async def drain(pg: asyncpg.Connection, target: int, limit: float) -> tuple[int, float]:
    """Wait until ``target`` rows are stored, or nothing more came for ``limit`` s."""
    t0 = last_change = last_print = time.monotonic()
    got = await count_stored(pg)
    while got < target:
        await asyncio.sleep(0.25)
        now = time.monotonic()
        n = await count_stored(pg)
        if n != got:
            got, last_change = n, now
        elif now - last_change > limit:
            print(f"  drain: stuck at {got}/{target} for {limit:.0f} s", file=sys.stderr)
            break
        if now - last_print >= 5:
            print(f"  drain: {got}/{target} after {now - t0:.0f} s", file=sys.stderr)
            last_print = now
    return got, time.monotonic() - t0


async def backlog_phase(
    server: Server, pg: asyncpg.Connection, latest: dict[int, dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """The server's ceiling: stop it (SIGSTOP) ``seconds`` while the gateways go on, so the
    broker holds a backlog for it; continue it, and time its catch-up (the gateways still
    emitting): rows stored per second while it has a backlog, its CPU per event."""
    if seconds <= 0:
        return {}
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
        n0, e0 = await count_stored(pg), emitted(latest)
        cpu0, busy0, t0 = server.cpu_seconds(), machine_busy(), time.monotonic()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    e_last, t_last = e0, t0
    rate = 0.0
    n = n0
    for _ in range(240):  # 60 s at most
        await asyncio.sleep(0.25)
        n, e, now = await count_stored(pg), emitted(latest), time.monotonic()
        if e != e_last:  # the simulators' own rate, from their last counts
            rate, e_last, t_last = (e - e_last) / (now - t_last), e, now
        if e - n <= max(rate, 1000.0):  # within ≈ 1 s of emission: caught up
            break
    elapsed, cpu, busy1 = time.monotonic() - t0, server.cpu_seconds() - cpu0, machine_busy()
    return {
        "backlog_built": e0 - n0,
        "catch_up_s": round(elapsed, 1),
        "catch_up_stored_per_s": round((n - n0) / elapsed, 1),
        "catch_up_server_cpu_us_per_event": round(cpu / max(n - n0, 1) * 1e6, 1),
        "catch_up_server_cpu_pct": round(cpu / elapsed * 100, 1),
        "catch_up_machine_busy_pct": round(
            (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1.0) * 100, 1
        ),
    }


async def stop_simulators(sims: list[asyncio.subprocess.Process]) -> None:
    for s in sims:
        if s.returncode is None:
            s.send_signal(signal.SIGTERM)
    for s in sims:
        try:
            await asyncio.wait_for(s.wait(), 60)
        except TimeoutError:
            s.kill()
            await s.wait()


async def ingest(
    url: str, secret: str, server: Server, sizing: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    n, procs, seconds = sizing["gateways"], sizing["sim_processes"], sizing["seconds"]
    per = -(-n // procs)
    pg = await asyncpg.connect(url.replace("+asyncpg", ""))
    poll_pg = await asyncpg.connect(url.replace("+asyncpg", ""))
    sims: list[asyncio.subprocess.Process] = []
    latest: dict[int, dict[str, Any]] = {}
    readers: list[asyncio.Task[None]] = []
    stop_probes = asyncio.Event()
    probe_tasks: list[asyncio.Task[None]] = []
    poller: asyncio.Task[None] | None = None
    try:
        db = Database(make_engine(url))
        fleet = FleetService(db, SecretBox(secret.encode()))
        for k in range(procs):
            await ensure_devices(fleet, f"bench{k}", min(per, n - k * per))
        port = int(server.env["EDGEFLEET_MQTT__GATEWAY_PORT"])
        probe_creds = await ensure_devices(fleet, PROBE_PREFIX, PROBE_GATEWAYS)
        await db.dispose()
        await asyncio.sleep(2.5)  # the embedded broker notices the new keys (polls 2 s)

        env = {**os.environ, **server.env, "EDGEFLEET_LOG_LEVEL": "WARNING"}
        env.pop("EDGEFLEET_HTTP__PORT", None)
        interval = n / sizing["rate_asked"]  # mean seconds between one gateway's events
        sims += await start_simulators(
            env,
            n,
            procs,
            sizing["connect_rate"],
            *("--event-interval", f"{interval:.6f}", "--stats-interval", "1"),
            stdout=asyncio.subprocess.PIPE,
        )
        for p in sims:  # before the simulator starts its threads (they inherit it)
            os.setpriority(os.PRIO_PROCESS, p.pid, sizing["sim_nice"])
        readers = [asyncio.create_task(follow(p, latest)) for p in sims]
        probes = Probes(
            [VirtualGateway(u, psk, "127.0.0.1", port) for u, psk in probe_creds],
            poll_pg,
            sizing["probe_rate"],
        )
        probe_tasks = [asyncio.create_task(g.serve(stop_probes)) for g in probes.gateways]
        await wait_for("all online", lambda: count_status(pg, "online"), n + PROBE_GATEWAYS)
        for g in probes.gateways:
            await asyncio.wait_for(g.connected.wait(), 30)
        await asyncio.sleep(sizing["warmup"])

        broker = broker_of(server)
        sim_pids = [s.pid for s in sims]
        own = [pg.get_server_pid(), poll_pg.get_server_pid()]
        backends = await pg_backends(pg, own)
        key = EventType.PROPERTY_UPDATE.value
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:

            async def backlog() -> float:
                """Emitted (≤ 1 s stale) and not stored yet: in the broker or the server."""
                return emitted(latest) - (await scrape(http)).stored.get(key, 0.0)

            # the connect phase may have left a backlog: the window starts without it, if
            # the server catches up within 30 s
            for _ in range(60):
                if (b := await backlog()) <= sizing["rate_asked"]:
                    break
                await asyncio.sleep(0.5)
            m0 = await scrape(http)
            e0, busy0 = emitted(latest), machine_busy()
            cpu0 = (server.cpu_seconds(), cpu_seconds(broker), cpu_of(backends), cpu_of(sim_pids))
            t0 = time.monotonic()
            poller = asyncio.create_task(probes.poll())
            publisher = asyncio.create_task(probes.publish(seconds))
            peak_rss = 0
            while (left := t0 + seconds - time.monotonic()) > 0:
                peak_rss = max(peak_rss, rss_kib(server.proc.pid))
                await asyncio.sleep(min(1.0, left))
            m1 = await scrape(http)
            e1, busy1 = emitted(latest), machine_busy()
            cpu1 = (server.cpu_seconds(), cpu_seconds(broker), cpu_of(backends), cpu_of(sim_pids))
            window = time.monotonic() - t0
            peak_rss = max(peak_rss, rss_kib(server.proc.pid))
            backlog_end = e1 - m1.stored.get(key, 0.0)
            await publisher
            catch_up = await backlog_phase(server, pg, latest, sizing["backlog_seconds"])

            await stop_simulators(sims)
            await asyncio.gather(*readers)
            final = [x for x in latest.values() if x.get("final")]
            total_emitted = emitted(latest)
            at_stop, cpu_stop = await count_stored(pg), server.cpu_seconds()
            stored, drain_s = await drain(pg, total_emitted, 60.0)
            drain_cpu = server.cpu_seconds() - cpu_stop
            for _ in range(300):  # the last probes' rows, 30 s at most
                if len(probes.seen) >= len(probes.sent):
                    break
                await asyncio.sleep(0.1)
            if poller.done():
                poller.result()  # the poller's failure, if it failed
            poller.cancel()
            m2 = await scrape(http)

        in_window = m1.stored.get(key, 0.0) - m0.stored.get(key, 0.0)
        busy = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1.0) * 100
        per_event = max(in_window, 1.0)
        drained = stored - at_stop
        figures: dict[str, Any] = {
            **sizing,
            "window_s": round(window, 1),
            "emitted": total_emitted,
            "emitter_stats_final": len(final) == len(sims),
            "stored": stored,
            "lost": max(0, total_emitted - stored),
            "extra": max(0, stored - total_emitted),
            "emitted_per_s": round((e1 - e0) / window, 1),
            "stored_per_s": round(in_window / window, 1),
            # ± 1 s of emission: the simulators report their counts each second
            "backlog_at_window_start": max(0, round(b)),
            "backlog_at_window_end": max(0, round(backlog_end)),
            "queued_in_server_at_window_end": int(m1.queued),
            "backlog_after_simulators_stopped": total_emitted - at_stop,
            "drain_s": round(drain_s, 1),
            # the server catching up on the broker's backlog, nothing else running
            "drain_stored_per_s": round(drained / drain_s, 1) if drained >= 5000 else None,
            "drain_server_cpu_us_per_event": (
                round(drain_cpu / drained * 1e6, 1) if drained >= 5000 else None
            ),
            **catch_up,
            **probes.lags(),
            "server_lag_p50_le_s": bucket_quantile(m0, m1, 0.50),
            "server_lag_p99_le_s": bucket_quantile(m0, m1, 0.99),
            "server_lag_p99_le_s_incl_drain": bucket_quantile(m0, m2, 0.99),
            "server_cpu_us_per_event": round((cpu1[0] - cpu0[0]) / per_event * 1e6, 1),
            "broker_cpu_us_per_event": round((cpu1[1] - cpu0[1]) / per_event * 1e6, 1),
            "pg_backends_cpu_us_per_event": round((cpu1[2] - cpu0[2]) / per_event * 1e6, 1),
            "simulators_cpu_us_per_emitted": round((cpu1[3] - cpu0[3]) / max(e1 - e0, 1) * 1e6, 1),
            "server_cpu_pct": round((cpu1[0] - cpu0[0]) / window * 100, 1),
            "machine_busy_pct_of_2_cores": round(busy, 1),
            "server_rss_mib_peak": round(peak_rss / 1024, 1),
        }
        figures["probe_lag_ms_worst_by_second"] = probes.timeline()
        rows = await stored_rows(pg)
        return figures, rows
    finally:
        stop_probes.set()
        if poller is not None:
            poller.cancel()
        await asyncio.gather(*probe_tasks, return_exceptions=True)
        for s in sims:
            if s.returncode is None:
                s.kill()
        for r in readers:
            r.cancel()
        await pg.close()
        await poll_pg.close()


async def main() -> None:
    sizing: dict[str, Any] = {
        "gateways": int(_env("EDGEFLEET_BENCH_EVENT_GATEWAYS", "2000")),
        "rate_asked": float(_env("EDGEFLEET_BENCH_EVENT_RATE", "5000")),
        "seconds": float(_env("EDGEFLEET_BENCH_EVENT_SECONDS", "30")),
        "warmup": float(_env("EDGEFLEET_BENCH_EVENT_WARMUP", "3")),
        "probe_rate": float(_env("EDGEFLEET_BENCH_EVENT_PROBE_RATE", "20")),
        "sim_processes": int(_env("EDGEFLEET_BENCH_SIM_PROCS", "4")),
        "connect_rate": float(_env("EDGEFLEET_BENCH_CONNECT_RATE", "1500")),
        "sim_nice": int(_env("EDGEFLEET_BENCH_SIM_NICE", "10")),
        "backlog_seconds": float(_env("EDGEFLEET_BENCH_EVENT_BACKLOG_SECONDS", "10")),
    }
    url = await fresh_database(DB)
    await asyncio.to_thread(upgrade, url)
    secret = "bench-" + os.urandom(16).hex()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = start_server(
                url,
                Path(tmp),
                {
                    "EDGEFLEET_SECRET_KEY": secret,
                    "EDGEFLEET_LOG_LEVEL": _env("EDGEFLEET_BENCH_SERVER_LOG", "WARNING"),
                },
            )
            try:
                figures, rows = await ingest(url, secret, server, sizing)
            finally:
                server.stop()
        print(f"ingest: {figures}", file=sys.stderr)
        pg = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            limits = await raw_copy(pg, rows)
            limits.update(await write_path(url, pg, rows))
        finally:
            await pg.close()
        limits["rows"] = len(rows)
        raw = max(limits["raw_copy_rows_per_s"], 1)
        limits["ingest_to_raw_copy"] = round(figures["stored_per_s"] / raw, 3)
        if "catch_up_stored_per_s" in figures:
            limits["catch_up_to_raw_copy"] = round(figures["catch_up_stored_per_s"] / raw, 3)
    finally:
        if os.environ.get("EDGEFLEET_BENCH_KEEP_DB") != "1":
            admin = await asyncpg.connect(PG_ADMIN)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            finally:
                await admin.close()
    merged = {**figures, **limits}
    report(  # one figure a line: too many for one row
        "event_ingest",
        [{"figure": k, "value": v} for k, v in merged.items()],
        {
            "machine": os.uname().nodename,
            "at": datetime.now(UTC).isoformat(),
            "command": command(),
            "figures": merged,
        },
    )


if __name__ == "__main__":
    # a SIGTERM (timeout, CI) unwinds like Ctrl-C, so the server and simulators are stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main())
