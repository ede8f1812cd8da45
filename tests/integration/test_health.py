"""Liveness, readiness, metrics and our OpenAPI document."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.settings import Settings
from tests.conftest import Caller
from tests.gateways import eventually


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json()["status"] == "ok"
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": True}


async def test_readyz_says_not_ready_without_a_database(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+asyncpg://nobody@127.0.0.1:9/none",
        secret_key="k",
    )
    container = build(settings)
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"] == {"database": False}
        assert (await c.get("/healthz")).status_code == 200
    await container.close()


async def test_metrics_count_requests_by_route(client: httpx.AsyncClient, writer: Caller) -> None:
    await client.get("/api/v1/devices/some-uuid", headers=writer.headers)
    text = (await client.get("/metrics/")).text
    assert (
        'edgefleet_http_requests_total{method="GET",route="/api/v1/devices/{uuid}",status="404"}'
        in text
    )
    assert "edgefleet_http_request_duration_seconds_bucket" in text


async def test_openapi_documents_every_api_route(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    paths = set(doc["paths"])
    for p in (
        "/api/v1/devices",
        "/api/v1/devices/{uuid}",
        "/api/v1/groups/{id}/devices",
        "/api/v1/auth/local",
        "/api/v1/tokens",
        "/api/v1/users",
        "/api/v1/audit",
    ):
        assert p in paths
    assert (await client.get("/docs")).status_code == 200


async def test_readyz_follows_the_broker_connection(live: Container) -> None:
    transport = httpx.ASGITransport(app=create_app(live))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["checks"] == {"database": True, "broker": True, "workers": True}
        broker = live.messaging.broker
        assert broker is not None and broker.pid is not None
        os.kill(broker.pid, signal.SIGKILL)  # the supervisor restarts it

        web_during_outage: list[httpx.Response] = []

        async def not_ready() -> bool:
            if (await c.get("/readyz")).status_code != 503:
                return False
            # the console's and the API's readiness reports the broker and stays ready
            web_during_outage.append(await c.get("/readyz/web"))
            return bool(web_during_outage[-1].json().get("broker") == {"connected": False})

        await eventually(not_ready, 10)
        r = web_during_outage[-1]
        assert r.status_code == 200, r.text
        assert r.json()["checks"] == {"database": True, "workers": True}

        async def ready() -> bool:
            return (await c.get("/readyz")).status_code == 200

        await eventually(ready, 30)
        assert (await c.get("/readyz/web")).json()["broker"] == {"connected": True}


async def test_an_unknown_path_is_a_404_problem_not_a_server_error(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/api/v1/no-such-thing", "/favicon.ico"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/problem+json"
    r = await client.get("/console/no-such-page")  # a person's browser: a page, not JSON
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    r = await client.delete("/healthz")
    assert r.status_code == 405
