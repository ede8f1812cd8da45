"""Gateways through the embedded Mosquitto: presence, properties, events, kicks."""

from __future__ import annotations

import asyncio

import pytest

from edgefleet.bootstrap import Container
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.eventfilter import EventFilter
from edgefleet.protocol import topics
from tests.brokers import require
from tests.gateways import count, eventually, register, start


async def test_gateways_come_online_with_properties_and_go_offline(live: Container) -> None:
    creds = await register(live, 20)
    gws, tasks = start(live, creds)

    async def all_online() -> bool:
        return await count(live, "online") == 20

    await eventually(all_online)
    await live.messaging.presence.drained()

    async def properties_cached() -> bool:
        views = (await live.fleet.list_devices(DeviceFilter(), offset=0, limit=100)).items
        return all(v.device.model_name == "UC-8112-LX-CG" for v in views)

    await eventually(properties_cached)
    before = (await live.fleet.get_device(creds[0][0])).device.connection_changed_at
    for g in gws[:10]:
        g.crash()  # the broker publishes their wills
    for g in gws[10:]:
        await g.go_offline()  # a clean shutdown says "0" itself
    for t in tasks[10:]:
        t.cancel()

    async def all_offline() -> bool:
        return await count(live, "offline") == 20

    await eventually(all_offline)
    after = (await live.fleet.get_device(creds[0][0])).device.connection_changed_at
    assert after > before
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_mosquitto_clients_gateway_is_seen_online(live: Container) -> None:
    [(uuid, psk)] = await register(live, 1)
    mqtt = live.settings.mqtt
    proc = await asyncio.create_subprocess_exec(
        require("mosquitto_pub"),
        *("-h", "127.0.0.1", "-p", str(mqtt.gateway_port)),
        *("--psk", psk, "--psk-identity", uuid, "-q", "1"),
        *("-t", topics.topic(uuid, topics.Channel.STATUS), "-m", "1"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()

    async def online() -> bool:
        return (await live.fleet.get_device(uuid)).device.connection_status == "online"

    await eventually(online)


async def test_property_events_update_the_cache_and_bad_messages_are_dropped(
    live: Container, caplog: pytest.LogCaptureFixture
) -> None:
    creds = await register(live, 1)
    [gw], [task] = start(live, creds)
    await asyncio.wait_for(gw.connected.wait(), 10)
    client = gw._client
    assert client is not None
    await client.publish(topics.topic(gw.uuid, topics.Channel.CLIENT), b"{not json", qos=1)
    await client.publish(topics.topic(gw.uuid, topics.Channel.CLIENT), b'{"method":"put"}', qos=1)
    await gw.emit("put", "/system/properties/defaultRoute", "wwan0")
    await gw.emit("put", "/system/properties/gps", {"data": {"lat": 25.0, "lng": 121.5}})

    async def updated() -> bool:
        props = (await live.fleet.get_device(gw.uuid)).device.properties
        return props.get("defaultRoute") == "wwan0" and props.get("gps") == {
            "lat": 25.0,
            "lng": 121.5,
        }

    await eventually(updated)
    assert (await live.fleet.get_device(gw.uuid)).device.default_route == "wwan0"
    rejected = [r.getMessage() for r in caplog.records if "rejected MQTT message" in r.getMessage()]
    assert any("not JSON" in m for m in rejected) and any("resource" in m for m in rejected)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_requests_reach_the_gateway_and_answers_come_back(live: Container) -> None:
    creds = await register(live, 1)
    [gw], [task] = start(live, creds)
    await asyncio.wait_for(gw.connected.wait(), 10)
    relay = live.messaging.relay
    r = await relay.request(gw.uuid, "GET", "/system/status", wait=10)
    assert r.code == 200 and r.data["hostname"].startswith("sim-")
    r = await relay.request(gw.uuid, "get", "/no/such/resource", wait=10)
    assert r.code == 404
    # a redelivered request (same task_id) is not run twice: the first answer comes back
    first = await relay.request(gw.uuid, "post", "/system/reboot", wait=10, task_id="t-1")
    again = await relay.request(gw.uuid, "post", "/system/reboot", wait=10, task_id="t-1")
    assert first == again
    assert gw.executed[("post", "/system/reboot")] == 1 and gw.requests == 5
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# paho leaves a socket whose TLS handshake failed to the garbage collector (closed there)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_deleted_gateway_is_kicked_and_cannot_return(live: Container) -> None:
    creds = await register(live, 2)
    gws, tasks = start(live, creds)
    await asyncio.wait_for(asyncio.gather(*(g.connected.wait() for g in gws)), 10)
    await live.fleet.delete_devices([gws[0].uuid])
    done, _ = await asyncio.wait([tasks[0]], timeout=10)
    assert done, "the deleted gateway's session was not closed"
    retry = asyncio.create_task(gws[0].run())
    done, _ = await asyncio.wait([retry], timeout=10)
    assert done and retry.exception() is not None  # TLS handshake refused: its key is gone
    assert gws[1].connected.is_set()
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_gateway_held_offline_that_speaks_is_probed_and_brought_back_online(
    live: Container,
) -> None:
    """A will for a connection the gateway no longer uses (as after a takeover on a broker
    cluster) leaves it offline while it is connected: its next event heals that."""
    creds = await register(live, 1)
    [gw], [task] = start(live, creds)
    await asyncio.wait_for(gw.connected.wait(), 10)

    async def status(expected: str) -> bool:
        return (await live.fleet.get_device(gw.uuid)).device.connection_status == expected

    await eventually(lambda: status("online"))
    await eventually(lambda: _true(gw.executed[("get", "/system/properties")] == 1))
    await gw.go_offline()  # a "0" while the connection stays: the stale will
    await eventually(lambda: status("offline"))
    healed = live.messaging.monitor.healed
    await gw.emit("post", "/system/alerts", {"severity": "info", "text": "still here"})
    await eventually(lambda: status("online"), 10)
    assert live.messaging.monitor.healed == healed + 1
    assert gw.executed[("get", "/system/properties")] == 2  # the probe it answered
    await live.events.drained()
    statuses = await live.event_log.query(
        EventFilter(
            devices=frozenset({gw.uuid}), types=frozenset({"device_online", "device_offline"})
        ),
        before_id=None,
        limit=10,
    )
    assert [e.type for e in statuses][:2] == ["device_online", "device_offline"]  # newest first
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value
