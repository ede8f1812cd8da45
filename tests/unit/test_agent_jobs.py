"""Cancelling a request's background work (``DELETE /system/tasks/{task_id}``): firmware
downloads from a real HTTP server that stalls, reboots in their delay, points of no return,
and tasks that finished or are unknown (the agent's real task store)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.core import Agent
from edgefleet.agent.dispatch import Dispatcher
from edgefleet.agent.handlers import configuration, firmware, jobs, system
from edgefleet.agent.plugin import AgentContext, Background, JobState
from edgefleet.protocol.messages import RequestMessage, ResponseMessage
from tests.gateways import eventually
from tests.unit.test_agent_support import TOKEN, FileServer, agent_config, serve_files

ANNOUNCED = 1024 * 1024
SENT = 64 * 1024


class Stalling:
    """Serves ``/slow``: announces 1 MiB, sends 64 KiB, then hangs until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        release = self.release

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(ANNOUNCED))
                self.end_headers()
                self.wfile.write(b"x" * SENT)
                self.wfile.flush()
                release.wait(30)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/slow"


@pytest.fixture
def stalling() -> Iterator[Stalling]:
    server = Stalling()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(5)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serve_files() as server:
        server.files["fw.img"] = b"firmware image"
        yield server


class Harness:
    """The system, firmware, configuration and jobs handlers behind a dispatcher; deferred
    work runs as the agent runs it: a background job of the request's task_id."""

    def __init__(self, ctx: AgentContext, events: list[tuple[str, Any, int]]) -> None:
        self.ctx = ctx
        self.events = events
        self.dispatcher = Dispatcher(
            [
                *system.plugin(ctx),
                *firmware.plugin(ctx),
                *configuration.plugin(ctx),
                *jobs.plugin(ctx),
            ]
        )

    async def call(
        self, method: str, resource: str, data: Any = None, task_id: str = "t"
    ) -> ResponseMessage:
        message = RequestMessage(method=method, resource=resource, data=data, task_id=task_id)
        outcome = await self.dispatcher.dispatch(message)
        for i, job in enumerate(outcome.deferred):
            self.ctx.background.spawn(job(), name=f"{resource} #{i}", task_id=task_id)
        return outcome.response

    async def cancel(self, task_id: str) -> ResponseMessage:
        return await self.call("delete", f"/system/tasks/{task_id}", task_id=f"cancel-{task_id}")

    def results(self) -> list[Any]:
        return [d for r, d, _ in self.events if r == "/system/firmware" and "code" in d]


async def harness(config: AgentConfig) -> AsyncIterator[Harness]:
    events: list[tuple[str, Any, int]] = []

    async def emit(method: str, resource: str, data: Any, code: int = 200) -> None:
        events.append((resource, data, code))

    async with httpx.AsyncClient() as http:
        ctx = AgentContext(config=config, emit=emit, data_dir=config.dataDir, http=http)
        try:
            yield Harness(ctx, events)
        finally:
            await ctx.background.cancel_all()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async for x in harness(agent_config(tmp_path, rebootDelay=0.5)):
        yield x


async def test_a_firmware_download_is_cancelled_and_reports_nothing_more(
    h: Harness, stalling: Stalling, tmp_path: Path
) -> None:
    r = await h.call("post", "/system/firmware", {"file": {"url": stalling.url}}, "fw-1")
    assert r.code == 200

    async def downloading() -> bool:
        return any(d.get("downloaded", 0) >= SENT for r, d, _ in h.events if "progress" in d)

    await eventually(downloading)
    assert h.ctx.background.state("fw-1") is JobState.RUNNING
    r = await h.cancel("fw-1")
    assert r.code == 200 and r.data == {"cancelled": True, "task_id": "fw-1"}
    # no job runs any more (the cancel waited for it): nothing can report a result later
    assert h.ctx.background.state("fw-1") is JobState.ENDED and h.ctx.background.running == 0
    assert h.results() == []
    assert list((h.ctx.data_dir / "firmware").iterdir()) == []  # the partial file is gone
    r = await h.cancel("fw-1")
    assert r.code == 409 and r.data == {"message": "already finished"}
    # the upgrade slot is free again
    stalling.release.set()
    r = await h.call("post", "/system/firmware", {"file": {"url": stalling.url}}, "fw-2")
    assert r.code == 200
    assert not (tmp_path / "rebooted").exists()


async def test_a_reboot_is_cancelled_in_its_delay(h: Harness, tmp_path: Path) -> None:
    r = await h.call("post", "/system/reboot", {"delay": 30}, "rb-1")
    assert r.code == 200
    r = await h.call("post", "/system/reboot", None, "rb-2")
    assert r.code == 409  # one pending at a time
    r = await h.cancel("rb-1")
    assert r.code == 200 and r.data == {"cancelled": True, "task_id": "rb-1"}
    assert h.events == [] and not (tmp_path / "rebooted").exists()
    r = await h.call("post", "/system/reboot", {"delay": 0}, "rb-3")  # no longer pending
    assert r.code == 200
    await h.ctx.background.idle()
    assert (tmp_path / "rebooted").exists()
    r = await h.cancel("rb-3")
    assert r.code == 409 and r.data == {"message": "already finished"}


