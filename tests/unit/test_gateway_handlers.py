"""The shared request handling (``edgefleet.gateway``) over both of its hosts: the agent on
this machine (its plug-ins, as ``edgefleet-agent`` loads them) and a simulated gateway (in
memory, not connected). The same request gets the same answer from both, but for what a host
decides on purpose (the reboot's answer, the properties' values, the firmware's file)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import aiomqtt
import httpx
import pytest

from edgefleet.agent.core import Agent
from edgefleet.agent.dispatch import Dispatcher
from edgefleet.agent.handlers import configuration, firmware, jobs, system
from edgefleet.agent.plugin import AgentContext
from edgefleet.gateway.handlers import REBOOT
from edgefleet.gateway.jobs import Background, JobState
from edgefleet.protocol.messages import RequestMessage, ResponseMessage, decode_client
from edgefleet.simulator.gateway import Behaviour, VirtualGateway
from tests.gateways import eventually
from tests.unit.test_agent_support import TOKEN, FileServer, agent_config, serve_files

MODEL = "UC-8112-LX"
IMAGE = b"firmware image " * 1000
Event = tuple[str, Any, int]


class Host:
    """A gateway answering requests as it does on the wire: deferred work starts once the
    answer is out, as a background job of the request's task_id."""

    background: Background
    events: list[Event]

    async def execute(self, request: RequestMessage) -> tuple[ResponseMessage, list[Any]]:
        raise NotImplementedError

    async def call(
        self, method: str, resource: str, data: Any = None, task_id: str = "t"
    ) -> ResponseMessage:
        request = RequestMessage(method=method, resource=resource, data=data, task_id=task_id)
        response, deferred = await self.execute(request)
        for i, job in enumerate(deferred):
            self.background.spawn(job(), name=f"{resource} #{i}", task_id=task_id)
        return response

    def reported(self, resource: str) -> list[Any]:
        return [data for r, data, _ in self.events if r == resource]


class AgentHost(Host):
    def __init__(self, ctx: AgentContext, events: list[Event]) -> None:
        self.background = ctx.background
        self.events = events
        self.dispatcher = Dispatcher(
            [
                *system.plugin(ctx),
                *firmware.plugin(ctx),
                *configuration.plugin(ctx),
                *jobs.plugin(ctx),
            ]
        )

    async def execute(self, request: RequestMessage) -> tuple[ResponseMessage, list[Any]]:
        outcome = await self.dispatcher.dispatch(request)
        return outcome.response, outcome.deferred


