"""System, syslog and services handlers on this (real Linux) machine, through the dispatcher."""

from __future__ import annotations

import gzip
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.dispatch import Dispatcher
from edgefleet.agent.handlers import services, syslog, system
from edgefleet.agent.plugin import AgentContext
from edgefleet.protocol.messages import RequestMessage, ResponseMessage
from tests.unit.test_agent_support import agent_config


def gunzip(path: str) -> str:
    return gzip.decompress(Path(path).read_bytes()).decode()


class Harness:
    def __init__(self, ctx: AgentContext, events: list[tuple[str, str, Any, int]]) -> None:
        self.ctx = ctx
        self.events = events
        routes = [*system.plugin(ctx), *syslog.plugin(ctx), *services.plugin(ctx)]
        self.dispatcher = Dispatcher(routes)

    async def call(self, method: str, resource: str, data: Any = None) -> ResponseMessage:
        outcome = await self.dispatcher.dispatch(
            RequestMessage(method=method, resource=resource, data=data, task_id="t")
        )
        for job in outcome.deferred:  # what the agent does once the answer is out
            await job()
        return outcome.response


async def harness(config: AgentConfig) -> AsyncIterator[Harness]:
    events: list[tuple[str, str, Any, int]] = []

    async def emit(method: str, resource: str, data: Any, code: int = 200) -> None:
        events.append((method, resource, data, code))

    async with httpx.AsyncClient() as http:
        ctx = AgentContext(config=config, emit=emit, data_dir=config.dataDir, http=http)
        yield Harness(ctx, events)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async for x in harness(agent_config(tmp_path, properties={"modelName": "UC-8112-LX"})):
        yield x


async def test_properties_come_from_the_machine_and_the_config(h: Harness) -> None:
    r = await h.call("get", "/system/properties")
    assert r.code == 200
    props = r.data
    assert props["hostName"] == socket.gethostname()
    assert props["modelName"] == "UC-8112-LX"  # configured override
    assert props["uptime"] > 0
    assert len(props["macAddress"].split(":")) == 6
    release = system.os_release()
    if "VERSION_ID" in release:
        assert props["softwareVersion"] == release["VERSION_ID"]
    route = system.default_route()
    assert props["defaultRoute"] == (route or "")
    if route:
        assert props["ipAddress"].count(".") == 3
    r = await h.call("get", "/system/properties/hostName")
    assert r.code == 200 and r.data == socket.gethostname()
    r = await h.call("get", "/system/properties/noSuchKey")
    assert r.code == 404 and r.data == {"message": "Resource not found"}


async def test_status_reads_proc(h: Harness) -> None:
    r = await h.call("get", "/system/status")
    assert r.code == 200
    s = r.data
    assert s["hostname"] == socket.gethostname() and s["uptimeSec"] > 0
    assert 0 <= s["cpuUsage"] <= 100 and 0 < s["memoryUsage"] < 100
    assert s["memory"] > 0 and len(s["loadavg"]) == 3
    assert s["disk"]["mount"] == "/" and s["disk"]["usage"]["total"] > 0
    r = await h.call("get", "/system/status?fields=hostname,loadavg")
    assert set(r.data) == {"hostname", "loadavg"}


def test_proc_parsers_on_recorded_files(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "wwan0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
        "wwan0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n"
    )
    (tmp_path / "stat").write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    (tmp_path / "meminfo").write_text("MemTotal:  1000 kB\nMemAvailable:  250 kB\n")
    (tmp_path / "uptime").write_text("12345.67 999.0\n")
    (tmp_path / "loadavg").write_text("0.50 0.25 0.10 1/100 4242\n")
    assert system.default_route(tmp_path) == "wwan0"
    assert system.cpu_times(tmp_path) == (200, 1000)
    assert system.meminfo(tmp_path) == {"MemTotal": 1024000, "MemAvailable": 256000}
    assert system.uptime(tmp_path) == 12345
    assert system.loadavg(tmp_path) == [0.5, 0.25, 0.1]
    release = tmp_path / "os-release"
    release.write_text('NAME="Moxa Linux"\nVERSION_ID=1.4.0\n# comment\n')
    assert system.os_release(release) == {"NAME": "Moxa Linux", "VERSION_ID": "1.4.0"}


