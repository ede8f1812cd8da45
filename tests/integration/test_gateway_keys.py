"""Gateway keys held in memory (services/keys.py): followed change by change, shared cursors
for brokers' syncs (``/broker/psk-file?since=``, ETag), and hooks answered without the
database, on both databases, across server instances and CLI commands."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import aiomqtt
import httpx
import pytest
from sqlalchemy import event

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.brokers.embedded import REWRITE_SECONDS
from edgefleet.clock import utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.keys import KeyChangeRepo
from edgefleet.domain.auth import Role, Scope
from edgefleet.services.fleet import Registration
from edgefleet.settings import Settings
from edgefleet.simulator.gateway import VirtualGateway
from tests.brokers import require
from tests.conftest import Callers
from tests.gateways import eventually

PSK_FILE = "/api/v1/broker/psk-file"


async def _register(c: Container, i: int) -> tuple[str, str]:
    view, psk = await c.fleet.register_device(Registration(f"gw{i}", f"0090e8{i:06x}"))
    return view.device.uuid, psk


@pytest.fixture
async def other(settings: Settings, database: Database) -> Container:
    """A second server instance on the same database."""
    return build(settings, db=database)


@pytest.fixture
async def following(container: Container) -> AsyncIterator[Container]:
    """``container`` with its key cache following the change log (as ``serve`` runs it)."""
    task = asyncio.create_task(container.keys.run())
    await eventually(lambda: _true(container.keys.loaded), 20)
    yield container
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


async def test_the_cache_follows_registration_rotation_and_deletion(
    container: Container,
) -> None:
    keys = container.keys
    before, _ = await _register(container, 1)  # registered before the cache is loaded
    await keys.load()
    assert await keys.key(before) is not None
    uuid, psk = await _register(container, 2)
    assert await keys.key(uuid) == psk  # known before register_device returned
    new = await container.fleet.rotate_psk(uuid)
    assert new != psk and await keys.key(uuid) == new
    assert await container.fleet.device_psk(uuid) == new
    await container.fleet.delete_devices([uuid])
    assert await keys.key(uuid) is None
    made = await container.fleet.register_many([Registration("m", "0090e8000099")])
    assert await keys.key(made[0][0].device.uuid) == made[0][1]
    # what the cache holds is what the database holds, once the log is read
    await keys.refresh()
    assert sorted(await keys.snapshot()) == sorted(await container.fleet.all_psks())


async def test_another_instance_learns_every_change_from_the_log(
    following: Container, other: Container
) -> None:
    keys = following.keys
    uuid, psk = await _register(other, 1)

    async def known(value: str | None) -> bool:
        return await keys.key(uuid) == value

    await eventually(lambda: known(psk), 10)
    new = await other.fleet.rotate_psk(uuid)
    await eventually(lambda: known(new), 10)
    await other.fleet.delete_devices([uuid])
    await eventually(lambda: known(None), 10)
    assert keys.cursor == await _latest(following)


async def _latest(c: Container) -> int:
    async with c.db.session() as s:
        return await KeyChangeRepo(s).latest()


async def _cli(settings: Settings, *args: str) -> object:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
        "EDGEFLEET_DATABASE_URL": settings.resolved_database_url,
        "EDGEFLEET_SECRET_KEY": settings.secret_key.get_secret_value(),
        "EDGEFLEET_DATA_DIR": str(settings.data_dir / "cli"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli.main", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out) if "--json" in args else out.decode()


async def test_a_running_server_follows_cli_commands(
    following: Container, settings: Settings
) -> None:
    keys = following.keys
    made = await _cli(settings, "devices", "register", "--mac", "0090e8000001", "--json")
    assert isinstance(made, dict)
    uuid, psk = str(made["uuid"]), str(made["psk"])

    async def known(value: str | None) -> bool:
        return await keys.key(uuid) == value

    await eventually(lambda: known(psk), 20)
    rotated = await _cli(settings, "devices", "rotate-key", uuid, "--json")
    assert isinstance(rotated, dict) and rotated["psk"] != psk
    await eventually(lambda: known(str(rotated["psk"])), 20)
    await _cli(settings, "devices", "delete", uuid, "--yes")
    await eventually(lambda: known(None), 20)


@pytest.fixture
async def broker_headers(callers: Callers) -> dict[str, str]:
    return (await callers.token(Role.ADMIN, Scope.BROKER)).headers


def _parse(text: str) -> tuple[int, str, list[str]]:
    head, *lines = text.splitlines()
    assert head.startswith("# cursor="), text
    cursor, mode = head.removeprefix("# cursor=").split()
    return int(cursor), mode, lines


async def test_brokers_sync_only_what_changed_since_their_cursor(
    client: httpx.AsyncClient, container: Container, broker_headers: dict[str, str]
) -> None:
    a, psk_a = await _register(container, 1)
    r = await client.get(PSK_FILE, params={"since": ""}, headers=broker_headers)
    assert r.status_code == 200 and r.headers["x-edgefleet-sync"] == "full"
    cursor, mode, lines = _parse(r.text)
    assert mode == "full" and lines == [f"{a}:{psk_a}"]
    assert r.headers["x-edgefleet-cursor"] == str(cursor)

    r = await client.get(PSK_FILE, params={"since": cursor}, headers=broker_headers)
    assert _parse(r.text) == (cursor, "changes", [])  # nothing new

    b, psk_b = await _register(container, 2)
    new_a = await container.fleet.rotate_psk(a)
    r = await client.get(PSK_FILE, params={"since": cursor}, headers=broker_headers)
    cursor2, mode, lines = _parse(r.text)
    assert mode == "changes" and cursor2 > cursor
    assert sorted(lines) == sorted([f"{b}:{psk_b}", f"{a}:{new_a}"])

    await container.fleet.delete_devices([a])
    r = await client.get(PSK_FILE, params={"since": cursor2}, headers=broker_headers)
    cursor3, mode, lines = _parse(r.text)
    assert (mode, lines) == ("changes", [f"-{a}"])
    # an older cursor gets everything since then, each gateway as it is now
    r = await client.get(PSK_FILE, params={"since": cursor}, headers=broker_headers)
    assert _parse(r.text) == (cursor3, "changes", [f"{b}:{psk_b}", f"-{a}"])
    # a cursor this fleet never gave (a database restored to an earlier state): everything
    r = await client.get(PSK_FILE, params={"since": cursor3 + 1000}, headers=broker_headers)
    assert _parse(r.text) == (cursor3, "full", [f"{b}:{psk_b}"])
    for bad in ("-1", "x", "1" * 21):
        r = await client.get(PSK_FILE, params={"since": bad}, headers=broker_headers)
        assert r.status_code == 422, bad


async def test_a_cursor_older_than_the_log_gets_every_key(
    client: httpx.AsyncClient,
    container: Container,
    other: Container,
    broker_headers: dict[str, str],
) -> None:
    a, psk_a = await _register(container, 1)
    b, psk_b = await _register(container, 2)
    await container.fleet.delete_devices([a])
    async with container.db.session() as s:  # a day later: the old changes are pruned
        assert await KeyChangeRepo(s).prune(utcnow() + timedelta(days=2)) == 2
    last = await _latest(container)
    # an instance started afterwards cannot tell what changed after cursor 0
    other_client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(other)), base_url="http://other"
    )
    async with other_client:
        r = await other_client.get(PSK_FILE, params={"since": 0}, headers=broker_headers)
        assert _parse(r.text) == (last, "full", [f"{b}:{psk_b}"])
        r = await other_client.get(PSK_FILE, params={"since": last - 1}, headers=broker_headers)
        assert _parse(r.text) == (last, "changes", [f"-{a}"])
    del psk_a


async def test_the_whole_file_has_an_etag_shared_by_every_instance(
    client: httpx.AsyncClient,
    container: Container,
    other: Container,
    broker_headers: dict[str, str],
) -> None:
    a, psk_a = await _register(container, 1)
    r = await client.get(PSK_FILE, headers=broker_headers)
    assert r.status_code == 200 and r.text == f"{a}:{psk_a}\n"  # the old callers' shape
    etag = r.headers["etag"]
    again = {**broker_headers, "If-None-Match": etag}
    r = await client.get(PSK_FILE, headers=again)
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    other_client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(other)), base_url="http://other"
    )
    async with other_client:
        assert (await other_client.get(PSK_FILE, headers=again)).status_code == 304
        b, _ = await _register(other, 2)
        r = await other_client.get(PSK_FILE, headers=again)
        assert r.status_code == 200 and b in r.text and r.headers["etag"] != etag
    # this instance reads the change from the log before it answers
    r = await client.get(PSK_FILE, headers=again)
    assert r.status_code == 200 and b in r.text


async def test_hooks_answer_from_memory_without_the_database(
    client: httpx.AsyncClient,
    container: Container,
    other: Container,
    broker_headers: dict[str, str],
) -> None:
    gateways = [await _register(container, i) for i in range(20)]
    await container.keys.load()

    async def authn(uuid: str, psk: str) -> str:
        body = {"username": uuid, "clientid": uuid, "password": psk}
        r = await client.post("/api/v1/broker/authn", json=body, headers=broker_headers)
        assert r.status_code == 200
        return str(r.json()["result"])

    async def authz(uuid: str) -> str:
        body = {"username": uuid, "topic": f"$ThingsPro/devices/{uuid}/client", "action": "publish"}
        r = await client.post("/api/v1/broker/authz", json=body, headers=broker_headers)
        return str(r.json()["result"])

    assert await authn(*gateways[0]) == "allow"  # the token is resolved (and cached) once
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    engine = container.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for uuid, psk in gateways:
            assert await authn(uuid, psk) == "allow"
            assert await authz(uuid) == "allow"
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # the token's own check may read it again (its cache holds it 2 s); the keys never
    assert [s for s in statements if "devices" in s or "key_changes" in s] == []

    # a new gateway is allowed as soon as its registration answered; a deleted one is
    # refused as soon as its deletion answered: no stale allow
    uuid, psk = await _register(container, 100)
    assert await authn(uuid, psk) == "allow"
    new = await container.fleet.rotate_psk(uuid)
    assert await authn(uuid, psk) == "deny" and await authn(uuid, new) == "allow"
    await container.fleet.delete_devices([uuid])
    assert await authn(uuid, new) == "deny" and await authz(uuid) == "deny"
    # a deletion made by another instance is seen when the log is read (every second)
    gone, gone_psk = gateways[1]
    await other.fleet.delete_devices([gone])
    await container.keys.refresh()
    assert await authn(gone, gone_psk) == "deny"


async def _connects(live: Container, uuid: str, psk: str) -> bool:
    """Whether a gateway with this identity and key gets a session on the live broker."""
    proc = await asyncio.create_subprocess_exec(
        require("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(live.settings.mqtt.gateway_port),
        "--psk", psk, "--psk-identity", uuid, "-i", uuid,
        "-t", f"$ThingsPro/devices/{uuid}/client", "-q", "1", "-m", "hello",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await asyncio.wait_for(proc.wait(), 30) == 0


async def test_the_embedded_broker_rewrites_its_keys_at_most_once_a_second(
    live: Container,
) -> None:
    broker = live.messaging.broker
    assert broker is not None and broker.files is not None
    held_uuid, held_psk = await _register(live, 0)
    await broker.reloaded()
    held = VirtualGateway(held_uuid, held_psk, "127.0.0.1", live.settings.mqtt.gateway_port, {})
    held_task = asyncio.create_task(held.run())
    await asyncio.wait_for(held.connected.wait(), 15)

    loop = asyncio.get_running_loop()
    rewrites, started = broker.rewrites, loop.time()
    made = [await _register(live, i) for i in range(1, 41)]  # one by one, as scripts do
    gone = made[0][0]
    await live.fleet.delete_devices([gone])
    new_key = await live.fleet.rotate_psk(held_uuid)
    await broker.reloaded()
    made_in = loop.time() - started
    # one rewrite for the first change, then one per second at most however many follow
    assert 1 <= broker.rewrites - rewrites <= 2 + made_in / REWRITE_SECONDS
    stored = dict(line.split(":") for line in broker.files.psk.read_text().splitlines())
    assert stored == dict(await live.keys.snapshot())
    assert gone not in stored and stored[held_uuid] == new_key and len(stored) == 40

    # the gateway whose key was replaced lost its session, and its old key is refused
    ended = await asyncio.wait_for(asyncio.gather(held_task, return_exceptions=True), 15)
    assert isinstance(ended[0], aiomqtt.MqttError)  # disconnected by the broker
    assert not await _connects(live, held_uuid, held_psk)
    assert await _connects(live, held_uuid, new_key)
    assert await _connects(live, *made[-1])  # the newest gateway connects
    assert not await _connects(live, gone, made[0][1])


async def test_the_event_loop_lag_is_measured_and_exported(
    live: Container, live_api: httpx.AsyncClient
) -> None:
    time.sleep(0.3)  # noqa: ASYNC251 - the stall the metric must show

    async def seen() -> bool:
        r = await live_api.get("/metrics/")
        line = next(x for x in r.text.splitlines() if x.startswith("edgefleet_loop_lag_seconds "))
        return float(line.split()[1]) >= 0.25

    await eventually(seen, 10)
    r = await live_api.get("/metrics/")
    assert "edgefleet_loop_wakeup_delay_seconds_bucket" in r.text
