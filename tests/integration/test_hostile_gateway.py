"""A hostile gateway through a real broker, into a server on SQLite and on PostgreSQL.

What a gateway publishes is refused with a counted reason when it breaks the protocol
(hypothesis-generated payloads, published with ``mosquitto_pub --psk`` as the gateway itself);
a packet over the protocol's limit is refused by the broker; a flood is rate-limited; a
retained message is cleared; the log gets a few lines, not one per message; and afterwards a
healthy gateway still goes online, is stored, and goes offline by its will.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database
from edgefleet.db.tables import Event, WebhookDelivery
from edgefleet.domain.events import RATE_LIMITED_RESOURCE
from edgefleet.errors import ValidationError
from edgefleet.mqtt.router import INBOUND, RATE_LIMITED, RETAINED
from edgefleet.protocol import topics
from edgefleet.protocol.messages import MAX_MESSAGE_BYTES, MAX_PACKET_BYTES, REASONS
from edgefleet.settings import EventSettings, MQTTSettings, Settings
from tests.brokers import free_port, require
from tests.gateways import eventually, register, start
from tests.receivers import receiving

CHANNELS = ("client", "status")
OUTCOMES = ("accepted", "rejected", "ignored", "failed")
KNOWN_REASONS = REASONS | {topics.BAD_TOPIC, RATE_LIMITED, RETAINED}


# --- metrics and the database --------------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _inbound() -> Counter[tuple[str, str]]:
    # read from the counter itself, not the registry: a registry read collects every metric
    # (the process collector reads /proc), and the waits below poll this every 50 ms
    got: Counter[tuple[str, str]] = Counter({(c, o): 0 for c in CHANNELS for o in OUTCOMES})
    for family in INBOUND.collect():
        for s in family.samples:
            if s.name == "edgefleet_mqtt_messages_total":
                got[(s.labels["channel"], s.labels["outcome"])] = int(s.value)
    return got


def _rejected() -> Counter[tuple[str, str]]:
    return Counter(
        {
            (c, r): _sample("edgefleet_mqtt_rejected_total", channel=c, reason=r)
            for c in CHANNELS
            for r in KNOWN_REASONS
        }
    )


def _all_rejected() -> float:
    """Every rejection counted, whatever its reason label (one not in KNOWN_REASONS too)."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "edgefleet_mqtt_rejected":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def _count(c: Container, table: Any, **where: Any) -> int:
    async with c.db.session() as s:
        q = select(func.count()).select_from(table)
        for k, v in where.items():
            q = q.where(getattr(table, k) == v)
        return int((await s.scalar(q)) or 0)


def _rss(pid: int | str = "self") -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# --- publishing as the gateway, with Mosquitto's own client --------------------------------


