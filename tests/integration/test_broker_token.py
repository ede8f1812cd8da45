"""The provisioned broker token (``broker_token``): a broker-scope credential in
``mx-api-token`` on ``/api/v1/broker/`` and nowhere else."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from edgefleet.api.app import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database
from edgefleet.services.fleet import Registration
from edgefleet.settings import Settings

TOKEN = secrets.token_urlsafe(32)
AUTHN = "/api/v1/broker/authn"


@dataclass
class App:
    client: httpx.AsyncClient
    container: Container
    routes: list[APIRoute]


@pytest.fixture
async def app(settings: Settings, database: Database, tmp_path: Path) -> AsyncIterator[App]:
    """The API of a server configured with ``broker_token``."""
    configured = Settings(
        data_dir=tmp_path,
        database_url=settings.database_url,
        secret_key="test-secret-key-not-for-production",
        broker_token=TOKEN,
    )
    container = build(configured, db=database)
    asgi = create_app(container)
    transport = httpx.ASGITransport(app=asgi, client=("198.51.100.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield App(c, container, list(_api_routes(asgi.routes)))


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for r in routes:
        if hasattr(r, "original_router"):  # an included router (FastAPI ≥ 0.120)
            yield from _api_routes(r.original_router.routes)
        elif isinstance(r, APIRoute):
            yield r


async def test_the_broker_token_is_accepted_on_the_broker_routes(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.client
    caplog.set_level(logging.DEBUG)
    view, psk = await app.container.fleet.register_device(
        Registration(display_name="gw", mac="0090e8000001")
    )
    uuid = view.device.uuid
    h = {"mx-api-token": TOKEN}
    r = await client.post(
        AUTHN, json={"username": uuid, "clientid": uuid, "password": psk}, headers=h
    )
    assert r.status_code == 200 and r.json()["result"] == "allow"
    r = await client.get(f"/api/v1/broker/psk/{uuid}", headers=h)
    assert r.status_code == 200
    r = await client.get("/api/v1/broker/psk-file", headers=h)
    assert r.status_code == 200 and uuid in r.text
    assert TOKEN not in caplog.text


async def test_a_wrong_broker_token_is_refused(
    app: App,
) -> None:
    client = app.client
    for wrong in (secrets.token_urlsafe(32), TOKEN[:-1], TOKEN + "x"):
        r = await client.get("/api/v1/broker/psk-file", headers={"mx-api-token": wrong})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"


def _path(route: APIRoute) -> str:
    path = route.path
    for name in route.param_convertors:
        path = path.replace("{" + name + ":path}", "x").replace("{" + name + "}", "1")
    return path


async def test_the_broker_token_is_refused_on_every_other_route(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    client, routes = app.client, app.routes
    caplog.set_level(logging.DEBUG)
    checked = []
    for route in routes:
        if route.path.startswith("/api/v1/broker/"):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            path = _path(route)
            anonymous = await client.request(method, path)
            if anonymous.status_code != 401:
                continue  # a route that asks for no credential (login, health, the console)
            r = await client.request(method, path, headers={"mx-api-token": TOKEN})
            assert r.status_code == 403, (method, path, r.status_code)
            body = r.json()  # problem+json, or {"message": …} on the ThingsPro-compatible routes
            assert "broker token" in body.get("detail", body.get("message", "")), (method, path)
            checked.append(f"{method} {path}")
    # every API route but the broker's and the few anonymous ones
    assert "GET /api/v1/users/me" in checked and "POST /api/v1/auth/logout" in checked
    assert len(checked) > 40, checked
    assert TOKEN not in caplog.text
