"""The event log over HTTP: queries and their filters, pages, counts, alarms handled by hand,
the live stream (SSE over real HTTP) and retention; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from edgefleet.api.routes import events as events_routes
from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build, prepare_schema
from edgefleet.cli.main import app as cli_app
from edgefleet.db.engine import Database
from edgefleet.db.repos.events import EventRepo
from edgefleet.db.tables import Event
from edgefleet.domain.auth import Principal, PrincipalKind, Role, Scope, permissions_for
from edgefleet.domain.eventfilter import matches, parse_filter
from edgefleet.domain.events import EventType, NewEvent, Severity, StoredEvent
from edgefleet.services.fleet import Registration
from edgefleet.settings import Settings
from tests.conftest import Caller, Callers
from tests.gateways import eventually
from tests.httpserver import bound_socket, serving

NOW = datetime.now(UTC).replace(microsecond=0)


def ev(
    type: EventType = EventType.GATEWAY_EVENT,
    device: str | None = None,
    *,
    at: datetime | None = None,
    resource: str = "",
    text: str = "",
    severity: Severity | None = None,
    data: Any = None,
) -> NewEvent:
    return NewEvent(
        type=type,
        at=at or datetime.now(UTC),
        device_uuid=device,
        resource=resource,
        text=text,
        data=data,
        severity=severity,
    )


async def store(c: Container, *events: NewEvent) -> list[StoredEvent]:
    """Store events as the writer does (one transaction), without running it."""
    async with c.db.session() as s:
        return await EventRepo(s).insert(events)


async def all_rows(db: Database) -> list[Event]:
    async with db.session() as s:
        return list(await s.scalars(select(Event).order_by(Event.id)))


async def gateway(c: Container, n: int) -> str:
    view, _ = await c.fleet.register_device(
        Registration(display_name=f"gw{n}", mac=f"0090e8{n:06x}")
    )
    return view.device.uuid


def ids(body: dict[str, Any]) -> list[int]:
    return [e["id"] for e in body["data"]]


# --- a small fleet and its history --------------------------------------------------------------


@dataclass
class History:
    a: str
    b: str
    gone: str
    group_id: int
    t: datetime
    e: list[int] = field(default_factory=list)
    """Ids of the events, in the order they were made (1-based names in the tests)."""

    def of(self, *numbers: int) -> list[int]:
        """Ids of these events newest first, as the list answers."""
        return sorted((self.e[n - 1] for n in numbers), reverse=True)


@pytest.fixture
async def history(container: Container) -> History:
    a = await gateway(container, 1)
    b = await gateway(container, 2)
    gone = "33333333-3333-4333-8333-333333333333"  # a gateway deleted since: its events stay
    group = await container.fleet.create_group("line 3")
    await container.fleet.add_to_group(group.group.id, [a])
    t = NOW - timedelta(hours=1)
    stored = await store(
        container,
        ev(EventType.DEVICE_ONLINE, a, at=t, resource="/status", text="online"),
        ev(
            EventType.DEVICE_OFFLINE,
            b,
            at=t + timedelta(minutes=1),
            resource="/status",
            text="offline",
            severity=Severity.WARNING,
        ),
        ev(
            EventType.GATEWAY_EVENT,
            a,
            at=t + timedelta(minutes=2),
            resource="/system/firmware",
            text="POST /system/firmware FW_UPGRADE_FAIL",
            severity=Severity.MAJOR,
            data={"method": "post", "code": 500, "data": {"code": "FW_UPGRADE_FAIL"}},
        ),
        ev(
            EventType.GATEWAY_EVENT,
            b,
            at=t + timedelta(minutes=3),
            resource="/system/reboot",
            text="Reboot requested",
            severity=Severity.CRITICAL,
        ),
        ev(
            EventType.PROPERTY_UPDATE,
            a,
            at=t + timedelta(minutes=4),
            resource="/system/properties/hostname",
            text="hostname = Gw-Line-3",
        ),
        ev(EventType.TASK_UPDATE, None, at=t + timedelta(minutes=5), resource="/tasks/abc"),
        ev(EventType.DEVICE_REGISTERED, gone, at=t + timedelta(minutes=6), text="registered"),
    )
    h = History(a, b, gone, group.group.id, t, [s.id for s in stored])
    async with container.db.session() as s:
        repo = EventRepo(s)
        await repo.acknowledge([h.e[2]], by="ops@example.com", at=NOW)
        await repo.clear([h.e[3]], by="ops@example.com", at=NOW)
    return h


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def test_each_filter_selects_its_events_as_the_stream_rules_do(
    client: httpx.AsyncClient, writer: Caller, container: Container, history: History
) -> None:
    h, t = history, history.t
    cases: list[tuple[dict[str, Any], list[int]]] = [
        ({}, [1, 2, 3, 4, 5, 6, 7]),
        ({"device": h.a}, [1, 3, 5]),
        ({"device": [h.a, h.b]}, [1, 2, 3, 4, 5]),
        ({"device": h.gone}, [7]),
        ({"group": h.group_id}, [1, 3, 5]),
        ({"group": h.group_id, "type": "property_update"}, [5]),
        ({"type": "gateway_event"}, [3, 4]),
        ({"type": ["device_online", "device_offline"]}, [1, 2]),
        ({"resource": "/system/"}, [3, 4, 5]),
        ({"resource": "/System/"}, []),
        ({"severity": "major"}, [3, 4]),
        ({"severity": "warning"}, [2, 3, 4]),
        ({"severity": "warning", "device": h.a}, [3]),
        ({"alarm": "open"}, [2, 3]),
        ({"alarm": "unacknowledged"}, [2]),
        ({"alarm": "acknowledged"}, [3]),
        ({"alarm": "cleared"}, [4]),
        ({"since": _iso(t + timedelta(minutes=3))}, [4, 5, 6, 7]),
        ({"until": _iso(t + timedelta(minutes=3))}, [1, 2, 3]),
        (
            {"since": _iso(t + timedelta(minutes=1)), "until": _iso(t + timedelta(minutes=4))},
            [2, 3, 4],
        ),
        ({"q": "gw-line"}, [5]),
        ({"q": "REBOOT"}, [4]),
        ({"q": "tasks/"}, [6]),
        ({"q": "%"}, []),  # LIKE's wildcards are plain characters here
        ({"q": "_"}, [3]),
    ]
    rows = await all_rows(container.db)
    members = frozenset(await container.fleet.group_device_uuids(h.group_id))
    for params, expected in cases:
        r = await client.get("/api/v1/events", headers=writer.headers, params=params)
        assert r.status_code == 200, (params, r.text)
        assert ids(r.json()) == h.of(*expected), params
        # the live stream applies the same filter in Python: it must agree with the SQL
        as_list = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
        f = parse_filter(
            devices=as_list.get("device", []),
            group=str(params["group"]) if "group" in params else None,
            types=as_list.get("type", []),
            resource=params.get("resource"),
            severity=params.get("severity"),
            alarm=params.get("alarm"),
            since=params.get("since"),
            until=params.get("until"),
            q=params.get("q"),
        )
        in_python = sorted((e.id for e in rows if matches(f, e, members)), reverse=True)
        assert in_python == h.of(*expected), params


async def test_events_and_alarms_have_their_json_shape(
    client: httpx.AsyncClient, writer: Caller, history: History
) -> None:
    h = history
    online = (await client.get(f"/api/v1/events/{h.e[0]}", headers=writer.headers)).json()
    assert online == {
        "id": h.e[0],
        "at": _iso(h.t),
        "type": "device_online",
        "deviceUUID": h.a,
        "resource": "/status",
        "text": "online",
        "data": None,
        "severity": None,
    }
    alarm = (await client.get(f"/api/v1/events/{h.e[2]}", headers=writer.headers)).json()
    assert alarm["severity"] == "major"
    assert alarm["data"] == {"method": "post", "code": 500, "data": {"code": "FW_UPGRADE_FAIL"}}
    assert alarm["acknowledged"] is True and alarm["acknowledgedBy"] == "ops@example.com"
    assert alarm["acknowledgedAt"] == _iso(NOW)
    assert alarm["cleared"] is False and alarm["clearedAt"] is None and alarm["clearedBy"] is None
    r = await client.get("/api/v1/events/999999", headers=writer.headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


async def test_a_gateways_events_have_their_own_address(
    client: httpx.AsyncClient, writer: Caller, history: History
) -> None:
    h = history
    r = await client.get(f"/api/v1/devices/{h.a}/events", headers=writer.headers)
    assert ids(r.json()) == h.of(1, 3, 5)
    r = await client.get(
        f"/api/v1/devices/{h.a}/events", headers=writer.headers, params={"severity": "warning"}
    )
    assert ids(r.json()) == h.of(3)
    r = await client.get(
        f"/api/v1/devices/{h.a}/events", headers=writer.headers, params={"device": h.b}
    )
    assert ids(r.json()) == []
    r = await client.get("/api/v1/devices/not-a-uuid/events", headers=writer.headers)
    assert r.status_code == 400


async def test_pages_are_newest_first_and_stable_while_events_arrive(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    first = await store(container, *(ev(text=f"e{i}") for i in range(25)))
    expected = sorted((s.id for s in first), reverse=True)
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 10}
    pages = 0
    while True:
        body = (await client.get("/api/v1/events", headers=writer.headers, params=params)).json()
        seen.extend(ids(body))
        pages += 1
        # new events arrive between pages: they are newer, so no page shifts
        await store(container, *(ev(text=f"late{pages}-{i}") for i in range(3)))
        if body["next"] is None:
            break
        params["cursor"] = body["next"]
    assert seen == expected and pages == 3
    # a last page exactly full says there is no next one
    everything = (
        await client.get("/api/v1/events", headers=writer.headers, params={"limit": 1000})
    ).json()
    n = len(everything["data"])
    body = (await client.get("/api/v1/events", headers=writer.headers, params={"limit": n})).json()
    assert len(body["data"]) == n and body["next"] is None


async def test_bad_filters_are_400_problems_naming_the_parameter(
    client: httpx.AsyncClient, writer: Caller
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "nope"}, "event type"),
        ({"severity": "info"}, "severity"),
        ({"alarm": "maybe"}, "alarm state"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-02-30T00:00:00Z"}, "until"),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since"),
        ({"device": "gw-1"}, "device"),
        ({"group": "line-3"}, "group"),
        ({"cursor": "bm9wZQ"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
    ]
    for path in ("/api/v1/events", "/api/v1/events/stream"):
        for params, word in cases:
            if path.endswith("stream") and ("cursor" in params or "limit" in params):
                continue
            r = await client.get(path, headers=writer.headers, params=params)
            assert r.status_code == 400, (path, params, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            problem = r.json()
            assert problem["status"] == 400 and word in problem["detail"], (params, problem)
    r = await client.get("/api/v1/events", headers=writer.headers, params={"group": 999})
    assert r.status_code == 404 and "group 999" in r.json()["detail"]
    r = await client.get("/api/v1/events/stream", headers=writer.headers, params={"group": 999})
    assert r.status_code == 404
    r = await client.get(
        "/api/v1/events/stream", headers={**writer.headers, "Last-Event-ID": "abc"}
    )
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"]
    r = await client.get("/api/v1/events/summary", headers=writer.headers, params={"since": "x"})
    assert r.status_code == 400


async def test_summary_counts_types_in_range_and_the_open_alarms(
    client: httpx.AsyncClient, writer: Caller, container: Container, history: History
) -> None:
    await store(
        container,
        ev(EventType.DEVICE_ONLINE, history.a, at=NOW - timedelta(days=2)),
        ev(
            EventType.DEVICE_OFFLINE,
            history.a,
            at=NOW - timedelta(days=2),
            severity=Severity.WARNING,
        ),
    )
    body = (await client.get("/api/v1/events/summary", headers=writer.headers)).json()
    assert body["total"] == 7
    assert body["byType"] == {
        "device_online": 1,
        "device_offline": 1,
        "job_update": 0,
        "property_update": 1,
        "gateway_event": 2,
        "device_registered": 1,
        "device_deleted": 0,
        "task_update": 1,
    }
    # open alarms whatever their age: two warnings (one old), the acknowledged major
    assert body["openAlarms"] == {
        "total": 3,
        "bySeverity": {"warning": 2, "major": 1, "critical": 0},
    }
    assert body["unacknowledged"] == {
        "total": 2,
        "bySeverity": {"warning": 2, "major": 0, "critical": 0},
    }
    since = _iso(NOW - timedelta(days=3))
    until = _iso(history.t + timedelta(minutes=2))
    body = (
        await client.get(
            "/api/v1/events/summary",
            headers=writer.headers,
            params={"since": since, "until": until},
        )
    ).json()
    assert body["since"] == since and body["until"] == until
    assert body["total"] == 4
    assert body["byType"]["device_online"] == 2 and body["byType"]["device_offline"] == 2


# --- alarms -------------------------------------------------------------------------------------


async def test_acknowledging_keeps_the_first_and_clearing_implies_it(
    client: httpx.AsyncClient,
    writer: Caller,
    callers: Callers,
    admin: Caller,
    container: Container,
) -> None:
    warning, major, plain = await store(
        container,
        ev(EventType.DEVICE_OFFLINE, severity=Severity.WARNING),
        ev(severity=Severity.MAJOR),
        ev(text="not an alarm"),
    )
    other = await callers.token(Role.OPERATOR, Scope.READ_WRITE)
    r = await client.post(f"/api/v1/events/{warning.id}/acknowledge", headers=writer.headers)
    assert r.status_code == 200, r.text
    acked = r.json()
    assert acked["acknowledged"] is True and acked["acknowledgedBy"] == writer.email
    assert acked["cleared"] is False
    again = (
        await client.post(f"/api/v1/events/{warning.id}/acknowledge", headers=other.headers)
    ).json()
    assert again["acknowledgedBy"] == writer.email
    assert again["acknowledgedAt"] == acked["acknowledgedAt"]
    cleared = (
        await client.post(f"/api/v1/events/{warning.id}/clear", headers=other.headers)
    ).json()
    assert cleared["cleared"] is True and cleared["clearedBy"] == other.email
    assert cleared["acknowledgedBy"] == writer.email  # still the first
    # clearing an alarm nobody acknowledged acknowledges it, by the same caller, then
    r = await client.post(f"/api/v1/events/{major.id}/clear", headers=other.headers)
    body = r.json()
    assert body["acknowledged"] is True and body["acknowledgedBy"] == other.email
    assert body["acknowledgedAt"] == body["clearedAt"]
    second = (await client.post(f"/api/v1/events/{major.id}/clear", headers=writer.headers)).json()
    assert second["clearedBy"] == other.email and second["clearedAt"] == body["clearedAt"]
    # not an alarm, or no such event
    for action in ("acknowledge", "clear"):
        r = await client.post(f"/api/v1/events/{plain.id}/{action}", headers=writer.headers)
        assert r.status_code == 409 and "not an alarm" in r.json()["detail"]
        r = await client.post(f"/api/v1/events/999999/{action}", headers=writer.headers)
        assert r.status_code == 404
    plain_now = (await client.get(f"/api/v1/events/{plain.id}", headers=writer.headers)).json()
    assert "acknowledged" not in plain_now
    # every one of these writes is in the audit log, as any other write
    audit = (
        await client.get(
            "/api/v1/audit", headers=admin.headers, params={"action": "events.", "limit": 50}
        )
    ).json()["data"]
    seen = [(e["action"], e["outcome"], e["target"]["id"], e["actor"]["name"]) for e in audit]
    assert ("events.acknowledge", "success", str(warning.id), writer.email) in seen
    assert ("events.clear", "success", str(warning.id), other.email) in seen
    assert ("events.acknowledge", "failure", str(plain.id), writer.email) in seen
    assert all(e["target"]["type"] == "event" for e in audit)


async def test_bulk_acknowledge_and_clear_answer_how_many_changed(
    client: httpx.AsyncClient, writer: Caller, admin: Caller, container: Container
) -> None:
    alarms = await store(container, *(ev(severity=Severity.MAJOR) for _ in range(4)))
    [plain] = await store(container, ev(text="plain"))
    a = [s.id for s in alarms]
    r = await client.post("/api/v1/events/acknowledge", headers=writer.headers, json={"ids": a[:2]})
    assert r.status_code == 200 and r.json() == {"changed": 2}
    r = await client.post(
        "/api/v1/events/acknowledge",
        headers=writer.headers,
        json={"ids": [*a, plain.id, 999999]},
    )
    assert r.json() == {"changed": 2}  # the other two; acknowledged ones, plain and unknown not
    r = await client.post(
        "/api/v1/events/clear", headers=writer.headers, json={"ids": [a[0], a[0], plain.id]}
    )
    assert r.json() == {"changed": 1}
    r = await client.post("/api/v1/events/clear", headers=writer.headers, json={"ids": a})
    assert r.json() == {"changed": 3}
    open_now = (
        await client.get("/api/v1/events", headers=writer.headers, params={"alarm": "open"})
    ).json()
    assert open_now["data"] == []
    bodies: list[dict[str, Any]] = [{"ids": []}, {}, {"ids": ["x"]}, {"ids": [1], "more": 1}]
    for body in bodies:
        r = await client.post("/api/v1/events/clear", headers=writer.headers, json=body)
        assert r.status_code == 422, body
    audit = (
        await client.get(
            "/api/v1/audit", headers=admin.headers, params={"action": "events.clear_many"}
        )
    ).json()["data"]
    assert any(e["outcome"] == "success" and e["target"]["type"] == "event" for e in audit)


async def test_viewers_and_read_tokens_read_events_but_cannot_handle_alarms(
    client: httpx.AsyncClient, callers: Callers, container: Container
) -> None:
    [alarm] = await store(container, ev(severity=Severity.CRITICAL))
    viewer = await callers.user(Role.VIEWER)
    read_token = await callers.token(Role.OPERATOR, Scope.READ)
    for caller in (viewer, read_token):
        h = caller.headers
        assert (await client.get("/api/v1/events", headers=h)).status_code == 200
        assert (await client.get("/api/v1/events/summary", headers=h)).status_code == 200
        assert (await client.get(f"/api/v1/events/{alarm.id}", headers=h)).status_code == 200
        for path in (f"/api/v1/events/{alarm.id}/acknowledge", f"/api/v1/events/{alarm.id}/clear"):
            r = await client.post(path, headers=h)
            assert r.status_code == 403, (caller.role, path)
        for path in ("/api/v1/events/acknowledge", "/api/v1/events/clear"):
            r = await client.post(path, headers=h, json={"ids": [alarm.id]})
            assert r.status_code == 403
    assert (await client.get("/api/v1/events")).status_code == 401
    r = await client.get(f"/api/v1/events/{alarm.id}", headers=viewer.headers)
    assert r.json()["acknowledged"] is False


# --- the live stream (SSE over real HTTP) -------------------------------------------------------


@dataclass
class Frame:
    id: str | None
    event: str | None
    data: dict[str, Any] | None
    comments: list[str]


class SSE:
    """A client of ``/events/stream``: reads frames with a deadline each."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def frame(self, seconds: float = 15) -> Frame | None:
        """The next frame; None at the end of the stream."""
        return await asyncio.wait_for(self._frame(), seconds)

    async def _frame(self) -> Frame | None:
        fields: dict[str, str] = {}
        comments: list[str] = []
        async for line in self._lines:
            if line == "":
                if fields or comments:
                    data = fields.get("data")
                    return Frame(
                        fields.get("id"),
                        fields.get("event"),
                        json.loads(data) if data is not None else None,
                        comments,
                    )
                continue
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        return None

    async def event(self, seconds: float = 15) -> Frame:
        """The next frame that carries an event (keep-alive comments skipped)."""
        while True:
            f = await self.frame(seconds)
            assert f is not None, "the stream ended"
            if f.data is not None:
                return f

    async def events_until(self, last_id: int) -> list[Frame]:
        """Every event up to and including the one with ``last_id``."""
        out: list[Frame] = []
        while True:
            f = await self.event()
            out.append(f)
            assert f.data is not None
            if f.data["id"] == last_id:
                return out

    async def ended(self, seconds: float = 15) -> bool:
        while True:
            f = await self.frame(seconds)
            if f is None:
                return True
            assert f.data is None, f"an event after the end was expected: {f}"