class RecordingGateway(VirtualGateway):
    """A simulated gateway whose jobs' events are recorded (it is not connected)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.recorded: list[Event] = []

    async def report(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        self.recorded.append((resource, data, code))
        await super().report(method, resource, data, code)


class SimulatedHost(Host):
    def __init__(self, gw: RecordingGateway) -> None:
        self.gw = gw
        self.background = gw.background
        self.events = gw.recorded

    async def execute(self, request: RequestMessage) -> tuple[ResponseMessage, list[Any]]:
        outcome = await self.gw.execute(request)
        return outcome.response, outcome.deferred


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serve_files() as server:
        server.files["fw.img"] = IMAGE
        yield server


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[tuple[AgentHost, SimulatedHost]]:
    events: list[Event] = []

    async def emit(method: str, resource: str, data: Any, code: int = 200) -> None:
        events.append((resource, data, code))

    config = agent_config(tmp_path, properties={"modelName": MODEL}, rebootDelay=0)
    gw = RecordingGateway(
        uuid=config.deviceUUID,
        psk="00" * 16,
        host="127.0.0.1",
        port=9,
        properties={"modelName": MODEL, "softwareVersion": "1.0"},
        behaviour=Behaviour(firmware_seconds=0, boot_seconds=0),
    )
    async with httpx.AsyncClient() as http:
        ctx = AgentContext(config=config, emit=emit, data_dir=config.dataDir, http=http)
        agent, simulated = AgentHost(ctx, events), SimulatedHost(gw)
        try:
            yield agent, simulated
        finally:
            await agent.background.cancel_all()
            await simulated.background.cancel_all()


def same(a: ResponseMessage, b: ResponseMessage) -> None:
    """One answer from both hosts: same code and data, the request echoed."""
    assert (a.code, a.data) == (b.code, b.data)
    for r in (a, b):
        assert (r.task_id, r.method, r.resource) == (a.task_id, a.method, a.resource)
    assert a.sign == ["edgefleet-agent"] and b.sign == ["simulator"]


@pytest.mark.parametrize(
    ("method", "resource", "data", "code"),
    [
        ("get", "/system/properties/modelName", None, 200),
        ("get", "/system/properties/noSuchKey", None, 404),
        ("get", "/system/properties/modelName/", None, 200),
        ("put", "/system/properties", {"x": 1}, 405),
        ("get", "/system/nothing", None, 404),
        ("post", "/system/reboot", {"delay": "soon"}, 400),
        ("post", "/system/reboot", {"delay": -1}, 400),
        ("post", "/system/firmware", {}, 400),
        ("post", "/system/firmware", {"file": {"url": "ftp://host/fw.img"}}, 400),
        ("put", "/system/import", {"file": {"url": "http://127.0.0.1:9/c.tgz"}}, 400),
        ("put", "/system/import", {"file": {"url": "http://127.0.0.1:9/c"}, "scopes": []}, 200),
        ("delete", "/system/tasks/nobody", None, 404),
        # what a hostile server could send: no route reached around the table, no crash
        ("GET", "/system/properties/modelName", None, 200),
        ("Delete", "/system/tasks/nobody", None, 404),
        ("get", "/system/../system/properties", None, 404),
        ("get", "/system/properties/..", None, 404),
        ("get", "/system/properties/%2e%2e%2F%2e%2e%2Fetc%2Fpasswd", None, 404),
        ("get", "/system/properties/modelName%00", None, 404),
        ("get", "/system/properties/%ZZ", None, 404),
        ("get", "/system/%70roperties/modelName", None, 200),
        ("get", "/system/properties/__class__", None, 404),
        ("post", "/system/reboot", [1, 2], 400),
        ("post", "/system/reboot", "now", 400),
        ("post", "/system/reboot", {"delay": 10**30}, 400),
        ("post", "/system/firmware", {"file": "http://127.0.0.1:9/fw.img"}, 400),
        ("post", "/system/firmware", {"file": {"url": "http://h/f", "size": -1}}, 400),
        ("post", "/system/firmware", {"file": {"url": "http://h/f", "headers": {"a": 1}}}, 400),
        ("put", "/system/import", {"file": {"url": "http://h/c"}, "scopes": "all"}, 400),
        ("delete", "/system/tasks/" + "9" * 2000, None, 404),
        ("delete", "/system/tasks/..%2F..", None, 404),
    ],
)
async def test_a_request_gets_the_same_answer_from_the_agent_and_the_simulator(
    hosts: tuple[AgentHost, SimulatedHost], method: str, resource: str, data: Any, code: int
) -> None:
    agent, simulated = hosts
    a = await agent.call(method, resource, data, task_id="task-1")
    b = await simulated.call(method, resource, data, task_id="task-1")
    same(a, b)
    assert a.code == code and (code < 300 or set(a.data) == {"message"})
    assert agent.background.running == simulated.background.running == 0


async def test_the_status_fields_are_chosen_on_both(
    hosts: tuple[AgentHost, SimulatedHost],
) -> None:
    for host in hosts:
        r = await host.call("get", "/system/status?fields=hostname,version")
        assert r.code == 200 and set(r.data) == {"hostname", "version"}
        r = await host.call("get", "/system/properties")
        assert r.code == 200 and r.data["modelName"] == MODEL


async def test_a_reboot_in_its_delay_is_one_at_a_time_and_cancelled_alike(
    hosts: tuple[AgentHost, SimulatedHost],
) -> None:
    agent, simulated = hosts
    a = await agent.call("post", "/system/reboot", {"delay": 30}, task_id="rb")
    b = await simulated.call("post", "/system/reboot", {"delay": 30}, task_id="rb")
    # what each host answers on purpose: ThingsPro says {}, the agent its delay
    assert (a.code, a.data) == (200, {"delay": 30.0}) and (b.code, b.data) == (200, {})
    steps = [
        (("post", "/system/reboot", None, "rb-2"), 409, {"message": "a reboot is already pending"}),
        (("delete", "/system/tasks/rb", None, "c"), 200, {"cancelled": True, "task_id": "rb"}),
        (("delete", "/system/tasks/rb", None, "c2"), 409, {"message": "already finished"}),
    ]
    for (method, resource, data, task_id), code, answer in steps:
        a = await agent.call(method, resource, data, task_id)
        b = await simulated.call(method, resource, data, task_id)
        same(a, b)
        assert (a.code, a.data) == (code, answer)
    assert agent.background.cancelled == simulated.background.cancelled == 1
    assert agent.reported("/system/reboot") == simulated.reported("/system/reboot") == []


async def test_a_firmware_upgrade_reports_alike_then_reboots(
    hosts: tuple[AgentHost, SimulatedHost], file_server: FileServer
) -> None:
    agent, simulated = hosts
    ref = {"url": file_server.url("fw.img"), "headers": {"mx-api-token": TOKEN}}
    data = {"file": {**ref, "size": len(IMAGE)}, "version": "2.0"}
    a = await agent.call("post", "/system/firmware", data, task_id="fw")
    b = await simulated.call("post", "/system/firmware", data, task_id="fw")
    same(a, b)
    assert a.data == {"status": "accepted", "delay": 0.0, "url": ref["url"]}

    async def rebooted() -> bool:
        # the REBOOTING report goes out while the job still runs (the reboot's effects and
        # the job's end follow it): wait for the job to have ended on both
        return all(
            h.reported("/system/reboot")
            and h.background.state("fw") is not JobState.RUNNING
            and h.background.state("fw") is not JobState.COMMITTED
            for h in hosts
        )

    await eventually(rebooted)
    digest = hashlib.sha256(IMAGE).hexdigest()
    for host in hosts:
        *progress, result = host.reported("/system/firmware")
        pcts = [p["progress"] for p in progress]
        assert pcts[0] == 0 and pcts[-1] == 100 and pcts == sorted(pcts)
        assert {k: result[k] for k in ("code", "version", "size", "sha256")} == {
            "code": "FW_UPGRADE_SUCCESS",
            "version": "2.0",
            "size": len(IMAGE),
            "sha256": digest,
        }
        assert host.reported("/system/reboot") == [{"code": "REBOOTING"}]
    assert simulated.gw.upgrades == 1 and simulated.gw.reboots == 1
    assert simulated.gw.properties["softwareVersion"] == "2.0"  # what it boots into
    # a finished upgrade cannot be cancelled, on either
    a = await agent.call("delete", "/system/tasks/fw", task_id="c")
    b = await simulated.call("delete", "/system/tasks/fw", task_id="c")
    same(a, b)
    assert (a.code, a.data) == (409, {"message": "already finished"})


class Publisher:
    """Stands in for a simulated gateway's MQTT client: keeps what it publishes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.sent.append((topic, payload))


