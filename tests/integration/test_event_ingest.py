"""The event service's ingest: gateways' events and status through a real broker into the
events table, at least once from the broker and stored once."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import upgrade_async
from edgefleet.db.tables import Event
from edgefleet.domain.events import EventType, NewEvent
from edgefleet.domain.tasks import TaskKind
from edgefleet.domain.webhooks import verify
from edgefleet.protocol import topics
from edgefleet.services.tasks import TaskSpec
from edgefleet.settings import EventSettings, MQTTSettings, Settings
from tests.brokers import free_port
from tests.gateways import count, eventually, register, start
from tests.pgserver import start_private_postgres
from tests.receivers import Receiver, receiving


async def _events(db: Database, **where: Any) -> list[Event]:
    async with db.session() as s:
        q = select(Event).order_by(Event.id)
        for k, v in where.items():
            q = q.where(getattr(Event, k) == v)
        return list((await s.scalars(q)).all())


async def _count(db: Database, **where: Any) -> int:
    async with db.session() as s:
        q = select(func.count()).select_from(Event)
        for k, v in where.items():
            q = q.where(getattr(Event, k) == v)
        return int((await s.scalar(q)) or 0)


async def _stop(gateways: list[asyncio.Task[None]]) -> None:
    for t in gateways:
        t.cancel()
    await asyncio.gather(*gateways, return_exceptions=True)


async def test_gateway_events_and_status_are_stored_with_types_and_alarms(
    live: Container,
) -> None:
    creds = await register(live, 2)
    gws, tasks = start(live, creds)
    try:
        await eventually(lambda: _online(live, 2))
        a, b = gws
        await a.emit("put", "/system/properties/defaultRoute", {"data": "wwan0"})
        await b.emit("put", "/system/firmware", {"code": "FW_UPGRADE_FAIL", "message": "bad"})
        await b.emit("post", "/alarms", {"severity": "critical", "message": "disk full"})
        await b.emit("put", "/system/reboot", {"code": "REBOOT_SUCCESS"})

        await eventually(lambda: _has(live.db, 1, type="property_update", device_uuid=a.uuid))
        await eventually(lambda: _has(live.db, 3, type="gateway_event", device_uuid=b.uuid))
        prop = [
            e for e in await _events(live.db, device_uuid=a.uuid) if e.type == "property_update"
        ]
        assert [(e.resource, e.text, e.severity) for e in prop] == [
            ("/system/properties/defaultRoute", "defaultRoute = wwan0", None)
        ]
        assert prop[0].data == {"method": "put", "code": 200, "data": {"data": "wwan0"}}
        got = {e.resource: e for e in await _events(live.db, type="gateway_event")}
        assert got["/system/firmware"].severity == "major"
        assert "FW_UPGRADE_FAIL: bad" in got["/system/firmware"].text
        assert got["/alarms"].severity == "critical"
        assert got["/system/reboot"].severity is None
        online = await _events(live.db, type="device_online")
        assert sorted(e.device_uuid or "" for e in online) == sorted(u for u, _ in creds)

        # a gateway that drops off raises an offline warning, cleared when it returns
        a.crash()
        await eventually(lambda: _has(live.db, 1, type="device_offline", device_uuid=a.uuid))
        [offline] = await _events(live.db, type="device_offline", device_uuid=a.uuid)
        assert offline.severity == "warning" and offline.cleared_at is None
        tasks.append(asyncio.create_task(a.run()))  # it comes back
        await eventually(lambda: _has(live.db, 2, type="device_online", device_uuid=a.uuid))
        await eventually(lambda: _cleared(live.db, offline.id))
        [offline] = await _events(live.db, type="device_offline", device_uuid=a.uuid)
        assert offline.cleared_by == "system"
    finally:
        await _stop(tasks)


async def _online(c: Container, n: int) -> bool:
    return await count(c, "online") == n


async def _has(db: Database, n: int, **where: Any) -> bool:
    return await _count(db, **where) >= n


async def _cleared(db: Database, event_id: int) -> bool:
    [e] = await _events(db, id=event_id)
    return e.cleared_at is not None


async def test_server_events_for_registration_tasks_and_jobs(live: Container) -> None:
    creds = await register(live, 3)
    _, tasks = start(live, creds)
    try:
        await eventually(lambda: _online(live, 3))
        registered = await _events(live.db, type="device_registered")
        assert sorted(e.device_uuid or "" for e in registered) == sorted(u for u, _ in creds)
        group = await live.fleet.create_group("line-1")
        await live.fleet.add_to_group(group.group.id, [u for u, _ in creds])
        view = await live.tasks.create(
            TaskSpec(
                kind=TaskKind.GROUP,
                method="get",
                resource="/system/status",
                group_id=group.group.id,
            )
        )
        await eventually(lambda: _has(live.db, 3, type="job_update"))
        jobs = await _events(live.db, type="job_update")
        assert sorted(e.device_uuid or "" for e in jobs) == sorted(u for u, _ in creds)
        assert {e.data["state"] for e in jobs} == {"SUCCESS"}
        assert {e.data["taskUUID"] for e in jobs} == {view.task.uuid}
        created = view.task.state  # RUNNING, or PENDING when scheduled
        await eventually(lambda: _task_states(live.db, view.task.uuid, {created, "SUCCESS"}))
        await live.fleet.delete_devices([creds[0][0]])
        await eventually(lambda: _has(live.db, 1, type="device_deleted"))
    finally:
        await _stop(tasks)


async def _task_states(db: Database, task_uuid: str, expected: set[str]) -> bool:
    events = await _events(db, type="task_update")
    return {e.data["state"] for e in events if e.data["taskUUID"] == task_uuid} >= expected


class _Receipt:
    def __init__(self, dup: bool) -> None:
        self.dup = dup
        self.settled = False
        self.deferred = False

    def defer(self) -> None:
        self.deferred = True

    def settle(self) -> None:
        self.settled = True


async def test_an_idless_event_redelivered_by_the_broker_is_stored_once(
    container: Container,
) -> None:
    """ThingsPro gateways send no event_id: a redelivery (dup) of one just stored is
    recognised; the same event sent again by the gateway (not dup) is a new event."""
    events = container.events
    writer = asyncio.create_task(events.run())
    try:
        payload = json.dumps({"method": "put", "resource": "/x", "data": 1}).encode()
        first, again, repeat = _Receipt(False), _Receipt(True), _Receipt(False)
        for r in (first, again, repeat):
            await events.gateway_event(
                "d1", "put", "/x", None, 1, event_id=None, payload=payload, receipt=r
            )
        await events.drained()
        assert await _count(container.db, device_uuid="d1") == 2
        assert first.settled and repeat.settled
        assert not again.deferred  # settled by the MQTT handler's return, nothing stored
        # with an event_id, a redelivery is recognised by the database, whatever the memory
        for _ in range(2):
            await events.gateway_event(
                "d2", "put", "/x", None, 1, event_id="e-1", payload=payload, receipt=None
            )
        await events.drained()
        assert await _count(container.db, device_uuid="d2") == 1
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def test_an_event_id_sent_again_is_a_duplicate_not_a_refusal(
    container: Container, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway's event_id seen again, in the same batch or a later one, is stored once and
    counted as a duplicate. On PostgreSQL the batch's COPY raised the driver's own
    UniqueViolationError, which the fallback to a row-by-row insert did not catch: the batch
    was split, the event counted as refused and an error logged with its stack, once a batch."""
    events = container.events
    writer = asyncio.create_task(events.run())
    labels = {"writer": "event-writer"}
    rejected = REGISTRY.get_sample_value("edgefleet_rows_rejected_total", labels) or 0
    duplicates = events.duplicates
    try:
        payload = json.dumps({"method": "put", "resource": "/x", "data": 1}).encode()

        async def send(event_id: str, n: int) -> None:
            for _ in range(n):
                await events.gateway_event(
                    "d3", "put", "/x", None, 1, event_id=event_id, payload=payload, receipt=None
                )

        await send("same-batch", 3)
        await events.drained()
        await send("same-batch", 1)  # and once more in a later batch
        await send("other", 1)
        await events.drained()
        assert await _count(container.db, device_uuid="d3") == 2
        assert events.duplicates - duplicates == 3
        after = REGISTRY.get_sample_value("edgefleet_rows_rejected_total", labels) or 0
        assert after == rejected
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def test_a_batch_the_database_refuses_loses_only_the_bad_event(
    container: Container,
) -> None:
    events = container.events
    writer = asyncio.create_task(events.run())
    try:
        now = events.clock()
        good = [NewEvent(EventType.GATEWAY_EVENT, now, "d", "/ok", data={"i": i}) for i in range(5)]
        # both databases refuse a lone surrogate in a text column; PostgreSQL's JSON also
        # refuses NaN (SQLite stores it)
        bad = [NewEvent(EventType.GATEWAY_EVENT, now, "d", "/bad\ud800")]
        if container.db.dialect == "postgresql":
            bad.append(NewEvent(EventType.GATEWAY_EVENT, now, "d", "/nan", data=float("nan")))
        labels = {"writer": "event-writer"}
        rejected = REGISTRY.get_sample_value("edgefleet_rows_rejected_total", labels) or 0
        for e in (*good[:2], bad[0], *good[2:4], *bad[1:], good[4]):
            events.emit(e)
        await events.drained()
        stored = await _events(container.db, resource="/ok")
        assert sorted(e.data["i"] for e in stored) == [0, 1, 2, 3, 4]
        after = REGISTRY.get_sample_value("edgefleet_rows_rejected_total", labels) or 0
        assert after == rejected + len(bad)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def test_no_event_is_lost_or_doubled_when_postgres_stops_during_the_flow(
    tmp_path: Path,
) -> None:
    """Gateways keep emitting while PostgreSQL is down for seconds and the server's broker
    connection drops meanwhile: every event is stored exactly once afterwards."""
    # its own directory under /tmp: the postgres user cannot enter pytest's (mode 0700)
    base = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    pg = start_private_postgres(base)
    try:
        await pg.create_database("events")
        url = pg.url("events")
        await upgrade_async(url)
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=url,
            secret_key="test-secret-key-not-for-production",
            mqtt=MQTTSettings(
                gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port()
            ),
            events=EventSettings(queue_size=200, batch_size=100, batch_delay=0.02),
        )
        db = Database(make_engine(url))
        live = build(settings, db=db)
        await live.start_messaging()
        try:
            await live.messaging.link.wait_connected(10)
            await _outage_flow(live, pg)
        finally:
            await live.stop_messaging()
            await db.dispose()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _outage_flow(live: Container, pg: Any) -> None:
    creds = await register(live, 20)
    gws, tasks = start(live, creds)
    sent: Counter[str] = Counter()
    try:
        await eventually(lambda: _online(live, 20))
        await live.events.drained()

        async def emit(rounds: int) -> None:
            for i in range(rounds):
                for gw in gws:
                    await gw.emit("put", "/system/properties/counter", {"data": i})
                    sent[gw.uuid] += 1
                await asyncio.sleep(0.02)

        flow = asyncio.create_task(emit(150))
        await eventually(lambda: _has(live.db, 200, type="property_update"))
        pg.stop()
        await asyncio.sleep(2)
        # the server's broker connection drops while events wait unstored (the consumer is
        # held up by the full queue): after the reconnect the broker sends them again (dup),
        # some of them already held in memory
        link = live.messaging.link
        connects = link.connects
        assert link._client is not None
        link._client._client.disconnect()
        await asyncio.sleep(1)
        pg.start()
        await eventually(lambda: _true(link.connects > connects))
        await flow
        total = sum(sent.values())
        assert total == 20 * 150
        await eventually(lambda: _has(live.db, total, type="property_update"), 90)
        await live.events.drained()
        stored = await _events(live.db, type="property_update")
        assert len(stored) == total  # none doubled
        per_device = Counter(e.device_uuid or "" for e in stored)
        assert per_device == sent  # none lost
        values = Counter((e.device_uuid, e.data["data"]["data"]) for e in stored)
        assert set(values.values()) == {1}
        assert live.events.duplicates > 0  # the redelivery happened and was recognised
    finally:
        await _stop(tasks)