def _pub_args(c: Container, uuid: str, psk: str, channel: str) -> list[str]:
    """``mosquitto_pub`` as the gateway (its PSK identity and key), QoS 1, to a topic of its."""
    return [
        *(require("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(c.settings.mqtt.gateway_port)),
        *("--psk", psk, "--psk-identity", uuid, "-q", "1"),
        *("-t", topics.topic(uuid, topics.Channel(channel))),
    ]


def publish(
    c: Container, uuid: str, psk: str, channel: str, payloads: list[bytes], *, retain: bool = False
) -> subprocess.CompletedProcess[bytes] | None:
    """Publish ``payloads`` as the gateway: one ``mosquitto_pub -l`` for those that fit on a
    line, one ``-s`` (or ``-n``) each for the others. Returns the last run."""
    base = [*_pub_args(c, uuid, psk, channel), *(["-r"] if retain else [])]
    lines = [p for p in payloads if p and b"\n" not in p and b"\0" not in p]
    runs: list[tuple[list[str], bytes]] = []
    if lines:
        runs.append(([*base, "-l"], b"\n".join(lines) + b"\n"))
    for p in payloads:
        if not p:
            runs.append(([*base, "-n"], b""))
        elif b"\n" in p or b"\0" in p:
            runs.append(([*base, "-s"], p))
    result = None
    for argv, stdin in runs:
        result = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)
    return result


def _check_published(result: subprocess.CompletedProcess[bytes] | None) -> None:
    assert result is not None and result.returncode == 0, result and result.stderr.decode()


def _wait_counted(before: Counter[tuple[str, str]], n: int, seconds: float = 300) -> None:
    """Block (a thread) until the router has counted ``n`` more messages (the deadline only
    stops a hang: a loaded 2-core machine takes minutes for the 10,000-message flood)."""
    deadline = time.monotonic() + seconds
    while (got := (_inbound() - before).total()) < n:
        assert time.monotonic() < deadline, f"{got} of {n} messages counted within {seconds} s"
        time.sleep(0.05)


# --- payloads ------------------------------------------------------------------------------


def _event(data: bytes, resource: bytes = b"/system/properties/aliasName") -> bytes:
    return b'{"method":"put","resource":"' + resource + b'","data":' + data + b"}"


def _sized(n: int) -> bytes:
    """An event of exactly ``n`` bytes (n ≥ 64)."""
    head = _event(b'"')[:-1]
    return head + b"a" * (n - len(head) - 2) + b'"}'


ANY_TEXT = st.text(st.characters(exclude_categories=[]), max_size=12)  # NUL, surrogates too
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(ANY_TEXT, kids, max_size=4),
    max_leaves=15,
)
MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "method": st.sampled_from(["get", "put", "post", "delete", "PUT"]) | ANY_JSON,
        "resource": ANY_TEXT.map(lambda s: "/" + s) | ANY_JSON,
        "task_id": ANY_TEXT | ANY_JSON,
        "code": st.integers() | ANY_JSON,
        "event_id": ANY_TEXT | ANY_JSON,
        "sign": ANY_JSON,
        "data": ANY_JSON,
    },
)


def _dumps(doc: Any, ascii_only: bool) -> bytes:
    # lone surrogates: escaped (\\ud800) with ensure_ascii, else as raw (invalid UTF-8) bytes
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


PAYLOADS = st.one_of(
    st.builds(_dumps, MESSAGES, st.booleans()),
    st.integers(1, 20_000).map(lambda n: _event(b"[" * n + b"]" * n)),
    st.integers(1, 5_000).map(lambda n: _event(b'{"a":' * n + b"0" + b"}" * n)),
    st.integers(1, 6_000).map(lambda n: _event(b"9" * n)),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1e300", b"-0"]).map(_event),
    st.binary(max_size=200),
    # around the protocol's limit, still within the broker's packet limit: the server says
    st.integers(MAX_MESSAGE_BYTES - 16, MAX_MESSAGE_BYTES + 512).map(_sized),
)


class Batch(list[tuple[str, bytes]]):
    """The messages of one example, shown short: hypothesis replays a failing example with the
    repr of its arguments, and a full one (up to 16 payloads of 256 KiB) is refused as too large,
    hiding the failure itself."""

    def __repr__(self) -> str:
        return "Batch([" + ", ".join(f"({ch!r}, {_short(p)})" for ch, p in self) + "])"


def _short(payload: bytes) -> str:
    return repr(payload) if len(payload) <= 80 else f"{payload[:60]!r}…({len(payload)} bytes)"


BATCHES = st.lists(
    st.tuples(st.sampled_from(["client", "client", "client", "status"]), PAYLOADS),
    min_size=1,
    max_size=16,
).map(Batch)