DEEP = "[" * 40 + "]" * 40


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ('{"delay": 1' + "0" * 30 + "}", "64 bits"),
        ('{"delay": 1e999}', "finite"),
        ('{"name": "a\\u0000b"}', "NUL"),
        ('{"name": "\\ud800"}', "surrogate"),
        (DEEP, "deeper"),
    ],
)
async def test_an_unreadable_request_naming_its_task_is_answered_400_alike(
    tmp_path: Path, data: str, reason: str
) -> None:
    """A hostile (or broken) server's request whose data no gateway may take: both hosts
    answer its task_id 400, saying why, rather than leave the task waiting out its timeout,
    and start nothing."""
    head = '{"task_id": "t-1", "method": "POST", "resource": "/system/reboot", "data": '
    payload = (head + data + "}").encode()
    agent = Agent(agent_config(tmp_path))
    await agent._handle(payload)
    gw = RecordingGateway(uuid=agent.uuid, psk="00" * 16, host="127.0.0.1", port=9)
    client = Publisher()
    await gw._answer(cast(aiomqtt.Client, client), payload)
    answers: list[ResponseMessage] = []
    for _, sent in [*agent._outbox, *client.sent]:
        message = decode_client(sent)
        assert isinstance(message, ResponseMessage)
        answers.append(message)
    assert len(answers) == 2
    for answer in answers:
        assert (answer.task_id, answer.method, answer.resource) == ("t-1", "post", REBOOT)
        assert answer.code == 400 and reason in answer.data["message"]
    assert [a.sign for a in answers] == [["edgefleet-agent"], ["simulator"]]
    assert agent.background.running == gw.background.running == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'["t-1"]',
        b'{"method": "post", "resource": "/system/reboot"}',
        b'{"task_id": "", "method": "post", "resource": "/system/reboot"}',
        b'{"task_id": "t-1", "method": "patch", "resource": "/system/reboot"}',
        b'{"task_id": "t-1", "method": "post", "resource": "system/reboot"}',
        b'{"task_id": "t\\u0000", "method": "post", "resource": "/system/reboot"}',
        b'{"task_id": "' + b"t" * 129 + b'", "method": "post", "resource": "/"}',
    ],
)
async def test_an_unreadable_request_with_nothing_to_echo_is_not_answered(
    tmp_path: Path, payload: bytes
) -> None:
    agent = Agent(agent_config(tmp_path))
    await agent._handle(payload)
    gw = RecordingGateway(uuid=agent.uuid, psk="00" * 16, host="127.0.0.1", port=9)
    client = Publisher()
    await gw._answer(cast(aiomqtt.Client, client), payload)
    assert list(agent._outbox) == client.sent == []
