"""Broker-node leases (services/nodes.py, db/repos/nodes.py) on SQLite and PostgreSQL: take,
renew, expire, balance between instances, hand over on a clean stop, and drop at once when
they cannot be renewed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.db.engine import Database
from edgefleet.db.repos.nodes import NodeRepo
from edgefleet.errors import StorageError
from edgefleet.services.nodes import NodeLeases

NODES = ["n1", "n2", "n3"]
T0 = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Consumer:
    """What an instance consumes, as the lease service tells it."""

    def __init__(self) -> None:
        self.nodes: set[str] = set()
        self.dropped = asyncio.Event()

    async def gained(self, node: str) -> None:
        assert node not in self.nodes
        self.nodes.add(node)

    async def lost(self, node: str) -> None:
        self.nodes.discard(node)
        self.dropped.set()


def leases_of(
    database: Database, name: str, clock: Clock, nodes: Callable[[], list[str]] = lambda: NODES
) -> tuple[NodeLeases, Consumer]:
    consumer = Consumer()
    leases = NodeLeases(
        database, name, nodes, gained=consumer.gained, lost=consumer.lost, clock=clock
    )
    return leases, consumer


async def holders(database: Database) -> dict[str, str]:
    async with database.session() as s:
        return {n: h for n, (h, _) in (await NodeRepo(s).leases()).items()}


async def test_a_lease_is_taken_once_until_it_expires(database: Database) -> None:
    expires = T0 + timedelta(seconds=10)
    async with database.session() as s:
        repo = NodeRepo(s)
        assert await repo.take("a", "n1", T0, expires)
        assert not await repo.take("b", "n1", T0 + timedelta(seconds=5), expires)
        assert await repo.take("a", "n1", T0 + timedelta(seconds=5), expires)  # its own
    async with database.session() as s:
        repo = NodeRepo(s)
        assert await repo.renew("a", ["n1", "n2"], T0 + timedelta(seconds=20)) == {"n1"}
        assert await repo.renew("b", ["n1"], T0 + timedelta(seconds=20)) == set()
        # renewed to T0+20: still a's at T0+15, b's after
        assert not await repo.take("b", "n1", T0 + timedelta(seconds=15), expires)
        assert await repo.take("b", "n1", T0 + timedelta(seconds=21), T0 + timedelta(seconds=31))
    assert await holders(database) == {"n1": "b"}


async def test_one_instance_takes_every_node_and_a_second_gets_its_share(
    database: Database,
) -> None:
    clock = Clock()
    a, ca = leases_of(database, "a", clock)
    b, cb = leases_of(database, "b", clock)
    await a.tick()
    assert ca.nodes == set(NODES)
    await b.tick()  # live: 2, share 2, nothing free yet
    assert cb.nodes == set()
    clock.advance(3)
    await a.tick()  # over its share: one given back
    assert len(ca.nodes) == 2
    await b.tick()
    assert len(cb.nodes) == 1
    assert ca.nodes.isdisjoint(cb.nodes)
    for _ in range(3):  # stable
        clock.advance(3)
        await a.tick()
        await b.tick()
    assert (len(ca.nodes), len(cb.nodes)) == (2, 1)
    assert await holders(database) == {n: "a" for n in ca.nodes} | {n: "b" for n in cb.nodes}


async def test_leases_move_at_once_on_a_clean_stop(database: Database) -> None:
    clock = Clock()
    a, ca = leases_of(database, "a", clock)
    b, cb = leases_of(database, "b", clock)
    await a.tick()
    await b.tick()
    await a.release()
    assert ca.nodes == set()
    await b.tick()  # a is gone from the live instances too: b's share is every node
    assert cb.nodes == set(NODES)


async def test_a_dead_instances_leases_are_taken_once_expired(database: Database) -> None:
    clock = Clock()
    a, _ = leases_of(database, "a", clock)
    b, cb = leases_of(database, "b", clock)
    await a.tick()
    clock.advance(9)  # a stopped renewing; its leases hold for 10 s
    await b.tick()
    assert cb.nodes == set()
    clock.advance(2)
    await b.tick()
    assert cb.nodes == set(NODES)
    assert await holders(database) == dict.fromkeys(NODES, "b")


async def test_a_node_gone_from_the_list_is_given_back(database: Database) -> None:
    clock = Clock()
    known = list(NODES)
    a, ca = leases_of(database, "a", clock, lambda: known)
    await a.tick()
    known.remove("n2")
    clock.advance(3)
    await a.tick()
    assert ca.nodes == {"n1", "n3"}
    assert await holders(database) == {"n1": "a", "n3": "a"}


async def test_leases_not_renewed_in_time_are_dropped_before_they_expire(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away: the instance stops consuming while its leases still hold,
    so no other instance can be consuming the same node at the same time."""
    a, ca = leases_of(database, "a", Clock())
    a.ttl, a.interval, a.margin = 2.0, 0.2, 0.5
    await a.tick()
    assert ca.nodes == set(NODES)

    def down() -> None:
        raise StorageError("database unavailable: test")

    monkeypatch.setattr(database, "session", down)
    loop = asyncio.get_running_loop()
    runner = asyncio.ensure_future(a.run())
    try:
        await asyncio.wait_for(ca.dropped.wait(), 10)
        assert loop.time() < a.valid_until + a.margin  # = when they expire
        assert ca.nodes == set()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_two_processes_with_one_instance_id_are_told(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Two server processes misconfigured with one instance id (the same
    EDGEFLEET_MQTT__CLIENT_ID) would renew each other's leases and consume the same nodes
    twice, their MQTT client ids kicking each other: each sees, at its next round, a heartbeat
    it did not write, and says so (an error, the gauge); alone again, it stops."""
    clock = Clock()
    first, _ = leases_of(database, "edge-1", clock)
    second, _ = leases_of(database, "edge-1", clock)
    await first.tick()
    clock.advance(1)
    await first.tick()
    assert not first.id_shared  # its own beats only
    clock.advance(1)
    await second.tick()
    clock.advance(1)
    with caplog.at_level("ERROR", logger="edgefleet.services.nodes"):
        await first.tick()
    assert first.id_shared
    assert "EDGEFLEET_MQTT__CLIENT_ID" in caplog.text and "edge-1" in caplog.text
    clock.advance(1)
    await first.tick()
    assert not first.id_shared  # the other stopped beating