async def test_reboot_answers_then_runs_the_command(h: Harness, tmp_path: Path) -> None:
    r = await h.call("post", "/system/reboot", {"delay": 0})
    assert r.code == 200 and r.data == {"delay": 0}
    assert (tmp_path / "rebooted").exists()
    assert h.events == [("put", "/system/reboot", {"code": "REBOOTING"}, 200)]
    r = await h.call("post", "/system/reboot", {"delay": -3})
    assert r.code == 400 and "delay" in r.data["message"]


async def test_a_failing_reboot_command_is_reported(tmp_path: Path) -> None:
    config = agent_config(tmp_path, rebootCommand=["false"], rebootDelay=0)
    async for h in harness(config):
        assert (await h.call("post", "/system/reboot")).code == 200
        _, resource, data, code = h.events[-1]
        assert resource == "/system/reboot" and data["code"] == "REBOOT_FAIL" and code == 500
        assert "exited with 1" in data["reason"]


async def test_syslog_runs_the_command_into_a_gzip_file(tmp_path: Path) -> None:
    script = "import sys; print('\\n'.join(f'line {i}' for i in range(int(sys.argv[1]))))"
    config = agent_config(tmp_path, syslogCommand=[sys.executable, "-c", script, "{lines}"])
    async for h in harness(config):
        r = await h.call("post", "/system/syslog", {"lines": 7})
        assert r.code == 200 and r.data["lines"] == 7
        text = gunzip(r.data["path"])
        assert text.splitlines() == [f"line {i}" for i in range(7)]


async def test_syslog_falls_back_to_the_tail_of_a_log_file(tmp_path: Path) -> None:
    log = tmp_path / "messages"
    log.write_text("".join(f"entry {i}\n" for i in range(100)))
    config = agent_config(
        tmp_path, syslogCommand=[], syslogFiles=[str(tmp_path / "missing"), str(log)]
    )
    async for h in harness(config):
        r = await h.call("post", "/system/syslog", {"lines": 3})
        assert r.code == 200 and r.data["source"] == str(log)
        text = gunzip(r.data["path"])
        assert text == "entry 97\nentry 98\nentry 99\n"
    config = agent_config(tmp_path, syslogCommand=[], syslogFiles=[str(tmp_path / "missing")])
    async for h in harness(config):
        r = await h.call("post", "/system/syslog")
        assert r.code == 500 and "no log source" in r.data["message"]


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Harness]:
    """Services are files in ``run/``: present = running (what systemctl would say)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "ssh").touch()
    status = "if [ -e {dir}/$0 ]; then echo active; else echo inactive; exit 3; fi"
    config = agent_config(
        tmp_path,
        services=["ssh", "rsyslog"],
        serviceStatusCommand=["sh", "-c", status.replace("{dir}", str(run)), "{name}"],
        serviceStartCommand=["touch", f"{run}/{{name}}"],
        serviceStopCommand=["rm", f"{run}/{{name}}"],
    )
    async for x in harness(config):
        yield x


async def test_services_are_listed_switched_and_limited_to_the_configured_ones(
    svc: Harness, tmp_path: Path
) -> None:
    r = await svc.call("get", "/system/services")
    assert r.code == 200 and r.data == [
        {"id": 1, "name": "ssh", "enable": True, "status": "active"},
        {"id": 2, "name": "rsyslog", "enable": False, "status": "inactive"},
    ]
    r = await svc.call("put", "/system/services/ssh", {"id": 1, "enable": False, "name": "ssh"})
    assert r.code == 200 and r.data == {
        "id": 1,
        "name": "ssh",
        "enable": False,
        "status": "inactive",
    }
    assert not (tmp_path / "run" / "ssh").exists()
    r = await svc.call("put", "/system/services/rsyslog", {"enable": True})
    assert r.data["enable"] is True and (tmp_path / "run" / "rsyslog").exists()
    r = await svc.call("get", "/system/services/rsyslog")
    assert r.code == 200 and r.data["status"] == "active"
    r = await svc.call("put", "/system/services/ssh", {"enable": False})  # rm fails: not there
    assert r.code == 500 and "stop ssh" in r.data["message"]
    r = await svc.call("put", "/system/services/sshd", {"enable": True})
    assert r.code == 404
    r = await svc.call("put", "/system/services/ssh", {"enable": "maybe"})
    assert r.code == 400
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["rsyslog"]
