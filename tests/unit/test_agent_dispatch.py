"""Dispatch of requests to handlers, and plug-ins loaded from real entry points."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent.dispatch import Dispatcher, load_plugins
from edgefleet.agent.plugin import (
    ENTRY_POINT_GROUP,
    AgentContext,
    HandlerError,
    Request,
    Route,
)
from edgefleet.protocol.messages import RequestMessage
from tests.unit.test_agent_support import agent_config


def req(method: str, resource: str, data: Any = None, task_id: str = "t-1") -> RequestMessage:
    return RequestMessage(method=method, resource=resource, data=data, task_id=task_id)


async def echo(r: Request) -> tuple[int, Any]:
    return 200, {"params": r.params, "query": r.query, "data": r.data, "path": r.path}


async def boom(r: Request) -> tuple[int, Any]:
    raise RuntimeError("disk on fire")


async def refuse(r: Request) -> tuple[int, Any]:
    raise HandlerError(409, "busy")


async def wrong(r: Request) -> Any:
    return "not a tuple"


async def with_job(r: Request) -> tuple[int, Any]:
    async def job() -> None:
        pass

    r.after_reply(job)
    if r.data == "fail":
        raise HandlerError(400, "no")
    return 200, None


DISPATCHER = Dispatcher(
    [
        Route("get", "/things/{name}", echo),
        Route("GET", "/things/all", echo),
        Route("put", "/things/{name}/parts/{part}", echo),
        Route("post", "/boom", boom),
        Route("post", "/refuse", refuse),
        Route("get", "/wrong", wrong),
        Route("post", "/job", with_job),
    ]
)


async def test_the_response_echoes_the_request_in_the_sanji_shape() -> None:
    out = await DISPATCHER.dispatch(req("get", "/things/pump%201?x=1&y=2", task_id="abc"))
    r = out.response
    assert (r.task_id, r.method, r.resource, r.code) == (
        "abc",
        "get",
        "/things/pump%201?x=1&y=2",
        200,
    )
    assert isinstance(r.id, int) and 0 <= r.id <= 655350
    assert r.sign == ["edgefleet-agent"]
    assert r.data == {
        "params": {"name": "pump 1"},
        "query": {"x": "1", "y": "2"},
        "data": None,
        "path": "/things/pump 1",
    }


async def test_fixed_paths_win_over_patterns_and_parameters_are_matched() -> None:
    r = (await DISPATCHER.dispatch(req("get", "/things/all/"))).response
    assert r.code == 200 and r.data["params"] == {}
    r = (await DISPATCHER.dispatch(req("put", "/things/a/parts/b", {"v": 1}))).response
    assert r.data["params"] == {"name": "a", "part": "b"} and r.data["data"] == {"v": 1}


@pytest.mark.parametrize("resource", ["/nothing", "/things", "/things/a/b", "/", "/boom/x"])
async def test_unknown_resources_are_404(resource: str) -> None:
    r = (await DISPATCHER.dispatch(req("get", resource))).response
    assert r.code == 404 and r.data == {"message": "Resource not found"}
    assert r.resource == resource


async def test_a_known_path_with_another_method_is_405() -> None:
    r = (await DISPATCHER.dispatch(req("delete", "/things/a"))).response
    assert r.code == 405 and "not allowed" in r.data["message"]


async def test_a_failing_handler_is_500_and_the_dispatcher_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = (await DISPATCHER.dispatch(req("post", "/boom"))).response
    assert r.code == 500 and r.data == {"message": "internal error: RuntimeError: disk on fire"}
    assert any("failed" in rec.getMessage() for rec in caplog.records)
    r = (await DISPATCHER.dispatch(req("get", "/wrong"))).response
    assert r.code == 500 and "no (code, data)" in r.data["message"]
    r = (await DISPATCHER.dispatch(req("post", "/refuse"))).response
    assert r.code == 409 and r.data == {"message": "busy"}
    assert (await DISPATCHER.dispatch(req("get", "/things/x"))).response.code == 200


async def test_jobs_after_the_reply_are_kept_only_on_success() -> None:
    assert len((await DISPATCHER.dispatch(req("post", "/job"))).deferred) == 1
    assert (await DISPATCHER.dispatch(req("post", "/job", "fail"))).deferred == []


def test_routes_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        Route("patch", "/x", echo)
    with pytest.raises(ValueError, match="must start with"):
        Route("get", "x", echo)


# --- plug-ins from entry points --------------------------------------------------------------


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[AgentContext]:
    async def emit(method: str, resource: str, data: Any, code: int = 200) -> None:
        pass

    async with httpx.AsyncClient() as http:
        config = agent_config(tmp_path)
        yield AgentContext(config=config, emit=emit, data_dir=config.dataDir, http=http)


def test_the_built_in_handlers_are_registered_entry_points(ctx: AgentContext) -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert names == {
        "system": "edgefleet.agent.handlers.system:plugin",
        "firmware": "edgefleet.agent.handlers.firmware:plugin",
        "configuration": "edgefleet.agent.handlers.configuration:plugin",
        "syslog": "edgefleet.agent.handlers.syslog:plugin",
        "services": "edgefleet.agent.handlers.services:plugin",
        "jobs": "edgefleet.agent.handlers.jobs:plugin",
    }
    routes = {(r.method, r.path) for r in load_plugins(ctx)}
    assert {
        ("get", "/system/properties"),
        ("get", "/system/properties/{key}"),
        ("get", "/system/status"),
        ("post", "/system/reboot"),
        ("post", "/system/firmware"),
        ("post", "/system/export"),
        ("put", "/system/import"),
        ("post", "/system/syslog"),
        ("get", "/system/services"),
        ("get", "/system/services/{name}"),
        ("put", "/system/services/{name}"),
        ("delete", "/system/tasks/{task_id}"),
    } <= routes
    without = {(r.method, r.path) for r in load_plugins(ctx, disabled=["firmware"])}
    assert ("post", "/system/firmware") not in without and ("get", "/system/status") in without


THIRD_PARTY = """
from edgefleet.agent import AgentContext, HandlerError, Request, Route