@asynccontextmanager
async def sse(
    base: str, headers: dict[str, str], params: dict[str, Any] | None = None
) -> AsyncIterator[SSE]:
    """A connected stream, subscribed (its first comment came) when this yields."""
    async with (
        httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=60)) as http,
        http.stream("GET", "/api/v1/events/stream", headers=headers, params=params) as r,
    ):
        assert r.status_code == 200, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        stream = SSE(r)
        first = await stream.frame()
        assert first is not None and first.comments == ["connected"], first
        yield stream


@pytest.fixture
async def served(container: Container) -> AsyncIterator[str]:
    """The app over real HTTP; its live streams end with the test."""
    feed = container.event_log.feed
    feed.poll_seconds = 0.2
    sock = bound_socket()
    try:
        async with serving(create_app(container), sock) as base:
            try:
                yield base
            finally:
                await feed.close()  # else an open stream holds the server's shutdown
    finally:
        sock.close()


@pytest.fixture
async def writing(container: Container) -> AsyncIterator[Container]:
    """The event writer running (its listener wakes the stream's tailer)."""
    task = asyncio.create_task(container.events.run(), name="test-event-writer")
    yield container
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_stream_sends_new_events_that_pass_its_filter(
    served: str, writing: Container, writer: Caller, history: History
) -> None:
    c, h = writing, history
    params = {"device": h.a, "type": ["device_offline", "gateway_event"]}
    async with sse(served, writer.headers, params) as stream:
        c.events.emit(ev(EventType.DEVICE_OFFLINE, h.b, severity=Severity.WARNING))  # other gw
        c.events.emit(ev(EventType.DEVICE_ONLINE, h.a))  # other type
        c.events.emit(ev(EventType.DEVICE_OFFLINE, h.a, severity=Severity.WARNING, text="gone"))
        c.events.emit(ev(EventType.GATEWAY_EVENT, h.a, resource="/system/reboot", text="last"))
        await c.events.drained()
        rows = [r for r in await all_rows(c.db) if r.id > max(h.e)]
        offline = next(r for r in rows if r.text == "gone")
        last = next(r for r in rows if r.text == "last")
        frames = await stream.events_until(last.id)
        assert [(f.id, f.event) for f in frames] == [
            (str(offline.id), "device_offline"),
            (str(last.id), "gateway_event"),
        ]
        assert frames[0].data is not None
        assert frames[0].data == {
            "id": offline.id,
            "at": _iso(offline.at),
            "type": "device_offline",
            "deviceUUID": h.a,
            "resource": "",
            "text": "gone",
            "data": None,
            "severity": "warning",
            "acknowledged": False,
            "acknowledgedAt": None,
            "acknowledgedBy": None,
            "cleared": False,
            "clearedAt": None,
            "clearedBy": None,
        }


