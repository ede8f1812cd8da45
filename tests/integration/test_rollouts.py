"""Staged rollouts over real gateways: waves, thresholds, abort, pause, rate, windows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from edgefleet.bootstrap import Container
from edgefleet.domain.tasks import DAYS
from edgefleet.simulator.gateway import Behaviour, VirtualGateway
from tests.conftest import Caller
from tests.gateways import count, eventually, register, start

STATUS = {"method": "get", "resource": "/system/status"}


async def _online(live: Container, n: int) -> None:
    async def ready() -> bool:
        return await count(live, "online") >= n

    await eventually(ready, 30)


def _sent(gws: list[VirtualGateway]) -> int:
    """Status requests the gateways ran (the server also asks each for its properties)."""
    return sum(g.executed[("get", "/system/status")] for g in gws)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _get(live_api: httpx.AsyncClient, h: dict[str, str], uuid: str) -> dict[str, Any]:
    r = await live_api.get(f"/api/v1/rollouts/{uuid}", headers=h)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _until(
    live_api: httpx.AsyncClient, h: dict[str, str], uuid: str, states: set[str], seconds: float = 40
) -> dict[str, Any]:
    got: dict[str, Any] = {}

    async def there() -> bool:
        got.update(await _get(live_api, h, uuid))
        return got["state"] in states

    await eventually(there, seconds)
    return got


async def _executions(
    live_api: httpx.AsyncClient, h: dict[str, str], uuid: str
) -> list[dict[str, Any]]:
    r = await live_api.get(f"/api/v1/rollouts/{uuid}/executions?limit=1000", headers=h)
    return list(r.json()["data"])


async def test_waves_open_one_after_another(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 10, prefix="w")
    gws, tasks = start(live, creds)
    await _online(live, 10)
    body = {
        "name": "status sweep",
        "target": {"devices": [u for u, _ in creds]},
        "payload": STATUS,
        "waves": [2, "30%"],
        "successThreshold": 100,
    }
    r = await live_api.post(
        "/api/v1/rollouts", headers=live_writer.headers, json={**body, "dryRun": True}
    )
    assert r.status_code == 200, r.text
    plan = r.json()
    assert [w["size"] for w in plan["waves"]] == [2, 3, 5]  # the rest forms a last wave
    assert plan["waves"][0]["devices"] == [u for u, _ in creds[:2]]
    assert _sent(gws) == 0  # a dry run sends nothing
    r = await live_api.post("/api/v1/rollouts", headers=live_writer.headers, json=body)
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]
    done = await _until(live_api, live_writer.headers, uuid, {"SUCCESS", "FAILURE", "ABORTED"})
    assert done["state"] == "SUCCESS" and done["counts"]["SUCCESS"] == 10
    assert [w["success"] for w in done["waves"]] == [2, 3, 5]
    rows = await _executions(live_api, live_writer.headers, uuid)
    by_wave: dict[int, list[dict[str, Any]]] = {}
    for e in rows:
        by_wave.setdefault(e["wave"], []).append(e)
    for w in (1, 2):  # each wave started after the one before had all succeeded
        assert max(e["finishedAt"] for e in by_wave[w]) <= min(
            e["startedAt"] for e in by_wave[w + 1]
        )
    assert all(g.executed[("get", "/system/status")] == 1 for g in gws)
    await _stop(tasks)


async def test_a_rollout_aborts_past_its_error_threshold(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 20, prefix="e")
    failing = {i for i in range(20) if i % 10 < 3}  # 30 %: three in every ten
    gws, tasks = [], []
    for i, c in enumerate(creds):
        g, t = start(live, [c], behaviour=Behaviour(failure_rate=1.0 if i in failing else 0.0))
        gws += g
        tasks += t
    await _online(live, 20)
    r = await live_api.post(
        "/api/v1/rollouts",
        headers=live_writer.headers,
        json={
            "target": {"devices": [u for u, _ in creds]},
            "payload": STATUS,
            "waves": [10],
            "successThreshold": 50,
            "errorThreshold": 20,
        },
    )
    uuid = r.json()["uuid"]
    done = await _until(live_api, live_writer.headers, uuid, {"ABORTED", "SUCCESS", "FAILURE"})
    assert done["state"] == "ABORTED"
    assert "error threshold of 20 %" in done["detail"]
    first, second = done["waves"]
    assert first["failure"] == 3 and second["revoked"] == 10  # the second wave never started
    assert _sent(gws[10:]) == 0
    await _stop(tasks)


async def test_pause_resume_and_rate_limit(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 6, prefix="p")
    gws, tasks = start(live, creds)
    await _online(live, 6)
    r = await live_api.post(
        "/api/v1/rollouts",
        headers=live_writer.headers,
        json={"target": {"devices": [u for u, _ in creds]}, "payload": STATUS, "maxPerMinute": 2},
    )
    uuid = r.json()["uuid"]

    async def two() -> bool:
        return bool((await _get(live_api, live_writer.headers, uuid))["counts"]["SUCCESS"] == 2)

    await eventually(two)
    await asyncio.sleep(2.5)  # a few ticks: no more this minute
    got = await _get(live_api, live_writer.headers, uuid)
    assert got["counts"]["SUCCESS"] == 2 and got["counts"]["PENDING"] == 4
    assert _sent(gws) == 2
    r = await live_api.post(f"/api/v1/rollouts/{uuid}/pause", headers=live_writer.headers)
    assert r.status_code == 200 and r.json()["state"] == "PAUSED"
    r = await live_api.post(f"/api/v1/rollouts/{uuid}/pause", headers=live_writer.headers)
    assert r.status_code == 409
    r = await live_api.post(f"/api/v1/rollouts/{uuid}/resume", headers=live_writer.headers)
    assert r.json()["state"] == "RUNNING"
    r = await live_api.post(f"/api/v1/rollouts/{uuid}/abort", headers=live_writer.headers)
    assert r.json()["state"] == "ABORTED" and r.json()["counts"]["REVOKED"] == 4
    await _stop(tasks)


async def test_nothing_starts_outside_the_maintenance_window(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 1, prefix="m")
    gws, tasks = start(live, creds)
    await _online(live, 1)
    today = DAYS[datetime.now(UTC).weekday()]
    other = [d for d in DAYS if d != today][:3]
    r = await live_api.post(
        "/api/v1/rollouts",
        headers=live_writer.headers,
        json={
            "target": {"devices": [creds[0][0]]},
            "payload": STATUS,
            "window": {"timezone": "UTC", "days": other, "start": "00:00", "end": "00:00"},
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["window"]["days"] == other
    await asyncio.sleep(2.5)
    assert _sent(gws) == 0
    assert (await _get(live_api, live_writer.headers, r.json()["uuid"]))["counts"]["PENDING"] == 1
    r = await live_api.post(
        "/api/v1/rollouts",
        headers=live_writer.headers,
        json={
            "target": {"devices": [creds[0][0]]},
            "payload": STATUS,
            "window": {"timezone": "Mars/Olympus", "days": ["mon"]},
        },
    )
    assert r.status_code == 400 and "time zone" in r.json()["detail"]
    await _stop(tasks)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"target": {}, "payload": STATUS}, "exactly one"),
        ({"target": {"groupId": 1, "query": "x"}, "payload": STATUS}, "exactly one"),
        ({"target": {"query": "model ="}, "payload": STATUS}, "invalid fleet query"),
        ({"target": {"devices": ["nope"]}, "payload": STATUS}, "nope"),
        ({"target": {"devices": ["nope"]}}, "payload or firmwareId"),
        ({"target": {"groupId": 424242}, "payload": STATUS}, "group 424242"),
        ({"target": {"query": "tag:x"}, "payload": STATUS, "waves": ["0%"]}, "percentage"),
    ],
)
async def test_a_bad_rollout_is_refused(
    live: Container,
    live_api: httpx.AsyncClient,
    live_writer: Caller,
    body: dict[str, Any],
    message: str,
) -> None:
    r = await live_api.post("/api/v1/rollouts", headers=live_writer.headers, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert message in r.text
