"""Compatible routes answer every error as ``{"message": …}``, ours as problem+json: 4xx, the
router's 405 (whose ``Allow`` names every method served at the path, across routers) and an
unexpected 500, which says nothing of what went wrong inside."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container
from tests.conftest import Caller

SECRET_DETAIL = "boom: password=hunter2 at /srv/internal.py"


@pytest.fixture
async def raw(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(container), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def message(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"message"}, r.text
    return str(r.json()["message"])


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == status
    return str(r.json()["detail"])


def allow(r: httpx.Response) -> set[str]:
    return {m.strip() for m in r.headers["allow"].split(",")}


async def test_the_notification_operations_of_the_original_answer_a_message(
    raw: httpx.AsyncClient, writer: Caller
) -> None:
    h = writer.headers
    message(await raw.get("/api/v1/notifications"), 401)
    message(await raw.get("/api/v1/notifications/support"), 401)
    r = await raw.post("/api/v1/notifications", headers=h, json=["device_online"])
    assert "object" in message(r, 400)
    r = await raw.request("DELETE", "/api/v1/notifications", headers=h, json=["no-such"])
    assert "no-such" in message(r, 404)
    message(await raw.delete("/api/v1/notifications/no-such", headers=h), 404)
    # ours keep problem+json
    problem(await raw.get("/api/v1/notifications/no-such", headers=h), 404)
    problem(await raw.get("/api/v1/notifications/no-such/deliveries", headers=h), 404)


@pytest.mark.parametrize(
    ("method", "path", "methods", "compat"),
    [
        ("PATCH", "/api/v1/groups", {"GET", "POST", "DELETE"}, True),
        ("POST", "/api/v1/groups/1", {"GET", "PUT", "DELETE"}, True),
        # GET and DELETE are the original's, PATCH ours, from another router
        ("PUT", "/api/v1/devices/x", {"GET", "DELETE", "PATCH"}, True),
        ("PUT", "/api/v1/notifications", {"GET", "POST", "DELETE"}, True),
        ("GET", "/api/v1/deviceTasks", {"POST", "PUT"}, True),
        ("PATCH", "/api/v1/users", {"GET", "POST"}, False),
        ("PUT", "/api/v1/notifications/x", {"GET", "DELETE"}, True),
    ],
)
async def test_a_405_names_every_allowed_method_in_the_route_s_shape(
    raw: httpx.AsyncClient,
    writer: Caller,
    method: str,
    path: str,
    methods: set[str],
    compat: bool,
) -> None:
    r = await raw.request(method, path, headers=writer.headers)
    text = message(r, 405) if compat else problem(r, 405)
    assert allow(r) == methods, r.headers
    assert method in text


async def test_an_unexpected_error_is_a_500_that_says_nothing_inside(
    raw: httpx.AsyncClient, writer: Caller, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(SECRET_DETAIL)

    monkeypatch.setattr(container.fleet, "list_groups", broken)
    monkeypatch.setattr(container.notifications, "list_notifications", broken)
    monkeypatch.setattr(container.tasks, "list_tasks", broken)
    h = writer.headers
    for path in ("/api/v1/groups", "/api/v1/notifications", "/api/v1/groupTasks"):
        assert message(await raw.get(path, headers=h), 500) == "internal server error"
    r = await raw.get("/api/v1/rollouts", headers=h)
    assert problem(r, 500) == "internal server error"
    assert SECRET_DETAIL not in r.text
