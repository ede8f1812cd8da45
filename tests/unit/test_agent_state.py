"""At-least-once delivery: a task_id is run once, also across restarts (persisted answers)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.core import Agent
from edgefleet.agent.plugin import Request, Route
from edgefleet.agent.state import TaskStore
from edgefleet.protocol.messages import RequestMessage, ResponseMessage
from tests.gateways import eventually
from tests.unit.test_agent_support import agent_config


def req(task_id: str, resource: str = "/count") -> RequestMessage:
    return RequestMessage(method="post", resource=resource, task_id=task_id)


class Counting:
    """A handler with a side effect we can count: it appends a line to a file."""

    def __init__(self, path: Path, gate: asyncio.Event | None = None) -> None:
        self.path = path
        self.gate = gate
        self.entered = asyncio.Event()
        """Set when a run has started (and waits for ``gate``)."""

    async def handle(self, r: Request) -> tuple[int, Any]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        with self.path.open("a") as f:
            f.write(r.task_id + "\n")
        return 200, {"runs": len(self.path.read_text().splitlines())}

    def runs(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


def make_agent(tmp_path: Path, counting: Counting) -> Agent:
    return Agent(
        agent_config(tmp_path),
        extra_routes=(Route("post", "/count", counting.handle),),
    )


async def test_a_task_id_runs_once_even_after_a_restart(tmp_path: Path) -> None:
    counting = Counting(tmp_path / "runs")
    agent = make_agent(tmp_path, counting)
    async with agent.prepared():
        first, outcome = await agent.execute(req("t-1"))
        assert outcome is not None and first.code == 200
        again, outcome = await agent.execute(req("t-1"))
        assert outcome is None and again == first
        other, _ = await agent.execute(req("t-2"))
        assert other.data == {"runs": 2}
    assert counting.runs() == ["t-1", "t-2"]

    restarted = make_agent(tmp_path, counting)  # same data dir: the persisted answers
    async with restarted.prepared():
        after, outcome = await restarted.execute(req("t-1"))
        assert outcome is None and after == first
        assert restarted.executed == {}
    assert counting.runs() == ["t-1", "t-2"]
    assert (agent.data_dir / "tasks.sqlite3").exists()


async def test_a_redelivery_while_running_waits_for_the_same_answer(tmp_path: Path) -> None:
    gate = asyncio.Event()
    counting = Counting(tmp_path / "runs", gate)
    agent = make_agent(tmp_path, counting)
    async with agent.prepared():
        one = asyncio.create_task(agent.execute(req("slow")))
        two = asyncio.create_task(agent.execute(req("slow")))
        # one runs the handler; two, started in the same turn of the loop, waits for it
        await asyncio.wait_for(counting.entered.wait(), 10)
        assert not one.done() and not two.done()
        gate.set()
        (a, ran), (b, waited) = await asyncio.gather(one, two)
    assert a == b and ran is not None and waited is None
    assert counting.runs() == ["slow"]


def test_a_task_interrupted_by_a_restart_is_not_run_again(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    with TaskStore(path) as store:
        assert store.claim(req("t-9")).new  # claimed, then the agent died
    with TaskStore(path) as store:
        claim = store.claim(req("t-9"))
        assert not claim.new and claim.response is not None
        assert claim.response.code == 409 and "interrupted" in claim.response.data["message"]
        assert store.claim(req("t-9")).response == claim.response  # the same answer each time


def test_the_store_keeps_only_the_newest_tasks(tmp_path: Path) -> None:
    with TaskStore(tmp_path / "tasks.sqlite3", limit=10) as store:
        for i in range(25):
            message = req(f"t-{i}")
            assert store.claim(message).new
            store.finish(
                ResponseMessage(
                    task_id=message.task_id,
                    method="post",
                    resource="/count",
                    code=200,
                    data=i,
                    id=i,
                )
            )
        assert len(store) == 10
        assert store.answer("t-14") is None
        answer = store.answer("t-24")
        assert answer is not None and answer.data == 24
        assert store.claim(req("t-3")).new  # forgotten: it would run again


async def test_a_disabled_agent_stays_idle_until_stopped(tmp_path: Path) -> None:
    agent = Agent(agent_config(tmp_path, enable=False))
    task = asyncio.create_task(agent.run())

    async def prepared() -> bool:  # from here it connects at once, or waits to be stopped
        return agent.dispatcher is not None

    await eventually(prepared)
    assert not task.done() and agent.attempts == 0 and agent.connections == 0
    agent.stop()
    await asyncio.wait_for(task, 10)
    assert agent.connections == 0


async def test_without_a_broker_the_agent_keeps_retrying_until_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = Agent(agent_config(tmp_path, remotePort=port))
    task = asyncio.create_task(agent.run())

    async def retried() -> bool:
        return agent.attempts >= 3

    await eventually(retried, 30)
    assert any("Connection refused" in r.getMessage() for r in caplog.records)
    assert not task.done() and agent.connections == 0
    agent.stop()
    await asyncio.wait_for(task, 10)
    assert task.exception() is None