def plugin(ctx: AgentContext):
    async def hello(req: Request):
        if req.params["name"] == "nobody":
            raise HandlerError(404, "no such person")
        return 200, {"hello": req.params["name"], "device": ctx.config.deviceUUID}

    return [Route("get", "/hello/{name}", hello)]


def broken(ctx):
    raise RuntimeError("cannot start")


def not_routes(ctx):
    return ["/oops"]
"""


def test_third_party_plug_ins_load_and_broken_ones_are_skipped(
    ctx: AgentContext,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real installed distribution (a .dist-info on sys.path) declares three plug-ins."""
    site = tmp_path / "site"
    (site / "acme_agent_ext-1.0.dist-info").mkdir(parents=True)
    (site / "acme_agent_ext.py").write_text(THIRD_PARTY)
    (site / "acme_agent_ext-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-agent-ext\nVersion: 1.0\n"
    )
    (site / "acme_agent_ext-1.0.dist-info" / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [acme.test.handlers]
            hello = acme_agent_ext:plugin
            broken = acme_agent_ext:broken
            odd = acme_agent_ext:not_routes
            missing = acme_agent_ext_missing:plugin
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "acme_agent_ext", raising=False)
    routes = load_plugins(ctx, group="acme.test.handlers")
    assert [(r.method, r.path) for r in routes] == [("get", "/hello/{name}")]
    failed = {
        rec.getMessage().split()[2]
        for rec in caplog.records
        if "could not be loaded" in rec.getMessage()
    }
    assert failed == {"broken", "odd", "missing"}


async def test_a_third_party_route_answers(
    ctx: AgentContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "mod"
    module.mkdir()
    (module / "acme_hello.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(module))
    import acme_hello  # type: ignore[import-not-found]

    dispatcher = Dispatcher(acme_hello.plugin(ctx))
    r = (await dispatcher.dispatch(req("get", "/hello/ada"))).response
    assert r.code == 200 and r.data == {"hello": "ada", "device": ctx.config.deviceUUID}
    r = (await dispatcher.dispatch(req("get", "/hello/nobody"))).response
    assert r.code == 404 and r.data == {"message": "no such person"}
    monkeypatch.delitem(sys.modules, "acme_hello")


def test_a_second_route_for_the_same_method_and_path_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Dispatcher([Route("get", "/a/{x}", echo), Route("get", "/a/{x}", boom)])
    assert len(d.routes) == 1 and d.routes[0].handler is echo
    assert any("served twice" in rec.getMessage() for rec in caplog.records)


async def test_the_documented_plug_in_example_works(
    ctx: AgentContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "agent.md").read_text()
    code = doc.split("```python\n# acme_agent_ext.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "acme_agent_ext_doc.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    import acme_agent_ext_doc  # type: ignore[import-not-found]

    events: list[tuple[str, Any]] = []

    async def emit(method: str, resource: str, data: Any, code: int = 200) -> None:
        events.append((resource, data))

    ctx.emit = emit
    dispatcher = Dispatcher(acme_agent_ext_doc.plugin(ctx))
    r = (await dispatcher.dispatch(req("get", "/acme/tags/boiler?report=1"))).response
    assert r.code == 200 and r.data["value"] == 81.5
    assert events == [("/acme/tags/boiler", 81.5)]
    r = (await dispatcher.dispatch(req("get", "/acme/tags/valve"))).response
    assert r.code == 404 and r.data == {"message": "no tag valve"}
    monkeypatch.delitem(sys.modules, "acme_agent_ext_doc")