# one of each, with the reason each must be refused for
NAMED: list[tuple[str, bytes, str]] = [
    ("client", _event(b'"a\\u0000b"'), "nul"),
    (
        "client",
        _event(b'{"modelName":"UC-8112-LX\\u0000"}', b"/system/properties"),
        "nul",
    ),
    ("client", _event(b'{"key\\u0000":1}'), "nul"),
    ("client", _event(b'"\\ud800"'), "surrogate"),
    ("client", _event(b'"\xed\xa0\x80"'), "encoding"),
    ("client", _event(b"[" * 3000 + b"]" * 3000), "too_deep"),  # the 6 KB message
    ("client", _event(b"1" + b"0" * 40), "number"),
    ("client", _event(b"1e400"), "number"),
    ("client", _event(b"NaN"), "number"),
    ("client", _event(b"[-Infinity]"), "number"),
    ("client", b'{"method":"put","resource":"/a","code":"abc"}', "invalid"),
    ("client", b'{"method":["put"],"resource":"/a"}', "invalid"),
    ("client", b'{"method":"get","resource":"/a","task_id":5,"code":200}', "invalid"),
    ("client", b"\x00\x01\x02\xff\n\x80", "encoding"),  # binary
    ("client", b"[1,2]", "not_object"),
    ("client", b"{nope", "not_json"),
    ("client", _sized(MAX_MESSAGE_BYTES + 200), "too_large"),
    ("status", b"2", "bad_status"),
    ("status", b"\xff", "bad_status"),
]


# --- the tests -----------------------------------------------------------------------------