async def test_a_stream_resumes_after_last_event_id_without_duplicates(
    served: str, container: Container, writer: Caller
) -> None:
    before = await store(container, *(ev(text=f"before{i}") for i in range(5)))
    resume_from = before[1].id
    headers = {**writer.headers, "Last-Event-ID": str(resume_from)}
    async with sse(served, headers) as stream:
        new = await store(container, ev(text="new0"), ev(text="new1"))
        frames = await stream.events_until(new[-1].id)
    got = [int(f.id or 0) for f in frames]
    assert got == [s.id for s in before[2:]] + [s.id for s in new]
    assert [f.data["id"] for f in frames if f.data] == got
    # disconnected: what is stored meanwhile comes on the next connection, nothing twice
    missed = await store(container, ev(text="missed0"), ev(text="missed1"))
    headers["Last-Event-ID"] = str(got[-1])
    async with sse(served, headers) as stream:
        [live] = await store(container, ev(text="live"))
        frames = await stream.events_until(live.id)
    assert [int(f.id or 0) for f in frames] == [missed[0].id, missed[1].id, live.id]
    # ?after= does the same for clients that cannot set the header
    async with sse(served, writer.headers, {"after": missed[1].id, "q": "live"}) as stream:
        [sentinel] = await store(container, ev(text="live again"))
        frames = await stream.events_until(sentinel.id)
    assert [int(f.id or 0) for f in frames] == [live.id, sentinel.id]


