"""The composition root's wiring (bootstrap.py): each object is given, when it is made, what
it calls, and the broker link's cycle is closed (the relay and the router send through the
link, the router and the presence monitor reach each other)."""

from __future__ import annotations

import pytest

from edgefleet.bootstrap import Container
from edgefleet.protocol import topics


async def test_each_service_is_given_the_listeners_and_sinks_it_calls(
    container: Container,
) -> None:
    m, engine, task_events = container.messaging, container.tasks.engine, container.task_events
    assert m.router.tasks is engine and m.monitor.tasks is engine
    assert m.router.events is container.events and m.monitor.events is container.events
    assert m.router.relay is m.relay
    assert m.router.monitor is m.monitor
    assert m.monitor.link_up is m.link.connected
    assert container.fleet.credential_listeners == [
        container.keys.credentials_changed,
        task_events.devices,
    ]
    assert engine.history_observers == [task_events.history]
    assert engine.task_observers == [task_events.task]


async def test_the_relay_and_the_router_send_through_the_broker_link(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, bytes, bool]] = []

    async def publish(topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        sent.append((topic, payload, retain))

    m = container.messaging
    monkeypatch.setattr(m.link, "publish", publish)
    uuid = "6f1c3a52-0000-4000-8000-000000000001"
    await m.relay.send(uuid, "GET", "/system/time", None, "task-1")
    assert m.router.clear_retained is not None
    await m.router.clear_retained(topics.topic(uuid, topics.Channel.CLIENT), None)
    (request_topic, request, request_retained), cleared = sent
    assert request_topic == topics.topic(uuid, topics.Channel.SERVER)
    assert b'"task-1"' in request and not request_retained
    assert cleared == (topics.topic(uuid, topics.Channel.CLIENT), b"", True)