async def _true(value: bool) -> bool:
    return value


async def test_a_gateway_event_is_acknowledged_to_the_broker_only_once_stored(
    live: Container,
) -> None:
    """A server that dies with an event received but not stored never acknowledged it: the
    next server session (same client id) gets it from the broker and stores it."""
    [(uuid, psk)] = await register(live, 1)
    writer = live.workers.get("event-writer")
    assert writer is not None
    await writer.stop()
    gws, tasks = start(live, [(uuid, psk)])
    second: Container | None = None
    try:
        await eventually(lambda: _online(live, 1))
        link = live.messaging.link
        await gws[0].emit("put", "/system/properties/x", {"data": 1})
        await eventually(lambda: _true(link.window is not None and len(link.window) >= 1))
        # the first server's broker connection dies (its embedded broker stays up)
        broker_link = live.workers.get("broker-link")
        assert broker_link is not None
        await broker_link.stop()
        assert await _count(live.db, device_uuid=uuid, type="property_update") == 0
        settings = live.settings.model_copy(deep=True)
        settings.mqtt.embedded = False
        second = build(settings, db=live.db)
        assert second.messaging.link.client_id == link.client_id
        await second.start_messaging()
        await eventually(lambda: _has(live.db, 1, device_uuid=uuid, type="property_update"))
        await second.events.drained()
        assert await _count(live.db, device_uuid=uuid, type="property_update") == 1
    finally:
        await _stop(tasks)
        if second is not None:
            await second.stop_messaging()