async def test_a_stream_serves_events_another_instance_stored(
    served: str, settings: Settings, database: Database, writer: Caller
) -> None:
    other = build(settings, db=database)  # a second server on the same database
    task = asyncio.create_task(other.events.run(), name="other-event-writer")
    try:
        async with sse(served, writer.headers, {"type": "task_update"}) as stream:
            other.events.emit(ev(EventType.DEVICE_ONLINE, text="not this"))
            other.events.emit(ev(EventType.TASK_UPDATE, resource="/tasks/x", text="from there"))
            frame = await stream.event()
            assert frame.data is not None and frame.data["text"] == "from there"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.postgresql_only  # SQLite has one writer at a time: ids are committed in order
async def test_an_event_committed_late_below_the_highest_id_still_comes_once(
    served: str, container: Container, writer: Caller, database: Database
) -> None:
    assert database.dialect == "postgresql"
    container.event_log.feed.grace = 120  # this test is about order, not about giving up
    async with sse(served, writer.headers) as stream:
        async with container.db.session() as slow:  # a writer whose commit comes late
            [late] = await EventRepo(slow).insert([ev(text="late")])
            [early] = await store(container, ev(text="early"))
            assert late.id < early.id
            f = await stream.event()
            assert f.data is not None and f.data["id"] == early.id and f.id == str(early.id)
        f = await stream.event()
        # the late one comes, carrying the highest id sent so far: resuming from it skips it
        assert f.data is not None and f.data["id"] == late.id and f.id == str(early.id)
        [after] = await store(container, ev(text="after"))
        f = await stream.event()
        assert f.data is not None and f.data["id"] == after.id
    async with sse(served, {**writer.headers, "Last-Event-ID": str(early.id)}) as stream:
        [sentinel] = await store(container, ev(text="sentinel"))
        frames = await stream.events_until(sentinel.id)
    assert [f.data["id"] for f in frames if f.data] == [after.id, sentinel.id]


