"""A fleet through the embedded broker: 200 simulated gateways run by ``edgefleet simulate``
in a process of their own, silent deaths caught by the keepalive, and presence reconciled
after the broker or the server's broker session is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiomqtt

from edgefleet.bootstrap import Container
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.simulator.gateway import VirtualGateway
from tests.gateways import count, eventually, register, start

FLEET = 200
KEEPALIVE = 5


def _env(live: Container) -> dict[str, str]:
    s = live.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(
        {
            "EDGEFLEET_DATA_DIR": str(s.data_dir),
            "EDGEFLEET_DATABASE_URL": s.database_url,
            "EDGEFLEET_SECRET_KEY": s.secret_key.get_secret_value(),
            "EDGEFLEET_MQTT__GATEWAY_HOST": s.mqtt.gateway_host,
            "EDGEFLEET_MQTT__GATEWAY_PORT": str(s.mqtt.gateway_port),
        }
    )
    return env


async def test_two_hundred_gateways_online_with_properties_then_offline_by_keepalive(
    live: Container,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "edgefleet.cli.main", "simulate", "--devices", str(FLEET)),
        *("--keepalive", str(KEEPALIVE), "--stats-interval", "1", "--seed", "7"),
        env=_env(live),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:

        async def all_online() -> bool:
            assert proc.returncode is None, "the simulator exited"
            return await count(live, "online") == FLEET

        await eventually(all_online, 90)

        async def properties_cached() -> bool:
            page = await live.fleet.list_devices(DeviceFilter(), offset=0, limit=FLEET)
            return all(
                v.device.model_name.startswith(("UC-", "MC-"))
                and v.device.properties.get("hostName") == v.device.display_name
                for v in page.items
            )

        await eventually(properties_cached, 60)
        # a silent death: the process stops, its sockets stay open, nothing says goodbye;
        # the broker gives up after 1.5 keepalives and publishes the wills
        os.killpg(proc.pid, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        stopped = loop.time()

        async def all_offline() -> bool:
            return await count(live, "offline") == FLEET

        await eventually(all_offline, 3 * KEEPALIVE)
        assert loop.time() - stopped >= KEEPALIVE, "offline before the keepalive ran out"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def test_a_second_run_reuses_the_simulated_devices(live: Container) -> None:
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "edgefleet.cli.main", "simulate", "-n", "3", "--duration", "1"),
            *("--stats-interval", "0.5"),
            env=_env(live),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert b'"gateways": 3' in out
    assert (await live.fleet.list_devices(DeviceFilter(), offset=0, limit=10)).total == 3


async def test_gateways_lost_with_a_broker_restart_are_marked_offline(live: Container) -> None:
    monitor = live.messaging.monitor
    monitor.grace, monitor.probe_timeout = 0.5, 2.0
    monitor.settle_max = 5.0  # when `back` said "1" before the server subscribed again
    creds = await register(live, 4)
    _, gone_tasks = start(live, creds[:3])  # one session each: they will not come back
    back = VirtualGateway(creds[3][0], creds[3][1], "127.0.0.1", live.settings.mqtt.gateway_port)
    back_task = asyncio.create_task(back.serve())

    async def all_online() -> bool:
        return await count(live, "online") == 4

    await eventually(all_online)
    broker = live.messaging.broker
    assert broker is not None and broker.pid is not None
    connects = live.messaging.link.connects
    os.kill(broker.pid, signal.SIGKILL)  # no wills: the broker dies with their sessions
    await asyncio.gather(*gone_tasks, return_exceptions=True)

    async def reconciled() -> bool:
        return live.messaging.link.connects > connects and monitor.reconciled.is_set()

    await eventually(reconciled, 30)

    async def settled() -> bool:
        return await count(live, "offline") == 3 and await count(live, "online") == 1

    await eventually(settled, 30)
    assert (await live.fleet.get_device(back.uuid)).device.connection_status == "online"
    back_task.cancel()
    await asyncio.gather(back_task, return_exceptions=True)


async def test_probes_wait_for_the_reconnect_storm(live: Container) -> None:
    """A gateway that comes back a while after the broker restart is not probed (and marked
    offline) before it had its chance: the probes wait until the "1"s have settled."""
    monitor, link = live.messaging.monitor, live.messaging.link
    monitor.grace, monitor.quiet, monitor.settle_max, monitor.probe_timeout = 0.5, 1.0, 10.0, 1.0
    creds = await register(live, 2)
    late, gone = (
        VirtualGateway(u, k, "127.0.0.1", live.settings.mqtt.gateway_port) for u, k in creds
    )
    sessions = [asyncio.create_task(g.run()) for g in (late, gone)]

    async def all_online() -> bool:
        return await count(live, "online") == 2

    await eventually(all_online)
    await live.messaging.presence.drained()
    since = (await live.fleet.get_device(late.uuid)).device.connection_changed_at
    broker = live.messaging.broker
    assert broker is not None and broker.pid is not None
    connects = link.connects
    os.kill(broker.pid, signal.SIGKILL)
    await asyncio.gather(*sessions, return_exceptions=True)

    async def server_back() -> bool:
        return link.connects > connects

    await eventually(server_back, 30)
    # later than grace + probe timeout: a probe sent at once would have found it silent
    await asyncio.sleep(monitor.grace + monitor.probe_timeout + 1.0)
    again = asyncio.create_task(late.run())
    await eventually(lambda: _is_set(monitor.reconciled), 30)
    late_now = (await live.fleet.get_device(late.uuid)).device
    assert late_now.connection_status == "online"
    assert late_now.connection_changed_at == since  # never flipped to offline and back
    assert (await live.fleet.get_device(gone.uuid)).device.connection_status == "offline"
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


async def test_a_stale_retained_offline_does_not_unseat_a_connected_gateway(
    live: Container,
) -> None:
    monitor, link = live.messaging.monitor, live.messaging.link
    monitor.grace, monitor.probe_timeout = 0.5, 5.0
    monitor.settle_max = 1.0  # nobody says "1" here: the broker did not restart
    [(uuid, psk)] = await register(live, 1)
    gw = VirtualGateway(uuid, psk, "127.0.0.1", live.settings.mqtt.gateway_port)
    first = asyncio.create_task(gw.run())
    await asyncio.wait_for(gw.connected.wait(), 10)
    gw.crash()  # the will leaves a retained "0" …
    await asyncio.gather(first, return_exceptions=True)

    async def offline() -> bool:
        return (await live.fleet.get_device(uuid)).device.connection_status == "offline"

    await eventually(offline)
    second = asyncio.create_task(gw.run())  # … which its non-retained "1" does not replace
    await asyncio.wait_for(gw.connected.wait(), 10)

    async def online() -> bool:
        return (await live.fleet.get_device(uuid)).device.connection_status == "online"

    await eventually(online)
    # the server loses its broker session (another client takes its id) and subscribes
    # again: the broker hands it the stale retained "0"
    connects = link.connects
    mqtt = live.settings.mqtt
    async with aiomqtt.Client(
        mqtt.server_host,
        mqtt.server_port,
        username=mqtt.server_username,
        password=live.settings.mqtt_server_password(),
        identifier=link.client_id,
    ):
        pass

    async def reconciled() -> bool:
        return link.connects > connects and monitor.reconciled.is_set()

    await eventually(reconciled, 30)
    assert (await live.fleet.get_device(uuid)).device.connection_status == "online"
    assert gw.executed[("get", "/system/properties")] >= 2  # probed, and it answered
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
