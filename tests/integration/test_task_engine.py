"""The task engine on its own: a real database (SQLite and PostgreSQL), no broker. Its MQTT
side is the ``send`` callable, here a recorder that plays the gateways, and the router's
calls (``response``, ``online``) made by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from edgefleet.bootstrap import Container
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.db.tables import Execution
from edgefleet.domain.tasks import TaskKind, TaskState
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.messages import ResponseMessage
from edgefleet.services.engine import TaskEngine
from edgefleet.services.tasks import TaskService, TaskSpec
from tests.gateways import register


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Sent:
    device: str
    method: str
    resource: str
    data: Any
    task_id: str


@dataclass
class Gateways:
    """The engine's ``send``: records each request; ``refuse`` makes a publish fail."""

    sent: list[Sent] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    async def send(
        self,
        device: str,
        method: str,
        resource: str,
        data: Any,
        task_id: str,
        node: str | None = None,
    ) -> None:
        if device in self.refuse:
            raise EdgefleetError(f"{device} is not reachable")
        self.sent.append(Sent(device, method, resource, data, task_id))

    def take(self) -> list[Sent]:
        out, self.sent = self.sent, []
        return out


@dataclass
class Rig:
    engine: TaskEngine
    tasks: TaskService
    gateways: Gateways
    clock: Clock
    c: Container

    async def online(self, *uuids: str) -> None:
        async with self.c.db.session() as s:
            await DeviceRepo(s).set_statuses([(u, "online") for u in uuids], self.clock())

    async def answer(self, request: Sent, code: int) -> None:
        self.engine.response(
            request.device,
            ResponseMessage(
                method=request.method, resource=request.resource, task_id=request.task_id, code=code
            ),
        )
        await self.engine.drained()

    async def executions(self) -> dict[str, Execution]:
        async with self.c.db.session() as s:
            rows = (await s.scalars(select(Execution))).all()
        return {e.device_uuid: e for e in rows}


@pytest.fixture
async def rig(container: Container) -> AsyncIterator[Rig]:
    clock = Clock()
    gateways = Gateways()
    engine = TaskEngine(
        container.db, gateways.send, clock=clock, tick=0, lease=30, result_delay=0
    )  # tick 0: housekeeping at every step
    results = asyncio.create_task(engine.run_results())
    try:
        service = TaskService(container.db, engine, clock=clock)
        yield Rig(engine, service, gateways, clock, container)
    finally:
        results.cancel()
        await asyncio.gather(results, return_exceptions=True)


def _spec(devices: list[str], **kwargs: Any) -> TaskSpec:
    return TaskSpec(
        kind=TaskKind.GROUP,
        method="get",
        resource="/system/properties",
        devices=devices,
        **kwargs,
    )


async def test_online_gateways_get_one_request_each_and_the_offline_one_when_it_returns(
    rig: Rig,
) -> None:
    uuids = [u for u, _ in await register(rig.c, 3)]
    await rig.online(*uuids[:2])
    await rig.tasks.create(_spec(uuids))

    await rig.engine.step()
    first = rig.gateways.take()
    assert sorted(r.device for r in first) == sorted(uuids[:2])
    assert len({r.task_id for r in first}) == 2
    await rig.engine.step()
    assert rig.gateways.take() == []  # claimed once

    for r in first:
        await rig.answer(r, 200)
    states = await rig.executions()
    assert [states[u].state for u in uuids] == [
        TaskState.SUCCESS.value,
        TaskState.SUCCESS.value,
        TaskState.PENDING.value,
    ]

    await rig.online(uuids[2])
    await rig.engine.step()
    [late] = rig.gateways.take()
    assert late.device == uuids[2]
    await rig.answer(late, 200)
    assert (await rig.executions())[uuids[2]].state == TaskState.SUCCESS.value


async def test_a_failed_attempt_is_retried_with_a_new_message_id_under_the_retry_policy(
    rig: Rig,
) -> None:
    [(uuid, _)] = await register(rig.c, 1)
    await rig.online(uuid)
    await rig.tasks.create(_spec([uuid], apply_policy="retry", retry_times=1, retry_interval=10))
    await rig.engine.step()
    [first] = rig.gateways.take()
    await rig.answer(first, 500)
    row = (await rig.executions())[uuid]
    assert (row.state, row.attempts) == (TaskState.PENDING.value, 1)

    await rig.engine.step()
    assert rig.gateways.take() == []  # not before its retry interval
    rig.clock.advance(11)
    await rig.engine.step()
    [second] = rig.gateways.take()
    assert second.task_id != first.task_id
    await rig.answer(first, 200)  # a late answer to the first attempt changes nothing
    row = (await rig.executions())[uuid]
    assert (row.state, row.attempts, row.code) == (TaskState.RUNNING.value, 2, 500)
    await rig.answer(second, 200)
    row = (await rig.executions())[uuid]
    assert (row.state, row.attempts, row.code) == (TaskState.SUCCESS.value, 2, 200)


async def test_an_unanswered_request_times_out_and_the_task_fails(rig: Rig) -> None:
    [(uuid, _)] = await register(rig.c, 1)
    await rig.online(uuid)
    view = await rig.tasks.create(_spec([uuid], timeout_seconds=5))
    await rig.engine.step()
    assert len(rig.gateways.take()) == 1
    rig.clock.advance(6)
    await rig.engine.step()  # housekeeping: the attempt times out
    rig.clock.advance(2)
    await rig.engine.step()  # and the task, with nothing left to do, finishes
    row = (await rig.executions())[uuid]
    assert row.state == TaskState.FAILURE.value
    assert row.detail == "timeout: no answer in time"
    task = await rig.tasks.get(view.task.uuid)
    assert task.task.state == TaskState.FAILURE.value


async def test_a_reboot_waits_for_the_gateway_to_come_back(rig: Rig) -> None:
    [(uuid, _)] = await register(rig.c, 1)
    await rig.online(uuid)
    await rig.tasks.create(
        TaskSpec(kind=TaskKind.GROUP, method="post", resource="/system/reboot", devices=[uuid])
    )
    await rig.engine.step()
    [request] = rig.gateways.take()
    await rig.answer(request, 200)
    row = (await rig.executions())[uuid]
    assert (row.state, row.acked_at is not None) == (TaskState.RUNNING.value, True)
    rig.clock.advance(30)
    rig.engine.online(uuid)
    await rig.engine.drained()
    assert (await rig.executions())[uuid].state == TaskState.SUCCESS.value


async def test_a_request_that_could_not_be_published_is_sent_again_with_its_message_id(
    rig: Rig,
) -> None:
    [(uuid, _)] = await register(rig.c, 1)
    await rig.online(uuid)
    await rig.tasks.create(_spec([uuid]))
    rig.gateways.refuse.add(uuid)
    await rig.engine.step()
    assert rig.gateways.take() == []
    claimed = (await rig.executions())[uuid]
    assert (claimed.state, claimed.sent_at) == (TaskState.RUNNING.value, None)

    rig.gateways.refuse.clear()
    rig.clock.advance(31)  # past the claim's lease
    await rig.engine.step()
    await rig.engine.step()
    [request] = rig.gateways.take()
    assert request.task_id == claimed.message_id
