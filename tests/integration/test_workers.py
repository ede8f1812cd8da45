"""Every background loop of a running server is supervised: a failure injected into one
(a method it calls raises once) is logged, counted in ``/metrics``, reported per worker by
``/readyz``, and the loop restarted; a loop that keeps failing makes ``/readyz`` 503 until
it has run healthy again. On SQLite and PostgreSQL, with the embedded Mosquitto."""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database
from edgefleet.db.repos.events import EventRepo
from edgefleet.db.repos.files import FileRepo
from edgefleet.db.repos.notifications import NotificationRepo
from edgefleet.domain.events import EventType, NewEvent
from edgefleet.protocol import topics
from edgefleet.protocol.messages import EventMessage, encode
from edgefleet.services import presence as presence_module
from edgefleet.settings import MQTTSettings, Settings
from edgefleet.workers import WorkerState
from tests.brokers import free_port
from tests.gateways import eventually, register

FAULT = "injected fault"


@pytest.fixture
async def supervised(settings: Settings, database: Database) -> AsyncIterator[Container]:
    """The ``live`` server with quick restarts (50 ms doubling to 200 ms, healthy after
    1 s), a presence sweep and both retentions every 0.3 s, file expiry every second, and
    its first reconciliation over."""
    settings.mqtt = MQTTSettings(
        gateway_host="127.0.0.1",
        gateway_port=free_port(),
        server_port=free_port(),
        presence_sweep_seconds=0.3,
    )
    settings.events.retention_interval_seconds = 0.3
    settings.storage.file_ttl_seconds = 4  # expiry every second
    c = build(settings, db=database)
    c.workers.first_delay, c.workers.max_delay, c.workers.healthy_after = 0.05, 0.2, 1.0
    monitor = c.messaging.monitor
    monitor.grace, monitor.quiet, monitor.settle_max, monitor.probe_timeout = 0.1, 0.1, 0.3, 1.0
    await c.start_messaging()
    await c.messaging.link.wait_connected(10)
    await eventually(lambda: _true(monitor.reconciled.is_set()))
    yield c
    await c.stop_messaging()
    # the presence monitor's loops stopped, not left running past the stop's timeout (the
    # sweep swallowed its cancellation in asyncio.wait_for and held most teardowns for 10 s)
    for name in ("presence-sweep", "presence-heal"):
        w = c.workers.get(name)
        assert w is not None and w.task is not None and w.task.done(), name


async def _true(value: bool) -> bool:
    return value


def raise_once(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """Replace ``owner.name`` by a callable that raises the first time, then delegates;
    returns a list that counts the calls."""
    original = getattr(owner, name)
    calls: list[int] = []

    def fault() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(FAULT)

    if inspect.iscoroutinefunction(original):

        async def patched_async(*args: Any, **kwargs: Any) -> Any:
            fault()
            return await original(*args, **kwargs)

        monkeypatch.setattr(owner, name, patched_async)
    else:

        def patched(*args: Any, **kwargs: Any) -> Any:
            fault()
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, patched)
    return calls


Inject = Callable[[Container, pytest.MonkeyPatch], Awaitable[None]]


async def _link(c: Container, mp: pytest.MonkeyPatch) -> None:
    # its next connection fails in the connect callback; the server's own client id is
    # taken over on the broker, which ends the current one
    raise_once(mp, c.messaging.link, "on_connect")
    assert c.messaging.broker is not None
    await c.messaging.broker.kick([c.messaging.link.client_id])


async def _presence_writer(c: Container, mp: pytest.MonkeyPatch) -> None:
    [(uuid, _)] = await register(c, 1)
    presence = c.messaging.presence
    written = presence.written
    raise_once(mp, presence_module, "_take")
    presence.apply_status(uuid, True)
    # the status was still queued when the writer restarted (the sweep may soon set it
    # back: no gateway answers for this uuid)
    await eventually(lambda: _true(presence.written > written), 10)


async def _sweep(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, c.messaging.presence, "online_uuids")


async def _reconcile(c: Container, mp: pytest.MonkeyPatch) -> None:
    sweep = c.workers.get("presence-sweep")
    assert sweep is not None
    await sweep.stop()  # it asks for the same list: the fault is the reconciliation's
    raise_once(mp, c.messaging.presence, "online_uuids")
    c.messaging.monitor.connected()  # the sweep waits while a reconciliation runs
    await eventually(lambda: _true(c.messaging.monitor.reconciled.is_set()), 10)


async def _heal(c: Container, mp: pytest.MonkeyPatch) -> None:
    [(uuid, _)] = await register(c, 1)
    raise_once(mp, c.messaging.presence, "statuses_of")
    event = EventMessage(method="put", resource="/system/alerts", data={"x": 1}, code=200)
    await c.messaging.router(topics.topic(uuid, topics.Channel.CLIENT), encode(event), False)


async def _engine(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, c.tasks.engine, "step")
    c.tasks.engine.wake()


async def _results(c: Container, mp: pytest.MonkeyPatch) -> None:
    [(uuid, _)] = await register(c, 1)
    raise_once(mp, c.tasks.engine.results._batches, "write")
    c.tasks.engine.online(uuid)


async def _event_writer(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, c.events._batches, "write")
    c.events.emit(NewEvent(EventType.GATEWAY_EVENT, c.events.clock(), None, "/lost"))
    c.events.emit(NewEvent(EventType.GATEWAY_EVENT, c.events.clock(), None, "/later"))


async def _event_retention(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, EventRepo, "delete_older_than")


async def _file_expiry(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, FileRepo, "expired")


async def _dispatcher(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, c.notifications.dispatcher, "_round")
    c.notifications.dispatcher.wake()


