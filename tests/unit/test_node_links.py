"""The links to broker nodes (mqtt/nodes.py) without a broker: where a request goes, the
per-gateway subscriptions of waiting requesters, nodes found by DNS, a dead node declared
once after its grace."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgefleet.domain.nodes import BrokerNode
from edgefleet.mqtt.client import Receipt
from edgefleet.mqtt.nodes import NodeLinks
from edgefleet.protocol import topics
from edgefleet.workers import Workers


async def _ignore(topic: str, payload: bytes, retained: bool, receipt: Receipt) -> None:
    return None


def links(workers: Workers, **kwargs: Any) -> NodeLinks:
    async def dead(node: str) -> None:
        return None

    options: dict[str, Any] = {"dead": dead} | kwargs
    return NodeLinks(
        instance="edgefleet-t",
        username="u",
        password="p",
        workers=workers,
        consume=lambda name: _ignore,
        answers=_ignore,
        **options,
    )


async def test_a_request_goes_to_the_gateways_node_else_where_it_was_heard_else_everywhere() -> (
    None
):
    workers = Workers()
    nodes = links(workers)
    nodes.configure([BrokerNode("m1", "127.0.0.1", 1), BrokerNode("m2", "127.0.0.1", 2)])
    nodes.start()
    try:
        for name in ("m1", "m2"):  # as if connected (nothing listens there)
            nodes.link(name).connected.set()
        assert nodes.targets("gw", "m2") == ["m2"]
        assert nodes.targets("gw", None) == ["m1", "m2"]
        assert nodes.targets("gw", "gone") == ["m1", "m2"]  # a node no longer listed
        nodes.heard["gw"] = "m1"
        assert nodes.targets("gw", None) == ["m1"]
        assert nodes.targets("gw", "m2") == ["m2"]  # the database's word first
        nodes.link("m2").connected.clear()  # m2 is down: its gateways are moving
        assert nodes.targets("gw", "m2") == ["m1"]
        nodes.link("m1").connected.clear()
        assert nodes.targets("gw", "m2") == ["m1", "m2"]
    finally:
        await workers.stop()


async def test_waiting_requesters_share_one_subscription_per_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers = Workers()
    nodes = links(workers)
    nodes.configure([BrokerNode("m1", "127.0.0.1", 1), BrokerNode("m2", "127.0.0.1", 2)])
    nodes.start()
    calls: list[tuple[str, str, str]] = []
    for name in ("m1", "m2"):
        link = nodes.link(name)

        async def sub(topic: str, name: str = name) -> None:
            calls.append(("sub", name, topic))

        async def unsub(topic: str, name: str = name) -> None:
            calls.append(("unsub", name, topic))

        monkeypatch.setattr(link, "subscribe", sub)
        monkeypatch.setattr(link, "unsubscribe", unsub)
    topic = topics.topic("gw", topics.Channel.CLIENT)
    try:
        async with nodes.listening("gw", ["m1"]):
            async with nodes.listening("gw", ["m1", "m2"]):
                assert calls == [("sub", "m1", topic), ("sub", "m2", topic)]
            assert calls[-1] == ("unsub", "m2", topic)
        assert calls[-1] == ("unsub", "m1", topic)
        assert len(calls) == 4
    finally:
        await workers.stop()


async def test_nodes_are_found_by_dns() -> None:
    workers = Workers()
    nodes = links(workers, dns="localhost:18830")
    nodes.start()
    try:
        await asyncio.wait_for(nodes.resolved.wait(), 10)
        assert "127-0-0-1" in nodes.names
        assert nodes.link("127-0-0-1").port == 18830
    finally:
        await workers.stop()


async def test_a_node_whose_consumer_never_comes_up_is_declared_dead_once() -> None:
    workers = Workers()
    declared: list[str] = []
    gone = asyncio.Event()

    async def dead(node: str) -> None:
        declared.append(node)
        gone.set()

    nodes = links(workers, dead=dead, grace=0.5)
    nodes.configure([BrokerNode("m1", "127.0.0.1", 1)])
    nodes.start()
    try:
        await nodes.gained("m1")  # nothing listens there
        assert not nodes.consumers_up.is_set()
        await asyncio.wait_for(gone.wait(), 10)
        await asyncio.sleep(1.5)  # further checks of the grace declare nothing more
        assert declared == ["m1"]
        await nodes.lost("m1")
        assert nodes.consumed == [] and nodes.consumers_up.is_set()
    finally:
        await workers.stop()