@pytest.mark.postgresql_only  # PostgreSQL's json type keeps what SQLite's text would not
async def test_a_stored_event_with_a_lone_surrogate_or_an_overflowing_number_is_streamed_whole(
    served: str, container: Container, writer: Caller
) -> None:
    """Stored before the input rules (or by hand): a lone surrogate escape and a number too
    large for a double read back as a lone surrogate and an infinity; the stream still sends
    the event, as valid UTF-8 JSON, and the events after it."""
    [odd] = await store(container, ev(text="odd"))
    async with container.db.session() as s:
        await s.execute(
            text("UPDATE events SET data = CAST(:doc AS json) WHERE id = :id"),
            {"id": odd.id, "doc": '{"name": "gw\\ud800", "load": 1e400}'},
        )
    [after] = await store(container, ev(text="after"))
    async with sse(served, writer.headers, {"after": str(odd.id - 1)}) as stream:
        first = await stream.event()
        assert first.data is not None and first.data["id"] == odd.id
        assert first.data["data"] == {"name": "gw\ufffd", "load": None}
        second = await stream.event()
        assert second.data is not None and second.data["id"] == after.id


async def test_a_slow_stream_is_ended_and_the_others_go_on(
    container: Container,
) -> None:
    feed = container.event_log.feed
    feed.poll_seconds = 0.1
    feed.queue_limit = 3
    slow = await feed.subscribe(lambda e: True)
    fast = await feed.subscribe(lambda e: True)
    got: list[int] = []
    try:
        for i in range(6):
            [s] = await store(container, ev(text=f"e{i}"))
            while s.id not in got:
                assert await fast.wait(15), "the fast stream got nothing"
                got.extend(e.id for e in fast.take())
        assert slow.ended == "too slow" and fast.ended is None
        assert len(got) == 6
    finally:
        slow.close()
        fast.close()
    await eventually(lambda: _false(feed.running), 10)


