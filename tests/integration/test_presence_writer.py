"""The presence writer: statuses and properties queued, folded and written in batches."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from edgefleet.bootstrap import Container
from edgefleet.services.presence import PresenceService
from tests.gateways import register


async def _written(presence: PresenceService) -> None:
    writer = asyncio.create_task(presence.run())
    try:
        await asyncio.wait_for(presence.drained(), 10)
    finally:
        writer.cancel()


async def test_updates_are_folded_in_arrival_order(container: Container) -> None:
    creds = await register(container, 3)
    a, b, c = (u for u, _ in creds)
    presence = PresenceService(container.db)
    # a: a whole object, then one key changes; b: one key changes on top of what is stored,
    # then the whole object arrives; c: key events only, over the stored object
    presence.replace_properties(a, {"modelName": "UC-8112", "softwareVersion": "1.0"})
    presence.apply_property_event(a, "put", "/system/properties/softwareVersion", {"data": "1.1"})
    presence.replace_properties(c, {"modelName": "UC-3111", "aliasName": "old"})
    await _written(presence)
    presence.apply_property_event(b, "put", "/system/properties/aliasName", "first")
    presence.replace_properties(b, {"modelName": "UC-8220"})
    presence.apply_property_event(c, "put", "/system/properties/aliasName", "new")
    presence.apply_property_event(c, "put", "/system/properties", {"defaultRoute": "eth1"})
    presence.apply_status(a, True)
    presence.apply_status(a, False)
    presence.apply_status(b, True)
    presence.apply_property_event("no-such-device", "put", "/system/properties/x", 1)
    await _written(presence)

    da, db_, dc = [(await container.fleet.get_device(u)).device for u in (a, b, c)]
    assert da.properties == {"modelName": "UC-8112", "softwareVersion": "1.1"}
    assert da.software_version == "1.1" and da.connection_status == "offline"
    assert db_.properties == {"modelName": "UC-8220"} and db_.model_name == "UC-8220"
    assert db_.connection_status == "online"
    assert dc.properties == {"modelName": "UC-3111", "aliasName": "new", "defaultRoute": "eth1"}
    assert dc.alias_name == "new" and dc.default_route == "eth1"
    # one row per gateway per batch, however many updates it had; the unknown one wrote none
    assert presence.properties_written == 2 + 2


def _written_metric(kind: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_presence_rows_written_total", {"kind": kind}) or 0


async def test_batches_are_bounded_and_all_written(container: Container) -> None:
    creds = await register(container, 25)
    before = _written_metric("status"), _written_metric("properties")
    presence = PresenceService(container.db, batch_size=10)
    for i, (uuid, _) in enumerate(creds):
        presence.apply_status(uuid, i % 2 == 0)
        presence.replace_properties(uuid, {"modelName": f"m{i}"})
    await _written(presence)
    assert presence.written == 25 and presence.properties_written == 25
    assert (_written_metric("status"), _written_metric("properties")) == (
        before[0] + 25,
        before[1] + 25,
    )
    for i, (uuid, _) in enumerate(creds):
        device = (await container.fleet.get_device(uuid)).device
        assert device.model_name == f"m{i}"
        assert device.connection_status == ("online" if i % 2 == 0 else "offline")


def _rejected(writer: str) -> float:
    labels = {"writer": writer}
    return REGISTRY.get_sample_value("edgefleet_rows_rejected_total", labels) or 0


async def test_a_row_the_database_refuses_is_quarantined_and_the_writer_goes_on(
    container: Container, caplog: pytest.LogCaptureFixture
) -> None:
    """Both databases refuse a lone surrogate in a text column; PostgreSQL also refuses NUL
    (SQLite stores it). The refused gateway's row is logged and counted, the rest of its
    batch is written, and so is everything after it."""
    poison = ["bad\ud800"] + (["bad\x00"] if container.db.dialect == "postgresql" else [])
    creds = await register(container, 4 + len(poison))
    good, bad = [u for u, _ in creds[:4]], [u for u, _ in creds[4:]]
    rejected = _rejected("presence-writer")
    presence = PresenceService(container.db)
    writer = asyncio.create_task(presence.run())
    try:
        for uuid in good[:2]:
            presence.replace_properties(uuid, {"modelName": "UC-8112"})
            presence.apply_status(uuid, True)
        for uuid, value in zip(bad, poison, strict=True):
            presence.replace_properties(uuid, {"modelName": "UC-8112", "aliasName": value})
            presence.apply_status(uuid, True)
        await asyncio.wait_for(presence.drained(), 30)
        for uuid in good[2:]:  # after the refusal: the writer still runs
            presence.replace_properties(uuid, {"modelName": "UC-3111"})
            presence.apply_status(uuid, True)
        await asyncio.wait_for(presence.drained(), 30)
        assert not writer.done()
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    devices = {u: (await container.fleet.get_device(u)).device for u in good + bad}
    assert [devices[u].model_name for u in good] == ["UC-8112"] * 2 + ["UC-3111"] * 2
    assert all(devices[u].connection_status == "online" for u in good + bad)
    assert all(devices[u].properties == {} for u in bad)  # quarantined, not half-written
    assert _rejected("presence-writer") == rejected + len(bad)
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert all(any(u in m for m in logged) for u in bad), logged


async def test_a_status_through_a_broker_node_records_the_node(container: Container) -> None:
    """With broker nodes the status write records the node it came through (one UPDATE); a
    gateway back online through another node keeps its change time; a node's death sets
    offline only the gateways still on it."""
    creds = await register(container, 3)
    a, b, c = (u for u, _ in creds)
    presence = PresenceService(container.db)
    presence.apply_status(a, True, "m1")
    presence.apply_status(b, True, "m1")
    presence.apply_status(c, True)  # a single broker: no node
    await _written(presence)
    first = (await container.fleet.get_device(a)).device
    assert (first.connection_status, first.broker_node) == ("online", "m1")
    assert (await container.fleet.get_device(c)).device.broker_node is None
    presence.apply_status(a, True, "m2")  # reconnected through another node
    await _written(presence)
    moved = (await container.fleet.get_device(a)).device
    assert (moved.connection_status, moved.broker_node) == ("online", "m2")
    assert moved.connection_changed_at == first.connection_changed_at
    assert await container.fleet.presence(a) == ("online", "m2")
    presence.apply_status(a, False, "m1")  # its will, published late by the node it left
    await _written(presence)
    assert await container.fleet.presence(a) == ("online", "m2")
    assert await presence.online_uuids(["m1"]) == [b]
    assert await presence.node_lost("m1") == [b]
    assert await container.fleet.presence(b) == ("offline", "m1")
    assert await container.fleet.presence(a) == ("online", "m2")
    assert sorted(await presence.online_uuids()) == sorted([a, c])
