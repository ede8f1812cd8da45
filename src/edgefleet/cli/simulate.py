"""``edgefleet simulate``: run a fleet of virtual gateways against the configured broker."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import typer
from rich.markup import escape

from edgefleet.bootstrap import Container
from edgefleet.cli.common import err_console, run
from edgefleet.errors import EdgefleetError
from edgefleet.processes import raise_fd_limit
from edgefleet.protocol.psk import require_psk
from edgefleet.simulator.fleet import SimulatedFleet, ensure_devices
from edgefleet.simulator.gateway import Behaviour

CONNECT_THREADS = 32


def simulate(
    devices: int = typer.Option(..., "--devices", "-n", min=1, help="How many gateways."),
    prefix: str = typer.Option("sim", help="Names the fleet; a second run reuses its devices."),
    host: str = typer.Option(None, help="Broker host (default: the gateway listener)."),
    port: int = typer.Option(None, help="Broker port (default: the gateway listener)."),
    connect_rate: float = typer.Option(300.0, min=0, help="Connections started per second."),
    latency: float = typer.Option(0.0, min=0, help="Seconds before each answer."),
    failure_rate: float = typer.Option(0.0, min=0, max=1, help="Share of requests failing."),
    flap_interval: float = typer.Option(
        0.0, min=0, help="Mean seconds between dropped connections per gateway (0: never)."
    ),
    event_interval: float = typer.Option(
        0.0, min=0, help="Mean seconds between property events per gateway (0: none)."
    ),
    boot_seconds: float = typer.Option(2.0, min=0, help="Seconds a rebooting gateway is away."),
    reboot_delay: float | None = typer.Option(
        None, min=0, help="Seconds from a reboot's answer to the reboot (default: the request's)."
    ),
    firmware_failure_rate: float = typer.Option(
        0.0, min=0, max=1, help="Share of firmware upgrades ending in FW_UPGRADE_FAIL."
    ),
    firmware_seconds: float = typer.Option(
        1.0, min=0, help="Simulated firmware install time, after the download."
    ),
    keepalive: int = typer.Option(60, min=5, max=65535, help="MQTT keepalive in seconds."),
    duration: float = typer.Option(0.0, min=0, help="Stop after this many seconds (0: Ctrl-C)."),
    stats_interval: float = typer.Option(5.0, min=0.1, help="Seconds between stats lines."),
    seed: int = typer.Option(None, help="Random seed, for repeatable runs."),
) -> None:
    """Register (or reuse) N gateways and run them in this process, each a real MQTT client
    with its own TLS-PSK identity. Prints one JSON line of stats every --stats-interval, and a
    last one (``"final": true``) once every gateway has stopped."""
    try:
        require_psk()
    except EdgefleetError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    limit = raise_fd_limit()
    if devices > limit - 100:
        err_console.print(
            f"[red]error:[/red] {devices} gateways need as many sockets, and this process may "
            f"open {limit} files: run several simulators with disjoint --prefix values"
        )
        raise typer.Exit(2)

    async def work(c: Container) -> None:
        mqtt = c.settings.mqtt
        target_host = host or ("127.0.0.1" if mqtt.gateway_host == "0.0.0.0" else mqtt.gateway_host)  # noqa: S104
        started = time.monotonic()
        creds = await ensure_devices(c.fleet, prefix, devices)
        err_console.print(
            f"{len(creds)} gateways ready in {time.monotonic() - started:.1f} s; "
            f"connecting to {target_host}:{port or mqtt.gateway_port}"
        )
        fleet = SimulatedFleet(
            creds,
            target_host,
            port or mqtt.gateway_port,
            prefix=prefix,
            behaviour=Behaviour(
                latency=latency,
                failure_rate=failure_rate,
                flap_interval=flap_interval,
                event_interval=event_interval,
                boot_seconds=boot_seconds,
                reboot_delay=reboot_delay,
                firmware_failure_rate=firmware_failure_rate,
                firmware_seconds=firmware_seconds,
            ),
            connect_rate=connect_rate,
            keepalive=keepalive,
            seed=seed,
        )
        loop = asyncio.get_running_loop()
        # aiomqtt connects (TCP, TLS handshake) in the default executor: the stock 6 threads
        # turn a reconnect storm into a queue of blocking handshakes
        loop.set_default_executor(ThreadPoolExecutor(CONNECT_THREADS, "connect"))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, fleet.stop.set)
        runner = asyncio.create_task(fleet.run())
        begin = loop.time()
        while not fleet.stop.is_set():
            try:
                await asyncio.wait_for(fleet.stop.wait(), stats_interval)
            except TimeoutError:
                pass
            elapsed = loop.time() - begin
            line = {"t": round(elapsed, 1), **fleet.stats()}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            if duration and elapsed >= duration:
                fleet.stop.set()
        await runner
        # once every gateway has stopped: exact counts (a publish in flight above is done)
        final = {"t": round(loop.time() - begin, 1), "final": True, **fleet.stats()}
        sys.stdout.write(json.dumps(final) + "\n")
        sys.stdout.flush()

    run(work)