async def _false(value: bool) -> bool:
    return not value


async def test_a_stream_too_slow_is_closed_and_resumes_from_its_last_id(
    served: str, container: Container, writer: Caller
) -> None:
    container.event_log.feed.queue_limit = 2
    async with sse(served, writer.headers) as stream:
        [one] = await store(container, ev(text="one"))
        first = await stream.event()
        assert first.id == str(one.id)
        burst = await store(container, *(ev(text=f"burst{i}") for i in range(5)))
        assert await stream.ended()
    container.event_log.feed.queue_limit = 1000
    async with sse(served, {**writer.headers, "Last-Event-ID": str(one.id)}) as stream:
        frames = await stream.events_until(burst[-1].id)
    assert [int(f.id or 0) for f in frames] == [s.id for s in burst]


async def test_streams_end_on_shutdown_and_on_disconnect(
    served: str, container: Container, callers: Callers
) -> None:
    reader = await callers.token(Role.VIEWER, Scope.READ)  # reading is enough
    feed = container.event_log.feed
    async with sse(served, reader.headers) as stream:
        assert feed.subscribers == 1 and feed.running
    await eventually(lambda: _is(feed.subscribers, 0), 10)
    await eventually(lambda: _false(feed.running), 10)  # the tailer stops with the last one
    async with sse(served, reader.headers) as stream, sse(served, reader.headers) as other:
        assert feed.subscribers == 2
        await container.stop_messaging()
        assert await stream.ended() and await other.ended()
        assert feed.subscribers == 0 and not feed.running