async def test_a_hostile_gateway_is_refused_with_reasons_and_the_fleet_keeps_working(
    live: Container, caplog: pytest.LogCaptureFixture
) -> None:
    (bad_uuid, bad_psk), (good_uuid, good_psk) = await register(live, 2)
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    all_at_start, known_at_start = _all_rejected(), sum(_rejected().values())

    # the named ones: each refused for its reason, each counted once
    before, rejected_before = _inbound(), _rejected()
    for channel in CHANNELS:
        payloads = [p for ch, p, _ in NAMED if ch == channel]
        _check_published(
            await asyncio.to_thread(publish, live, bad_uuid, bad_psk, channel, payloads)
        )
    await asyncio.to_thread(_wait_counted, before, len(NAMED))
    assert _rejected() - rejected_before == Counter((ch, r) for ch, _, r in NAMED)
    assert (_inbound() - before)[("client", "failed")] == 0

    # generated ones: whatever they are, each is counted once, accepted or refused with a
    # known reason, and none fails in the server
    @settings(
        max_examples=40,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(BATCHES)
    def hostile(batch: Batch) -> None:
        before, all_before = _inbound(), _all_rejected()
        for channel in CHANNELS:
            payloads = [p for ch, p in batch if ch == channel]
            if payloads:
                _check_published(publish(live, bad_uuid, bad_psk, channel, payloads))
        _wait_counted(before, len(batch))
        got = _inbound() - before
        assert got.total() == len(batch)
        assert not [k for k in got if k[1] == "failed"], got
        rejected = sum(n for (_, outcome), n in got.items() if outcome == "rejected")
        assert _all_rejected() - all_before == rejected  # each with a reason

    await asyncio.to_thread(hostile)
    # every reason given is one of the documented ones
    assert _all_rejected() - all_at_start == sum(_rejected().values()) - known_at_start
    # no traceback, and a few warning lines about the gateway (five a minute), not one per
    # message (hundreds here)
    assert not [r for r in caplog.records if r.exc_info], "a hostile message raised"
    about = [r for r in caplog.records if "rejected MQTT message" in r.getMessage()]
    minutes = int((time.monotonic() - started) // 60) + 1
    assert 0 < len(about) <= 5 * minutes

    # a healthy gateway: online within 2 s of its connect, its events stored, offline by will
    [gw], [run] = start(live, [(good_uuid, good_psk)])
    try:
        await asyncio.wait_for(gw.connected.wait(), 20)
        loop = asyncio.get_running_loop()
        connected_at = loop.time()

        async def online() -> bool:
            return (await live.fleet.get_device(good_uuid)).device.connection_status == "online"

        while not await online():
            await asyncio.sleep(0.02)
            assert loop.time() - connected_at < 10, "not online"
        assert loop.time() - connected_at <= 2.0
        await gw.emit("put", "/system/properties/defaultRoute", "wwan0")
        await gw.emit("post", "/alarms", {"severity": "critical", "message": "disk full"})

        async def stored() -> bool:
            return (
                await _count(live, Event, device_uuid=good_uuid, type="property_update") == 1
                and await _count(live, Event, device_uuid=good_uuid, severity="critical") == 1
            )

        await eventually(stored)
        gw.crash()

        async def offline() -> bool:
            return await _count(live, Event, device_uuid=good_uuid, type="device_offline") == 1

        await eventually(offline)
        assert (await live.fleet.get_device(good_uuid)).device.connection_status == "offline"
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


@contextmanager
def _sampling_rss(pid: int | str, every: float = 0.05) -> Iterator[list[int]]:
    """Sample a process's RSS in a thread while the block runs."""
    samples = [_rss(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            samples.append(_rss(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append(_rss(pid))


async def test_a_publish_over_the_packet_limit_is_refused_by_the_broker(
    live: Container, tmp_path: Path
) -> None:
    """20 MB, eighty times the limit: enough to show that the broker reads none of it (it
    closes the connection on the packet's header) without pushing 150 MB through TLS on a
    shared machine; past the header the size changes nothing. The payload comes from a file,
    so the test's own memory (the server's process) holds none of it either."""
    [(uuid, psk)] = await register(live, 1)
    broker = live.messaging.broker
    assert broker is not None and broker.pid is not None and broker.files is not None
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(20):
            f.write(os.urandom(1024 * 1024))
    before = _inbound()
    server_rss = _rss()
    with _sampling_rss(broker.pid) as broker_rss:
        result = await asyncio.to_thread(
            subprocess.run,
            [*_pub_args(live, uuid, psk, "client"), "-f", str(big)],
            capture_output=True,
            timeout=60,
        )
    assert result.returncode != 0, "the broker took it"  # the connection closed under it
    assert "oversize packet" in broker.files.log.read_text()
    assert max(broker_rss) - broker_rss[0] < 4 * 1024 * 1024
    # a packet just within the limit passes the broker (the server refuses it as too large);
    # once it is counted, the server has seen all it will see of this gateway
    ok = await asyncio.to_thread(
        publish, live, uuid, psk, "client", [_sized(MAX_PACKET_BYTES - 200)]
    )
    _check_published(ok)
    await asyncio.to_thread(_wait_counted, before, 1)
    assert (_inbound() - before) == Counter({("client", "rejected"): 1})
    assert _rss() - server_rss < 4 * 1024 * 1024
    assert await _count(live, Event, device_uuid=uuid, type="gateway_event") == 0
    # and the server never sends a gateway what the broker would refuse
    with pytest.raises(ValidationError, match="at most"):
        await live.messaging.relay.request(uuid, "put", "/x", "y" * MAX_MESSAGE_BYTES, wait=1)
    assert live.messaging.link.connected.is_set()


@pytest.fixture
async def live_webhooks(settings: Settings, database: Database) -> AsyncIterator[Container]:
    """``live`` whose webhooks may reach the test's receiver on 127.0.0.1; the other event
    settings (the gateway rate among them) at their defaults."""
    settings.events = EventSettings(webhook_allow_networks=[ipaddress.ip_network("127.0.0.0/8")])
    settings.mqtt = MQTTSettings(
        gateway_host="127.0.0.1", gateway_port=free_port(), server_port=free_port()
    )
    c = build(settings, db=database)
    await c.start_messaging()
    await c.messaging.link.wait_connected(10)
    yield c
    await c.stop_messaging()


async def test_a_flood_of_events_from_one_gateway_is_rate_limited(live_webhooks: Container) -> None:
    """10,000 property events as fast as Mosquitto's client sends them: the gateway's burst
    and rate pass, the rest is dropped and acknowledged, one alarm is raised, and the
    webhook deliveries stay far below 10,000 while the server's memory stays flat."""
    live = live_webhooks
    events = live.settings.events
    [(uuid, psk)] = await register(live, 1)
    async with receiving() as receiver:
        sub = await live.notifications.create(
            "property_update", "http", receiver.url + "/hook", "test"
        )
        assert sub.confirmation.ok
        dropped = _sample("edgefleet_mqtt_rejected_total", channel="client", reason=RATE_LIMITED)
        before = _inbound()
        flood = [
            _event(json.dumps({"data": i}).encode(), b"/system/properties/counter")
            for i in range(10_000)
        ]
        started = time.monotonic()
        with _sampling_rss("self") as rss:
            _check_published(await asyncio.to_thread(publish, live, uuid, psk, "client", flood))
            await asyncio.to_thread(_wait_counted, before, len(flood))
            accepted = (_inbound() - before)[("client", "accepted")]

            async def all_stored() -> bool:
                n = await _count(live, Event, device_uuid=uuid, type="property_update")
                return n == accepted

            await eventually(all_stored)
        elapsed = time.monotonic() - started
        stored = await _count(live, Event, device_uuid=uuid, type="property_update")
        limited = (
            _sample("edgefleet_mqtt_rejected_total", channel="client", reason=RATE_LIMITED)
            - dropped
        )
        assert stored + limited == len(flood)
        assert (
            events.gateway_burst
            <= stored
            <= events.gateway_burst + events.gateway_rate * (elapsed + 1)
        )
        assert await _count(live, WebhookDelivery, event_type="property_update") == stored
        async with live.db.session() as s:
            [alarm] = (
                await s.scalars(
                    select(Event).where(
                        Event.device_uuid == uuid, Event.resource == RATE_LIMITED_RESOURCE
                    )
                )
            ).all()
        assert alarm.severity == "major" and "rate limited" in alarm.text
        # measured here: +3 to +11 MiB limited, +32 MiB on SQLite without the limit
        growth = max(rss) - rss[0]
        assert growth < 24 * 1024 * 1024, f"the server grew by {growth / 2**20:.0f} MiB"


async def test_a_retained_event_is_cleared_and_not_stored_again_after_a_reconnect(
    live: Container,
) -> None:
    [(uuid, psk)] = await register(live, 1)
    alarm = _event(b'{"severity":"major","message":"fan"}', b"/alarms")
    _check_published(
        await asyncio.to_thread(publish, live, uuid, psk, "client", [alarm], retain=True)
    )

    async def stored_once() -> bool:
        return await _count(live, Event, device_uuid=uuid, resource="/alarms") == 1

    await eventually(stored_once)  # heard live: stored
    before, rejected_before = _inbound(), _rejected()
    # the server's connection is taken over and comes back: it subscribes again, and the
    # broker hands it the retained copy
    link = live.messaging.link
    connects = link.connects
    mqtt = live.settings.mqtt
    async with aiomqtt.Client(
        mqtt.server_host,
        mqtt.server_port,
        username=mqtt.server_username,
        password=live.settings.mqtt_server_password(),
        identifier=link.client_id,
        clean_session=False,
    ):
        pass

    async def reconnected() -> bool:
        return link.connects > connects and link.connected.is_set()

    await eventually(reconnected)

    async def retained_copy_heard() -> bool:
        got = _inbound() - before
        return got[("client", "accepted")] + got[("client", "rejected")] >= 1

    await eventually(retained_copy_heard)
    # events are stored in order: once a later one is, the retained copy would be too
    marker = _event(b"1", b"/marker")
    _check_published(await asyncio.to_thread(publish, live, uuid, psk, "client", [marker]))

    async def marker_stored() -> bool:
        return await _count(live, Event, device_uuid=uuid, resource="/marker") == 1

    await eventually(marker_stored)
    assert await _count(live, Event, device_uuid=uuid, resource="/alarms") == 1
    assert (_rejected() - rejected_before)[("client", RETAINED)] == 1

    # cleared: a new subscriber gets no retained message on that topic
    async with aiomqtt.Client(
        mqtt.server_host,
        mqtt.server_port,
        username=mqtt.server_username,
        password=live.settings.mqtt_server_password(),
    ) as probe:
        await probe.subscribe(topics.topic(uuid, topics.Channel.CLIENT), qos=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                async for message in probe.messages:
                    raise AssertionError(f"still retained: {message.payload!r}")
