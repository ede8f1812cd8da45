"""Hostile REST input answers 4xx on both databases, never 500 (issue 15).

The cases are those that gave a 500 (or stored what they should not) before the boundary
checks of ``api/inputs.py``: a NUL or a lone surrogate reaching the database or the JSON
encoder, a number or time the column cannot hold, NaN in the legacy query, JSON nested deeper
than the response encoder goes, a unique name taken by a rename; beside each, what must still
pass. The client here does not re-raise the app's exceptions, so a 500 is seen as the status
it is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container
from edgefleet.db.repos.accounts import UserRepo
from edgefleet.db.repos.devices import DeviceRepo
from edgefleet.db.repos.groups import GroupRepo
from edgefleet.db.tables import Device, Group, User
from edgefleet.domain.auth import Role
from tests.conftest import Caller, Callers
from tests.integration.test_devices_api import register
from tests.integration.test_groups_api import new_group

PROBLEM = "application/problem+json"


@pytest.fixture
async def raw(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI, answering 500s as a server would instead of raising them here."""
    transport = httpx.ASGITransport(app=create_app(container), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def compat_error(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json", r.headers
    body = r.json()
    assert set(body) == {"message"}, body
    for word in words:
        assert word in body["message"], body
    return str(body["message"])


def problem_error(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM, r.headers
    body: dict[str, Any] = r.json()
    for word in words:
        assert word in body["detail"], body
    return body


# --- text: NUL and lone surrogates -----------------------------------------------------------


async def test_nul_in_a_login_is_refused_naming_the_field_when_unauthenticated(
    raw: httpx.AsyncClient,
) -> None:
    body = {"email": "admin\u0000@localhost", "password": "x"}
    r = await raw.post("/api/v1/auth/local", json=body)
    compat_error(r, 400, "body.email", "NUL")
    r = await raw.post("/api/v1/auth/login", json={"email": "a@b", "password": "p\u0000"})
    problem = problem_error(r, 422, "body.password", "NUL")
    assert problem["errors"][0]["loc"] == ["body", "password"]


async def test_nul_anywhere_in_a_json_body_is_refused_naming_its_path(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    h = writer.headers
    r = await raw.post("/api/v1/groups", headers=h, json={"name": "a\u0000b"})
    compat_error(r, 400, "body.name", "NUL")
    a = await register(raw, h, "0090e8000001")
    r = await raw.patch(
        f"/api/v1/devices/{a['uuid']}", headers=h, json={"attributes": {"rack": ["x", "\u0000"]}}
    )
    problem_error(r, 422, "body.attributes.rack.1")
    r = await raw.patch(
        f"/api/v1/devices/{a['uuid']}", headers=h, json={"attributes": {"k\u0000": 1}}
    )
    problem_error(r, 422, "body.attributes", "NUL")


async def test_lone_surrogate_in_a_json_body_is_refused(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    h = {**writer.headers, "content-type": "application/json"}
    r = await raw.post("/api/v1/groups", headers=h, content=b'{"name": "x\\ud800"}')
    compat_error(r, 400, "body.name", "surrogate")
    r = await raw.post(
        "/api/v1/notifications",
        headers=h,
        content=b'{"eventType": "device_online", "protocol": "http", "endpoint": "\\udfff"}',
    )
    compat_error(r, 400, "body.endpoint", "surrogate")
    # a valid pair is a character like any other
    r = await raw.post("/api/v1/groups", headers=h, content=b'{"name": "x\\ud83d\\ude00"}')
    assert r.status_code == 200 and r.json()["name"] == "x\U0001f600"


async def test_nul_in_a_path_or_query_is_refused_naming_the_parameter(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    h = writer.headers
    compat_error(await raw.get("/api/v1/devices/a%00b", headers=h), 400, "path.uuid", "NUL")
    compat_error(await raw.get("/api/v1/devices?mac=%00", headers=h), 400, "query.mac", "NUL")
    problem_error(await raw.get("/api/v1/events?q=%00", headers=h), 422, "query.q", "NUL")
    problem_error(await raw.get("/api/v1/executions/%00", headers=h), 422, "path.uuid", "NUL")


async def test_invalid_utf8_in_a_path_or_query_is_not_an_error_of_ours(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    """%ED%A0%80 is a UTF-16 surrogate encoded as UTF-8: not a character."""
    h = writer.headers
    r = await raw.get("/api/v1/devices/%ED%A0%80", headers=h)
    assert r.status_code in (400, 404), r.text
    r = await raw.get("/api/v1/devices?serialNumber=%ED%A0%80", headers=h)
    assert r.status_code in (200, 400), r.text
    r = await raw.get("/api/v1/events?q=%ED%A0%80", headers=h)
    assert r.status_code in (200, 422), r.text


# --- numbers and dates the columns cannot hold ------------------------------------------------


async def test_ids_past_the_column_are_refused_not_looked_up(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    h = writer.headers
    compat_error(await raw.get(f"/api/v1/groups/{2**31}", headers=h), 400, "path.id")
    compat_error(await raw.get(f"/api/v1/groups/{-(2**31) - 1}", headers=h), 400, "path.id")
    assert (await raw.get(f"/api/v1/groups/{2**31 - 1}", headers=h)).status_code == 404
    r = await raw.request("DELETE", "/api/v1/groups", headers=h, json=[1, 2**31])
    compat_error(r, 400, "body.1")
    compat_error(await raw.get(f"/api/v1/devices?groupId={2**31}", headers=h), 400, "groupId")
    compat_error(await raw.get(f"/api/v1/deviceJobRelay/{2**63}", headers=h), 400, "path.id")
    assert (await raw.get(f"/api/v1/deviceJobRelay/{2**63 - 1}", headers=h)).status_code == 404
    problem_error(await raw.get(f"/api/v1/events/{2**63}", headers=h), 422, "path.id")
    r = await raw.post("/api/v1/events/acknowledge", headers=h, json={"ids": [2**64]})
    problem_error(r, 422, "body.ids.0")
    r = await raw.post(
        "/api/v1/groupTasks",
        headers=h,
        json={"groupId": 2**31, "payload": {"method": "get", "resource": "/x"}},
    )
    compat_error(r, 400, "body.groupId")


async def test_offsets_past_int64_are_refused(raw: httpx.AsyncClient, writer: Caller) -> None:
    h = writer.headers
    compat_error(await raw.get(f"/api/v1/devices?offset={2**63}", headers=h), 400, "offset")
    compat_error(await raw.get(f"/api/v1/groups?offset={2**63}", headers=h), 400, "offset")
    r = await raw.get(f"/api/v1/devices?offset={2**63 - 1}", headers=h)
    assert r.status_code == 200 and r.json()["data"] == []
    problem_error(await raw.get(f"/api/v1/rollouts?offset={2**64}", headers=h), 422, "offset")


async def test_a_date_that_overflows_in_utc_is_refused(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    h = writer.headers
    g = await new_group(raw, h, "plant")
    r = await raw.post(
        "/api/v1/groupTasks",
        headers=h,
        json={
            "groupId": g["id"],
            "payload": {"method": "get", "resource": "/system/status"},
            "applyPolicy": "schedule",
            "scheduledDateTime": "9999-12-31T23:59:59-14:00",
        },
    )
    compat_error(r, 400, "body.scheduledDateTime")
    r = await raw.get("/api/v1/audit?since=0001-01-01T00:00:00%2B14:00", headers=h)
    assert r.status_code in (403, 422), r.text  # an operator may not read the audit log
    r = await raw.get("/api/v1/events?until=9999-12-31T23:59:59-14:00", headers=h)
    problem_error(r, 400, "until")


async def test_audit_dates_are_utc_and_outside_the_range_are_refused(
    raw: httpx.AsyncClient, admin: Caller
) -> None:
    r = await raw.get(
        "/api/v1/audit", headers=admin.headers, params={"since": "0001-01-01T00:00:00+14:00"}
    )
    problem_error(r, 422, "query.since")
    # a time without offset is UTC (it reached the database naive: 500)
    for params in ({"since": "2026-01-01T00:00:00"}, {"until": "2026-01-01"}):
        r = await raw.get("/api/v1/audit", headers=admin.headers, params=params)
        assert r.status_code == 200, r.text
    # where the offset is required, it still is
    r = await raw.post(
        "/api/v1/tokens", headers=admin.headers, json={"scope": "read", "expiresAt": "2030-01-01"}
    )
    problem_error(r, 422, "body.expiresAt", "time-zone offset")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e300", "1e400"])
async def test_non_finite_or_huge_numbers_in_the_legacy_query_are_refused(
    raw: httpx.AsyncClient, writer: Caller, bad: str
) -> None:
    h = writer.headers
    for key in ("offset", "limit"):
        r = await raw.get("/api/v1/devices", headers=h, params={"query": f'{{"{key}": {bad}}}'})
        compat_error(r, 400, "query")
    r = await raw.get(
        "/api/v1/devices",
        headers=h,
        params={"query": f'{{"keys": {{"mac": {{"filter": {bad}}}}}}}'},
    )
    assert r.status_code in (200, 400), r.text


# --- JSON depth -------------------------------------------------------------------------------


async def test_json_nested_past_the_limit_is_refused(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    h = writer.headers
    a = await register(raw, h, "0090e8000001")
    r = await raw.patch(f"/api/v1/devices/{a['uuid']}", headers=h, json={"attributes": nested(300)})
    problem_error(r, 422, "deeper than")
    r = await raw.patch(f"/api/v1/devices/{a['uuid']}", headers=h, json={"attributes": nested(20)})
    assert r.status_code == 200, r.text
    r = await raw.post(
        "/api/v1/devices", headers=h, json={"mac": "0090e8000002", "attributes": nested(300)}
    )
    compat_error(r, 400, "deeper than")
    deep_query = json.dumps({"keys": nested(300)})
    r = await raw.get("/api/v1/devices", headers=h, params={"query": deep_query})
    compat_error(r, 400, "query")


async def test_stored_deep_or_non_finite_json_does_not_break_a_list_page(
    raw: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    """Data stored before the checks existed (or by another way in) still lists."""
    h = writer.headers
    a = await register(raw, h, "0090e8000001")
    b = await register(raw, h, "0090e8000002")
    async with container.db.session() as s:
        row = await s.get(Device, a["uuid"])
        assert row is not None
        row.attributes = nested(300)
    if container.db.dialect == "sqlite":  # PostgreSQL's json refuses NaN: it cannot be stored
        async with container.db.session() as s:
            row = await s.get(Device, b["uuid"])
            assert row is not None
            row.attributes = {"x": float("nan")}
    r = await raw.get("/api/v1/devices", headers=h)
    assert r.status_code == 200, r.text
    assert {d["uuid"] for d in r.json()["data"]} == {a["uuid"], b["uuid"]}
    r = await raw.get(f"/api/v1/devices/{a['uuid']}", headers=h)
    assert r.status_code == 200, r.text


# --- conflicts --------------------------------------------------------------------------------


async def test_renaming_a_group_to_a_taken_name_is_409(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    h = writer.headers
    await new_group(raw, h, "a")
    b = await new_group(raw, h, "b")
    r = await raw.put(f"/api/v1/groups/{b['id']}", headers=h, json={"name": "a"})
    compat_error(r, 409, "a group with name 'a' already exists")
    r = await raw.put(f"/api/v1/groups/{b['id']}", headers=h, json={"name": "c"})
    assert r.status_code == 200 and r.json()["name"] == "c"


def _deleted_once_read(
    monkeypatch: pytest.MonkeyPatch, container: Container, repo: Any, table: Any, key: Any
) -> None:
    """``repo.get`` returns the row, then another request deletes it: the change that follows
    meets a row that is gone (what two clients racing on one id do)."""
    original = repo.get

    async def get(self: Any, *args: Any, **kwargs: Any) -> Any:
        row = await original(self, *args, **kwargs)
        async with container.db.session() as other:
            await other.execute(delete(table).where(key == args[0]))
        return row

    monkeypatch.setattr(repo, "get", get)


async def test_a_change_to_a_row_deleted_meanwhile_is_404_not_500(
    raw: httpx.AsyncClient,
    writer: Caller,
    admin: Caller,
    callers: Callers,
    container: Container,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rename, a device change, a key rotation or a user change racing a delete of the same
    row: the UPDATE matched no row (SQLAlchemy's StaleDataError) and answered 500."""
    h = writer.headers
    group = await new_group(raw, h, "racing")
    one = await register(raw, h, "0090e8000101")
    two = await register(raw, h, "0090e8000102")
    user = await callers.user(Role.VIEWER)
    with monkeypatch.context() as m:
        _deleted_once_read(m, container, GroupRepo, Group, Group.id)
        r = await raw.put(f"/api/v1/groups/{group['id']}", headers=h, json={"name": "renamed"})
    compat_error(r, 404, "deleted")
    with monkeypatch.context() as m:
        _deleted_once_read(m, container, DeviceRepo, Device, Device.uuid)
        r = await raw.patch(f"/api/v1/devices/{one['uuid']}", headers=h, json={"displayName": "x"})
        problem_error(r, 404, "deleted")
        r = await raw.post(f"/api/v1/devices/{two['uuid']}/psk", headers=admin.headers)
        problem_error(r, 404, "deleted")
    with monkeypatch.context() as m:
        _deleted_once_read(m, container, UserRepo, User, User.id)
        r = await raw.patch(
            f"/api/v1/users/{user.user_id}", headers=admin.headers, json={"role": "operator"}
        )
        problem_error(r, 404, "deleted")
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]


async def test_console_fragments_refuse_the_same_input(
    raw: httpx.AsyncClient, callers: Callers
) -> None:
    """The console's pages take query input too; a logged-in browser meets the same rules."""
    user = await callers.user(Role.OPERATOR)
    r = await raw.post("/api/v1/auth/login", json={"email": user.email, "password": user.password})
    assert r.status_code == 200, r.text
    for path in (
        f"/console/fragments/devices?page={2**31}",
        f"/console/fragments/devices?size={2**63}",
        "/console/fragments/devices?q=%00",
        f"/console/fragments/groups/{2**31}/devices",
        f"/console/fragments/tasks?group={2**31}",
        "/console/fragments/events?q=a%00",
    ):
        r = await raw.get(path)
        problem_error(r, 422)
    assert (await raw.get("/console/fragments/devices?page=2")).status_code == 200


async def test_a_refused_hostile_write_is_still_audited(
    raw: httpx.AsyncClient, admin: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit log records the attempt (what it can store of it), and nothing fails."""
    r = await raw.delete("/api/v1/devices/a%00b", headers=admin.headers)
    compat_error(r, 400, "path.uuid")
    r = await raw.get("/api/v1/audit", headers=admin.headers, params={"action": "devices."})
    assert r.status_code == 200, r.text
    (entry,) = r.json()["data"]
    assert entry["outcome"] == "failure" and entry["statusCode"] == 400
    assert entry["target"]["id"] == "a\ufffdb"
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]
