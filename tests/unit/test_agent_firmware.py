"""Firmware upgrade: download from a real HTTP server, verify size and sha256, install, events,
then the reboot."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.handlers.firmware import FAIL, SUCCESS, Firmware, FirmwareBody, file_name
from edgefleet.agent.plugin import AgentContext, Request
from tests.unit.test_agent_support import TOKEN, FileServer, agent_config, serve_files

IMAGE = os.urandom(200_000)
DIGEST = hashlib.sha256(IMAGE).hexdigest()


@dataclass
class Recorder:
    events: list[tuple[str, str, Any, int]] = field(default_factory=list)

    async def __call__(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        self.events.append((method, resource, data, code))

    def progress(self) -> list[int | None]:
        return [e[2]["progress"] for e in self.events if "progress" in e[2]]


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serve_files() as server:
        server.files["fw.img"] = IMAGE
        yield server


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def context(config: AgentConfig, recorder: Recorder) -> AsyncIterator[AgentContext]:
    async with httpx.AsyncClient() as http:
        yield AgentContext(config=config, emit=recorder, data_dir=config.dataDir, http=http)


@pytest.fixture
async def ctx(tmp_path: Path, recorder: Recorder) -> AsyncIterator[AgentContext]:
    async for c in context(agent_config(tmp_path), recorder):
        yield c


def read(path: str) -> bytes:
    return Path(path).read_bytes()


def body(server: FileServer, version: str | None = None, **file: Any) -> FirmwareBody:
    ref = {"url": server.url("fw.img"), "headers": {"mx-api-token": TOKEN}, **file}
    return FirmwareBody.model_validate({"file": ref, "version": version})


async def test_a_verified_download_reports_success_with_progress(
    ctx: AgentContext, file_server: FileServer, recorder: Recorder
) -> None:
    final = await Firmware(ctx).run(
        body(file_server, "1.3.0", size=len(IMAGE), sha256=DIGEST.upper())
    )
    assert final["code"] == SUCCESS and final["sha256"] == DIGEST and final["size"] == len(IMAGE)
    assert final["version"] == "1.3.0"
    assert read(final["file"]) == IMAGE
    assert Path(final["file"]).parent == ctx.data_dir / "firmware"
    assert recorder.events[-1] == ("put", "/system/firmware", final, 200)
    progress = [p for p in recorder.progress() if p is not None]
    assert len(progress) == len(recorder.progress())
    assert progress[0] == 0 and progress[-1] == 100 and 3 <= len(progress) <= 12
    assert (
        progress == sorted(progress) and len({p // 10 for p in progress if p}) == len(progress) - 1
    )


@pytest.mark.parametrize(
    ("checks", "reason"),
    [
        ({"sha256": "ab" * 32}, "sha256 mismatch"),
        ({"size": len(IMAGE) + 1}, "size mismatch: got 200000 bytes, expected 200001"),
        ({"size": 1000}, "size mismatch: more than 1000 bytes"),
    ],
)
async def test_a_mismatch_fails_and_leaves_no_file(
    ctx: AgentContext,
    file_server: FileServer,
    recorder: Recorder,
    checks: dict[str, Any],
    reason: str,
) -> None:
    final = await Firmware(ctx).run(body(file_server, **checks))
    assert final["code"] == FAIL and reason in final["reason"]
    assert recorder.events[-1] == ("put", "/system/firmware", final, 500)
    assert list((ctx.data_dir / "firmware").iterdir()) == []


async def test_http_errors_fail_the_upgrade(
    ctx: AgentContext, file_server: FileServer, recorder: Recorder
) -> None:
    no_token = FirmwareBody.model_validate({"file": {"url": file_server.url("fw.img")}})
    final = await Firmware(ctx).run(no_token)
    assert final == {"code": FAIL, "reason": "download failed: HTTP 403"}
    final = await Firmware(ctx).run(body(file_server, url=file_server.url("other.img")))
    assert final["reason"] == "download failed: HTTP 404"
    closed = FirmwareBody.model_validate({"file": {"url": "http://127.0.0.1:9/fw.img"}})
    final = await Firmware(ctx).run(closed)
    assert final["code"] == FAIL and final["reason"].startswith("download failed: ConnectError")


async def test_the_install_command_gets_the_file_and_its_failure_is_reported(
    tmp_path: Path, file_server: FileServer, recorder: Recorder
) -> None:
    copy = tmp_path / "flashed.img"
    config = agent_config(tmp_path, firmwareInstallCommand=["cp", "{file}", str(copy)])
    async for ctx in context(config, recorder):
        final = await Firmware(ctx).run(body(file_server, sha256=DIGEST))
        assert final["code"] == SUCCESS and copy.read_bytes() == IMAGE
        assert final["version"] == ""  # the request named none
    config = agent_config(
        tmp_path, firmwareInstallCommand=["sh", "-c", "echo bad image >&2; exit 3"]
    )
    async for ctx in context(config, recorder):
        final = await Firmware(ctx).run(body(file_server))
        assert final == {"code": FAIL, "reason": "install command exited with 3: bad image"}


def request(server: FileServer, task_id: str, **extra: Any) -> Request:
    data = {
        "delay": 0,
        "file": {"url": server.url("fw.img"), "headers": {"mx-api-token": TOKEN}},
        **extra,
    }
    return Request("post", "/system/firmware", "/system/firmware", {}, {}, data, task_id)


async def test_the_request_is_accepted_at_once_and_one_upgrade_runs_at_a_time(
    tmp_path: Path, file_server: FileServer, recorder: Recorder
) -> None:
    async for ctx in context(agent_config(tmp_path, rebootDelay=0), recorder):
        fw = Firmware(ctx)
        first = request(file_server, "t-1", version="1.3.0")
        code, answer = await fw.upgrade(first)
        assert code == 200 and answer["status"] == "accepted" and len(first.deferred) == 1
        assert recorder.events == []  # nothing happens before the answer is out
        # as the agent runs it once the answer is out: a background job of the task_id
        job = ctx.background.spawn(first.deferred[0](), name="upgrade", task_id="t-1")
        second = request(file_server, "t-2")
        with pytest.raises(Exception, match="already running") as busy:
            await fw.upgrade(second)
        assert getattr(busy.value, "code", None) == 409
        await job
        success, rebooting = recorder.events[-2:]
        assert success[2]["code"] == SUCCESS and success[2]["version"] == "1.3.0"
        assert rebooting == ("put", "/system/reboot", {"code": "REBOOTING"}, 200)
        assert (tmp_path / "rebooted").exists()  # rebootCommand, after rebootDelay
        code, _ = await fw.upgrade(second)  # done: the next one may start
        assert code == 200


async def test_no_reboot_after_a_failure_or_when_not_configured(
    tmp_path: Path, file_server: FileServer, recorder: Recorder
) -> None:
    async for ctx in context(agent_config(tmp_path, rebootDelay=0), recorder):
        failing = request(file_server, "t-1", file={"url": file_server.url("missing.img")})
        failing.data["file"]["headers"] = {"mx-api-token": TOKEN}
        await Firmware(ctx).upgrade(failing)
        await failing.deferred[0]()
        assert recorder.events[-1][2]["code"] == FAIL
    config = agent_config(tmp_path, rebootDelay=0, rebootAfterFirmware=False)
    async for ctx in context(config, recorder):
        good = request(file_server, "t-2")
        await Firmware(ctx).upgrade(good)
        await good.deferred[0]()
        assert recorder.events[-1][2]["code"] == SUCCESS
    assert not (tmp_path / "rebooted").exists()
    assert all(e[1] == "/system/firmware" for e in recorder.events)


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"file": {}},
        {"file": {"url": "ftp://host/fw.img"}},
        {"file": {"url": "http://h/fw", "sha256": "xyz"}},
        {"delay": -1, "file": {"url": "http://h/fw"}},
    ],
)
async def test_bad_requests_are_400(ctx: AgentContext, data: Any) -> None:
    request = Request("post", "/system/firmware", "/system/firmware", {}, {}, data, "t")
    with pytest.raises(Exception) as bad:
        await Firmware(ctx).upgrade(request)
    assert getattr(bad.value, "code", None) == 400


def test_local_file_names_are_safe() -> None:
    assert file_name("http://h/api/v1/files/download/abc%2F..%2Fetc") == "abc_.._etc"
    assert file_name("http://h/../../.bashrc") == "bashrc"
    assert file_name("http://h/") == "firmware.bin"