async def test_an_install_under_way_cannot_be_cancelled_nor_the_reboot_after_it(
    tmp_path: Path, file_server: FileServer
) -> None:
    go = tmp_path / "go"
    install = ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done"]
    config = agent_config(tmp_path, firmwareInstallCommand=install, rebootDelay=0.5)
    async for h in harness(config):
        ref = {"url": file_server.url("fw.img"), "headers": {"mx-api-token": TOKEN}}
        r = await h.call("post", "/system/firmware", {"file": ref, "version": "9.1"}, "fw-1")
        assert r.code == 200

        async def installing() -> bool:
            return h.ctx.background.state("fw-1") is JobState.COMMITTED

        await eventually(installing)
        r = await h.cancel("fw-1")
        assert r.code == 409
        assert r.data == {"message": "installing the firmware: can no longer be cancelled"}
        go.touch()

        async def reported() -> bool:
            return len(h.results()) == 1

        await eventually(reported)
        assert h.results()[0]["code"] == "FW_UPGRADE_SUCCESS"
        assert h.results()[0]["version"] == "9.1"
        r = await h.cancel("fw-1")  # the reboot is still ahead, the upgrade is over
        assert r.code == 409 and r.data == {"message": "already finished"}
        await h.ctx.background.idle()
        assert (tmp_path / "rebooted").exists()
        assert h.events[-1] == ("/system/reboot", {"code": "REBOOTING"}, 200)


async def test_an_import_reboots_only_when_configured_and_may_be_cancelled(
    tmp_path: Path, file_server: FileServer
) -> None:
    (tmp_path / "etc").mkdir()
    archive = tmp_path / "config.tar.gz"
    scopes = {"system": [tmp_path / "etc"]}
    configuration.build_archive(archive, scopes, {"scopes": {"system": []}})
    file_server.files["config.tar.gz"] = archive.read_bytes()
    data = {
        "file": {"url": file_server.url("config.tar.gz"), "headers": {"mx-api-token": TOKEN}},
        "scopes": ["system"],
    }
    async for h in harness(agent_config(tmp_path)):
        r = await h.call("put", "/system/import", data, "im-1")
        assert r.code == 200 and "rebootDelay" not in r.data
        assert h.ctx.background.state("im-1") is None  # nothing runs after the answer
    async for h in harness(agent_config(tmp_path, rebootAfterImport=True, rebootDelay=30)):
        r = await h.call("put", "/system/import", data, "im-2")
        assert r.code == 200 and r.data["rebootDelay"] == 30
        r = await h.cancel("im-2")
        assert r.code == 200
    async for h in harness(agent_config(tmp_path, rebootAfterImport=True, rebootDelay=0)):
        r = await h.call("put", "/system/import", data, "im-3")
        await h.ctx.background.idle()
        assert (tmp_path / "rebooted").exists()


async def test_finished_and_unknown_tasks_in_the_agents_task_store(tmp_path: Path) -> None:
    def message(method: str, resource: str, task_id: str, data: Any = None) -> RequestMessage:
        return RequestMessage(method=method, resource=resource, data=data, task_id=task_id)

    agent = Agent(agent_config(tmp_path))
    async with agent.prepared():
        r, _ = await agent.execute(message("get", "/system/properties/hostName", "get-1"))
        assert r.code == 200
        r, _ = await agent.execute(message("delete", "/system/tasks/get-1", "c-1"))
        assert r.code == 409 and r.data == {"message": "already finished"}
        r, _ = await agent.execute(message("delete", "/system/tasks/nobody", "c-2"))
        assert r.code == 404 and "nobody" in r.data["message"]
        r, _ = await agent.execute(message("post", "/system/reboot", "rb-1", {"delay": 0}))
        assert r.code == 200
    restarted = Agent(agent_config(tmp_path))  # after the reboot: still known, as finished
    async with restarted.prepared():
        r, _ = await restarted.execute(message("delete", "/system/tasks/rb-1", "c-3"))
        assert r.code == 409 and r.data == {"message": "already finished"}


async def test_the_background_remembers_only_the_newest_ended_jobs() -> None:
    background = Background(remember=3)

    async def nothing() -> None:
        pass

    for i in range(5):
        await background.spawn(nothing(), name=f"job {i}", task_id=f"t-{i}")
    assert [background.state(f"t-{i}") for i in range(5)] == [
        None,
        None,
        JobState.ENDED,
        JobState.ENDED,
        JobState.ENDED,
    ]
    assert await background.cancel("t-4") is JobState.ENDED
    assert await background.cancel("t-0") is None