async def _is(value: int, expected: int) -> bool:
    return value == expected


async def test_a_quiet_stream_sends_keep_alive_comments(
    served: str, writer: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_routes, "KEEPALIVE_SECONDS", 0.2)
    async with sse(served, writer.headers) as stream:
        f = await stream.frame()
        assert f is not None and f.comments == ["keep-alive"] and f.data is None


async def test_a_stream_ends_when_its_credential_does(
    served: str, container: Container, callers: Callers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream is authenticated when it opens; a stolen session's stream used to go on
    for ever after the password change that ended the session (and a revoked token's, a
    disabled user's). It is checked again at each keep-alive now."""
    monkeypatch.setattr(events_routes, "KEEPALIVE_SECONDS", 0.2)
    victim = await callers.user(Role.OPERATOR)
    stolen = dict(victim.headers)
    own = await container.accounts.login(victim.email, victim.password)
    async with sse(served, stolen) as stream:
        await container.accounts.change_password(
            victim.user_id, victim.password, "a brand new passphrase", keep_session=own.secret
        )
        assert await _ends_within(stream, 10)
    reader = await callers.token(Role.VIEWER, Scope.READ)
    async with sse(served, reader.headers) as stream:
        [token] = await container.accounts.list_tokens(await _principal(container, reader.user_id))
        await container.accounts.revoke_token(await _principal(container, reader.user_id), token.id)
        assert await _ends_within(stream, 10)
    other = await callers.user(Role.VIEWER)
    async with sse(served, other.headers) as stream:
        await container.accounts.update_user(other.user_id, disabled=True)
        assert await _ends_within(stream, 10)
    # a stream whose credential holds goes on past many checks
    async with sse(served, victim.headers | {"Authorization": f"Bearer {own.secret}"}) as stream:
        for _ in range(5):
            f = await stream.frame()
            assert f is not None and f.comments == ["keep-alive"]


async def _ends_within(stream: SSE, seconds: float) -> bool:
    """Whether the stream ends within ``seconds`` (keep-alives meanwhile are fine)."""
    try:
        async with asyncio.timeout(seconds):
            return await stream.ended()
    except TimeoutError:
        return False


async def _principal(container: Container, user_id: int) -> Principal:
    user = await container.accounts.get_user(user_id)
    role = Role(user.role)
    return Principal(PrincipalKind.SESSION, user.id, user.email, role, permissions_for(role))


# --- retention ----------------------------------------------------------------------------------


async def test_retention_deletes_old_events_in_batches_keeping_open_alarms_and_recent_ones(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = NOW - timedelta(days=10)
    old_plain = await store(container, *(ev(at=old, text=f"old{i}") for i in range(7)))
    [old_open, old_cleared] = await store(
        container,
        ev(EventType.DEVICE_OFFLINE, at=old, severity=Severity.WARNING),
        ev(at=old, severity=Severity.MAJOR),
    )
    async with container.db.session() as s:
        await EventRepo(s).clear([old_cleared.id], by="ops", at=NOW)
    recent = await store(
        container,
        ev(at=NOW - timedelta(days=6), text="recent"),
        ev(at=NOW - timedelta(days=1), severity=Severity.MAJOR),
    )
    batches: list[int] = []
    delete = EventRepo.delete_older_than

    async def counted(self: EventRepo, cutoff: datetime, limit: int) -> int:
        n = await delete(self, cutoff, limit)
        batches.append(n)
        return n

    monkeypatch.setattr(EventRepo, "delete_older_than", counted)
    container.events.settings.retention_days = 7
    assert await container.events.purge(batch=3) == 8
    assert batches == [3, 3, 2]
    left = {r.id for r in await all_rows(container.db)}
    assert left == {old_open.id, *(s.id for s in recent)}
    assert not left & {s.id for s in old_plain}
    container.events.settings.retention_days = 0  # off: nothing goes
    assert await container.events.purge() == 0


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("EDGEFLEET_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_the_purge_command_deletes_what_is_older_than_asked(cli_env: Path) -> None:
    async def seed() -> list[StoredEvent]:
        c = build(Settings(data_dir=cli_env))
        try:
            await prepare_schema(c)
            return await store(
                c,
                ev(at=NOW - timedelta(days=5), text="five days"),
                ev(at=NOW - timedelta(days=2), text="two days"),
                ev(at=NOW - timedelta(days=5), severity=Severity.CRITICAL),  # open: kept
                ev(at=NOW - timedelta(hours=1), text="recent"),
            )
        finally:
            await c.close()

    async def left() -> list[str]:
        c = build(Settings(data_dir=cli_env))
        try:
            return [r.text for r in await all_rows(c.db)]
        finally:
            await c.close()

    asyncio.run(seed())
    runner = CliRunner()
    r = runner.invoke(cli_app, ["events", "purge", "--older-than", "3"])
    assert r.exit_code == 0, r.output
    assert "deleted 1 event(s) older than 3 days" in r.output
    assert asyncio.run(left()) == ["two days", "", "recent"]
    r = runner.invoke(cli_app, ["events", "purge", "--older-than", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.output) == {"deleted": 1, "olderThanDays": 1.0}
    r = runner.invoke(cli_app, ["events", "purge", "--older-than", "0"])
    assert r.exit_code == 2
    r = runner.invoke(cli_app, ["events", "purge"])  # the default setting: 30 days
    assert r.exit_code == 0 and "deleted 0 event(s) older than 30 days" in r.output
