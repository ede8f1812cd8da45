"""The presence sweep through the embedded Mosquitto: gateways a broker left without a will
(as a dead cluster node does) are probed and marked offline; busy, offline and answering
gateways are left alone; an interval of 0 turns it off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database
from edgefleet.domain.eventfilter import EventFilter
from edgefleet.settings import MQTTSettings, Settings
from edgefleet.simulator.gateway import Behaviour, VirtualGateway
from tests.brokers import free_port
from tests.gateways import count, eventually, register, start

PROPERTIES = ("get", "/system/properties")


@pytest.fixture
def sweep_seconds() -> float:
    return 1.0


@pytest.fixture
async def swept(
    settings: Settings, database: Database, sweep_seconds: float
) -> AsyncIterator[Container]:
    """The ``live`` server with a sweep every ``sweep_seconds``, 1 s probes, and its first
    reconciliation over before the test starts."""
    settings.mqtt = MQTTSettings(
        gateway_host="127.0.0.1",
        gateway_port=free_port(),
        server_port=free_port(),
        presence_sweep_seconds=sweep_seconds,
    )
    container = build(settings, db=database)
    monitor = container.messaging.monitor
    monitor.grace, monitor.quiet, monitor.settle_max, monitor.probe_timeout = 0.2, 0.2, 0.5, 1.0
    await container.start_messaging()
    await container.messaging.link.wait_connected(10)
    await asyncio.wait_for(monitor.reconciled.wait(), 10)
    yield container
    await container.stop_messaging()


def _probes(outcome: str) -> float:
    labels = {"reason": "sweep", "outcome": outcome}
    return REGISTRY.get_sample_value("edgefleet_presence_probes_total", labels) or 0.0


async def _status(c: Container, uuid: str) -> str:
    return (await c.fleet.get_device(uuid)).device.connection_status


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _announced(gws: list[VirtualGateway]) -> None:
    """Each gateway answered the properties request its ``1`` brought."""

    async def done() -> bool:
        return all(g.executed[PROPERTIES] >= 1 for g in gws)

    await eventually(done)


async def test_stranded_gateways_are_swept_offline_when_a_quiet_one_answers(
    swept: Container,
) -> None:
    c = swept
    creds = await register(c, 3)
    [gone], gone_tasks = start(c, creds[:1], behaviour=Behaviour(will=False))
    [quiet], quiet_tasks = start(c, creds[1:2])
    left = creds[2][0]  # held online by an earlier server process, never heard by this one
    await _announced([gone, quiet])

    async def both_online() -> bool:
        return await count(c, "online") == 2

    await eventually(both_online)
    silent, answered = _probes("silent"), _probes("answered")
    c.messaging.presence.apply_status(left, True)
    gone.crash()  # the connection is gone and, without a will, nobody says so
    await asyncio.gather(*gone_tasks, return_exceptions=True)
    stranded = {gone.uuid, left}

    async def swept_offline() -> bool:  # by the sweep: nothing else makes the events
        events = await c.event_log.query(
            EventFilter(devices=frozenset(stranded), types=frozenset({"device_offline"})),
            before_id=None,
            limit=10,
        )
        statuses = {await _status(c, u) for u in stranded}
        return {e.device_uuid for e in events} == stranded and statuses == {"offline"}

    await eventually(swept_offline, 20)

    async def quiet_probed() -> bool:
        return quiet.executed[PROPERTIES] >= 2

    await eventually(quiet_probed, 10)
    assert await _status(c, quiet.uuid) == "online"  # it answered
    assert _probes("silent") - silent >= 2 and _probes("answered") - answered >= 1
    await _stop(quiet_tasks)


@pytest.mark.parametrize("sweep_seconds", [0.0])
async def test_no_gateway_is_probed_when_the_sweep_is_off(swept: Container) -> None:
    c = swept
    creds = await register(c, 2)
    [gone], gone_tasks = start(c, creds[:1], behaviour=Behaviour(will=False))
    [quiet], quiet_tasks = start(c, creds[1:])
    await _announced([gone, quiet])
    probes = _probes("silent") + _probes("answered") + _probes("unjudged")
    gone.crash()
    await asyncio.gather(*gone_tasks, return_exceptions=True)
    await asyncio.sleep(3.0)  # three sweeps' worth with an interval of 1 s
    assert quiet.executed[PROPERTIES] == 1
    assert await _status(c, gone.uuid) == "online"  # stranded: only a sweep would tell
    assert _probes("silent") + _probes("answered") + _probes("unjudged") == probes
    await _stop(quiet_tasks)


@pytest.mark.parametrize("sweep_seconds", [1.5])
async def test_only_gateways_held_online_and_quiet_for_long_enough_are_probed(
    swept: Container,
) -> None:
    c, interval = swept, 1.5
    creds = await register(c, 3)
    gws, tasks = start(c, creds)
    quiet, busy, offline = gws
    await _announced(gws)

    async def chatter() -> None:  # an event every 0.3 s: always heard within the interval
        while True:
            await busy.emit("put", "/system/properties/cpuUsage", 1.0)
            await asyncio.sleep(0.3)

    chatting = asyncio.create_task(chatter())
    await offline.go_offline()  # says "0" and stays connected: it would answer a probe

    async def held_offline() -> bool:
        return await _status(c, offline.uuid) == "offline"

    await eventually(held_offline)
    base = {g.uuid: g.executed[PROPERTIES] for g in gws}

    async def quiet_probed() -> bool:
        return quiet.executed[PROPERTIES] > base[quiet.uuid]

    await eventually(quiet_probed, 4 * interval)
    await asyncio.sleep(2 * interval)  # more sweeps
    assert busy.executed[PROPERTIES] == base[busy.uuid]
    assert offline.executed[PROPERTIES] == base[offline.uuid]
    assert await _status(c, quiet.uuid) == "online"
    await _stop([chatting, *tasks])