async def _webhook_retention(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, NotificationRepo, "delete_finished_before")


async def _broker(c: Container, mp: pytest.MonkeyPatch) -> None:
    broker = c.messaging.broker
    assert broker is not None and broker.pid is not None
    raise_once(mp, broker, "_spawn")
    os.kill(broker.pid, signal.SIGKILL)  # the watcher's first restart of it fails

    async def back() -> bool:
        return broker.pid is not None and c.messaging.link.connected.is_set()

    await eventually(back, 30)


async def _broker_sync(c: Container, mp: pytest.MonkeyPatch) -> None:
    broker = c.messaging.broker
    assert broker is not None
    raise_once(mp, broker, "reload")
    await register(c, 1)  # returns once the broker reloaded: the restarted sync tried again


async def _gateway_keys(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, c.keys, "refresh")
    c.keys._wake.set()


async def _loop_lag(c: Container, mp: pytest.MonkeyPatch) -> None:
    raise_once(mp, c.loop_lag, "record")


async def _feed(c: Container, mp: pytest.MonkeyPatch) -> None:
    feed = c.event_log.feed
    sub = await feed.subscribe(lambda e: e.resource == "/streamed")
    try:
        raise_once(mp, feed, "_poll")
        c.events.emit(NewEvent(EventType.GATEWAY_EVENT, c.events.clock(), None, "/streamed"))

        async def streamed() -> bool:  # by the restarted tailer, to the same stream
            return any(e.resource == "/streamed" for e in sub.take())

        await eventually(streamed, 10)
    finally:
        sub.close()


INJECTIONS: dict[str, Inject] = {
    "broker-link": _link,
    "presence-writer": _presence_writer,
    "presence-sweep": _sweep,
    "presence-reconcile": _reconcile,
    "presence-heal": _heal,
    "task-engine": _engine,
    "task-results": _results,
    "event-writer": _event_writer,
    "event-retention": _event_retention,
    "file-expiry": _file_expiry,
    "webhook-dispatcher": _dispatcher,
    "webhook-retention": _webhook_retention,
    "embedded-broker": _broker,
    "embedded-broker-sync": _broker_sync,
    "gateway-keys": _gateway_keys,
    "loop-lag": _loop_lag,
    "event-feed": _feed,
}


def _failures(name: str) -> float:
    labels = {"worker": name}
    return REGISTRY.get_sample_value("edgefleet_worker_failures_total", labels) or 0.0


def _scraped(text: str, metric: str, worker: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and sample.labels == {"worker": worker, **labels}:
                return float(sample.value)
    return None


async def test_every_loop_of_a_live_server_is_a_supervised_worker(supervised: Container) -> None:
    started = {w.name for w in supervised.workers}
    streamless = set(INJECTIONS) - {"event-feed"}  # the tailer runs only while streamed to
    assert started == streamless


@pytest.mark.parametrize("worker", sorted(INJECTIONS))
async def test_a_failure_injected_into_a_worker_is_reported_counted_and_restarted(
    supervised: Container, monkeypatch: pytest.MonkeyPatch, worker: str
) -> None:
    c = supervised
    before = _failures(worker)
    await INJECTIONS[worker](c, monkeypatch)

    async def restarted() -> bool:
        w = c.workers.get(worker)
        return w is not None and w.failures == 1 and w.restarts >= 1

    await eventually(restarted, 15)
    w = c.workers.get(worker)
    assert w is not None and w.state in (WorkerState.RUNNING, WorkerState.FINISHED)
    transport = httpx.ASGITransport(app=create_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        r = await api.get("/readyz")
        body = r.json()
        assert body["workers"][worker]["failures"] == 1
        assert body["workers"][worker]["lastError"] == f"RuntimeError: {FAULT}"
        assert body["workers"][worker]["failing"] is False
        assert body["checks"]["workers"] is True  # one failure, restarted: still ready
        metrics = (await api.get("/metrics/")).text
    assert _scraped(metrics, "edgefleet_worker_failures_total", worker) == before + 1
    assert _failures(worker) == before + 1
    if w.forever:  # running again (one that may end may have finished meanwhile)
        state = {"edgefleet_worker_state": "running"}
        assert _scraped(metrics, "edgefleet_worker_state", worker, **state) == 1


async def test_readyz_is_503_while_a_worker_keeps_failing_and_200_once_it_runs_again(
    supervised: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = supervised
    [(uuid, _)] = await register(c, 1)
    original = presence_module._take
    broken = True

    def take(pending: dict[Any, Any], limit: int) -> dict[Any, Any]:
        if broken:
            raise RuntimeError(FAULT)
        return original(pending, limit)

    monkeypatch.setattr(presence_module, "_take", take)
    presence = c.messaging.presence
    written = presence.written
    presence.apply_status(uuid, True)  # stays queued while the writer fails
    transport = httpx.ASGITransport(app=create_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:

        async def not_ready() -> bool:
            return (await api.get("/readyz")).status_code == 503

        await eventually(not_ready, 15)
        body = (await api.get("/readyz")).json()
        assert body["checks"]["workers"] is False and body["checks"]["database"] is True
        writer = body["workers"]["presence-writer"]
        assert writer["failing"] is True and writer["failures"] >= 3
        assert {n for n, w in body["workers"].items() if w["failing"]} == {"presence-writer"}
        broken = False

        async def ready() -> bool:
            return (await api.get("/readyz")).status_code == 200

        await eventually(ready, 15)
        assert not (await api.get("/readyz")).json()["workers"]["presence-writer"]["failing"]
    assert presence.written > written  # what waited is written (the sweep may undo it later)