async def test_a_malformed_event_is_rejected_and_the_next_one_stored(live: Container) -> None:
    [(uuid, _)] = await register(live, 1)
    mqtt = live.settings.mqtt
    async with aiomqtt.Client(
        mqtt.server_host,
        mqtt.server_port,
        username=mqtt.server_username,
        password=live.settings.mqtt_server_password(),
    ) as client:
        topic = topics.topic(uuid, topics.Channel.CLIENT)
        await client.publish(topic, b"{not json", qos=1)
        await client.publish(topic, b'{"method":"put","resource":"/a","data":1}', qos=1)
    await eventually(lambda: _has(live.db, 1, device_uuid=uuid, resource="/a"))
    assert await _count(live.db, device_uuid=uuid, type="gateway_event") == 1


async def test_an_instance_with_ingest_off_leaves_gateway_events_to_the_others(
    settings: Settings, database: Database
) -> None:
    settings.events = EventSettings(ingest=False)
    assert build(settings, db=database).messaging.router.events is None
    settings.events = EventSettings()
    assert build(settings, db=database).messaging.router.events is not None


async def test_gateways_events_reach_webhook_receivers_signed_and_a_failing_one_is_retried(
    settings: Settings, database: Database
) -> None:
    """The whole path: simulated gateways → broker → event writer → webhook dispatcher →
    real HTTP receivers; deliveries verify with the secret given at subscription, and a
    receiver that fails at first gets them once it recovers."""
    settings.mqtt = MQTTSettings(
        gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port()
    )
    settings.events = EventSettings(
        webhook_backoff_seconds=0.2,
        webhook_max_attempts=20,
        webhook_allow_networks=[ipaddress.ip_network("127.0.0.0/8")],  # the receivers'
    )
    c = build(settings, db=database)
    await c.start_messaging()
    tasks: list[asyncio.Task[None]] = []
    try:
        await c.messaging.link.wait_connected(10)
        async with receiving() as online, receiving() as props:
            secrets = {}
            for receiver, kind in ((online, "device_online"), (props, "property_update")):
                sub = await c.notifications.create(kind, "http", receiver.url + "/hook", "t")
                assert sub.secret is not None
                secrets[kind] = sub.secret
            props.status = 503  # down at first
            creds = await register(c, 3)
            gws, tasks = start(c, creds)
            await eventually(lambda: _online(c, 3))
            for i, gw in enumerate(gws):
                await gw.emit("put", "/system/properties/defaultRoute", {"data": f"wwan{i}"})
            await eventually(lambda: _true(len(online.events()) >= 3))
            await eventually(lambda: _true(len(props.events()) >= 3))  # failed attempts
            props.status = 200
            await eventually(lambda: _true(_distinct_ok(props) == 3))
            for receiver, kind in ((online, "device_online"), (props, "property_update")):
                for r in receiver.events():
                    header = r.headers["x-edgefleet-signature"]
                    assert verify(secrets[kind], r.raw, header, now=int(time.time()))
                    assert r.body["eventType"] == kind
            assert sorted(r.body["deviceUUID"] for r in online.events()) == sorted(
                u for u, _ in creds
            )
            got = {r.body["deviceUUID"]: r.body["data"]["data"] for r in props.events()}
            assert got == {gw.uuid: {"data": f"wwan{i}"} for i, gw in enumerate(gws)}
            assert len(props.events()) > 3  # retried
    finally:
        await _stop(tasks)
        await c.stop_messaging()


def _distinct_ok(receiver: Receiver) -> int:
    """Deliveries the receiver answered 2xx (it answers with its status at the time)."""
    return len({r.delivery for r in receiver.events() if r.status < 300})
