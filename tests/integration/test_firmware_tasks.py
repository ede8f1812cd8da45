"""Firmware over the task engine, end to end: an image uploaded to filebin or the catalogue,
a group task or a rollout, simulated gateways that download, verify, report and reboot into
the new version (the server's broker, real HTTP downloads)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgefleet.domain.auth import Role, Scope
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.query import parse
from edgefleet.simulator.fleet import SimulatedFleet, ensure_devices
from edgefleet.simulator.gateway import Behaviour
from tests.conftest import Caller, Callers
from tests.filestores import StoreEnv
from tests.gateways import count, eventually

FAST: dict[str, Any] = dict(reboot_delay=0.2, boot_seconds=1.0, firmware_seconds=0.2)


async def _fleet(e: StoreEnv, prefix: str, n: int, behaviour: Behaviour) -> SimulatedFleet:
    creds = await ensure_devices(e.c.fleet, prefix, n)
    assert e.c.messaging.broker is not None
    await e.c.messaging.broker.reloaded()
    port = e.c.settings.mqtt.gateway_port
    fleet = SimulatedFleet(
        creds, "127.0.0.1", port, prefix=prefix, behaviour=behaviour, connect_rate=400, seed=7
    )

    async def online() -> bool:
        return await count(e.c, "online") >= n

    fleet_task = asyncio.create_task(fleet.run())
    fleet.task = fleet_task  # type: ignore[attr-defined]
    await eventually(online, 90)
    return fleet


async def _stop(fleet: SimulatedFleet) -> None:
    fleet.stop.set()
    await asyncio.gather(fleet.task, return_exceptions=True)  # type: ignore[attr-defined]


async def _done(e: StoreEnv, who: Caller, path: str, seconds: float) -> dict[str, Any]:
    got: dict[str, Any] = {}

    async def finished() -> bool:
        r = await e.api.get(path, headers=who.headers)
        got.update(r.json())
        return got["state"] not in ("PENDING", "RUNNING", "PAUSED")

    await eventually(finished, seconds)
    return got


# once, on the production database and the default store: a minute of a thousand gateways
@pytest.mark.parametrize("_session_database", ["postgresql"], indirect=True)
@pytest.mark.parametrize("file_backend", ["local"], indirect=True)
async def test_a_group_firmware_task_to_1000_gateways_with_5_percent_failures(
    live_store_env: StoreEnv,
) -> None:
    e = live_store_env
    who = await Callers(e.c).token(Role.OPERATOR, Scope.READ_WRITE)
    image = os.urandom(16 * 1024)
    r = await e.api.post(
        "/filebin/upload", files={"image": ("fw-2.0.img", image)}, headers=who.headers
    )
    assert r.status_code == 200, r.text
    upload = r.json()
    fleet = await _fleet(e, "fw", 1000, Behaviour(firmware_failure_rate=0.05, **FAST))
    gws = fleet.gateways
    r = await e.api.post("/api/v1/groups", headers=who.headers, json={"name": "fw-line"})
    gid = r.json()["id"]
    r = await e.api.post(
        f"/api/v1/groups/{gid}/devices", headers=who.headers, json=[g.uuid for g in gws]
    )
    assert r.status_code == 200
    file = {
        "url": upload["url"],
        "physicalPath": upload["physicalPath"],
        "headers": {},
        "size": len(image),
        "sha256": hashlib.sha256(image).hexdigest(),
    }
    r = await e.api.post(
        "/api/v1/groupTasks",
        headers=who.headers,
        json={
            "groupId": gid,
            "payload": {
                "method": "post",
                "resource": "/system/firmware",
                "data": {"delay": 0, "version": "2.0", "file": file},
            },
            "meta": {"description": "GROUPLIST_TABLE_ACTION_UPGRADE", "icon": "system_update_alt"},
            # a thousand gateways, their downloads and this server share one test process
            "timeoutSeconds": 120,
        },
    )
    assert r.status_code == 200, r.text
    task = r.json()["taskUUID"]
    done = await _done(e, who, f"/api/v1/groupTasks/{task}", 240)

    failed = sum(g.failed_upgrades for g in gws)
    upgraded = sum(g.upgrades for g in gws)
    assert 0 < failed < 120 and failed + upgraded == 1000  # about 5 %, each gateway once
    assert done["state"] == "FAILURE"  # any failed execution fails the task
    r = await e.api.get(
        f"/api/v1/groupTasks/{task}/executions?state=FAILURE&limit=1000", headers=who.headers
    )
    failures = r.json()["data"]
    assert done["counts"]["SUCCESS"] == upgraded and done["counts"]["FAILURE"] == failed, Counter(
        x["detail"][:60] for x in failures
    )
    assert [g.executed[("post", "/system/firmware")] for g in gws] == [1] * 1000
    g = (await e.api.get(f"/api/v1/groups/{gid}", headers=who.headers)).json()
    assert g["taskStatus"]["completedCount"] == 1000 and g["taskStatus"]["activeCount"] == 0
    r = await e.api.get(
        f"/api/v1/groupTasks/{task}/executions?state=FAILURE&limit=1000", headers=who.headers
    )
    failures = r.json()["data"]
    assert {x["deviceUUID"] for x in failures} == {x.uuid for x in gws if x.failed_upgrades}
    assert all("FW_UPGRADE_FAIL" in x["detail"] for x in failures)

    async def versions() -> bool:  # the upgraded came back with 2.0, the server refreshed
        page = await e.c.fleet.list_devices(
            DeviceFilter(query=parse('softwareVersion = "2.0"')), offset=0, limit=1
        )
        return page.total == upgraded

    await eventually(versions, 60)
    await _stop(fleet)


async def test_a_catalogue_firmware_rollout_upgrades_the_fitting_gateways(
    live_store_env: StoreEnv,
) -> None:
    e = live_store_env
    who = await Callers(e.c).token(Role.OPERATOR, Scope.READ_WRITE)
    fleet = await _fleet(e, "cat", 4, Behaviour(**FAST))
    models = {g.properties["modelName"] for g in fleet.gateways[:2]}
    image = os.urandom(200_000)
    r = await e.api.post(
        "/api/v1/firmware",
        data={"version": "3.1", "models": ",".join(sorted(models))},
        files={"file": ("fw-3.1.img", image)},
        headers=who.headers,
    )
    assert r.status_code == 201, r.text
    fw = r.json()
    body = {"target": {"devices": [g.uuid for g in fleet.gateways]}, "firmwareId": fw["id"]}
    r = await e.api.post("/api/v1/rollouts", headers=who.headers, json={**body, "dryRun": True})
    plan = r.json()
    assert plan["total"] == 2 and plan["skipped"] == 2  # other models are left out
    r = await e.api.post("/api/v1/rollouts", headers=who.headers, json={**body, "waves": [1]})
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]
    assert r.json()["meta"]["version"] == "3.1" and r.json()["total"] == 2
    done = await _done(e, who, f"/api/v1/rollouts/{uuid}", 60)
    assert done["state"] == "SUCCESS" and done["counts"]["SUCCESS"] == 2
    fitting = [g for g in fleet.gateways if g.properties["modelName"] in models]
    assert len(fitting) == 2 and all(g.upgrades == 1 for g in fitting)
    assert all(g.executed[("post", "/system/firmware")] == 0 for g in fleet.gateways[2:])
    rows = (await e.api.get(f"/api/v1/rollouts/{uuid}/executions", headers=who.headers)).json()[
        "data"
    ]
    assert all(x["progress"] == 100 and "FW_UPGRADE_SUCCESS" in x["detail"] for x in rows)

    async def back_upgraded() -> bool:
        return all(g.properties["softwareVersion"] == "3.1" for g in fitting)

    await eventually(back_upgraded, 30)
    await _stop(fleet)


async def test_a_rollout_whose_image_left_the_catalogue_is_aborted(
    live_store_env: StoreEnv,
) -> None:
    e = live_store_env
    who = await Callers(e.c).token(Role.OPERATOR, Scope.READ_WRITE)
    fleet = await _fleet(e, "gone", 2, Behaviour(**FAST))
    r = await e.api.post(
        "/api/v1/firmware",
        data={"version": "4.0"},
        files={"file": ("fw-4.0.img", os.urandom(1000))},
        headers=who.headers,
    )
    fw = r.json()
    at = datetime.now(UTC) + timedelta(seconds=2)
    r = await e.api.post(
        "/api/v1/rollouts",
        headers=who.headers,
        json={
            "target": {"devices": [g.uuid for g in fleet.gateways]},
            "firmwareId": fw["id"],
            "scheduledAt": at.isoformat(),
        },
    )
    uuid = r.json()["uuid"]
    assert r.json()["state"] == "PENDING"
    r = await e.api.delete(f"/api/v1/firmware/{fw['id']}", headers=who.headers)
    assert r.status_code in (200, 204), r.text
    done = await _done(e, who, f"/api/v1/rollouts/{uuid}", 30)
    assert done["state"] == "ABORTED" and f"firmware {fw['id']}" in done["detail"]
    assert done["counts"]["SUCCESS"] == 0
    assert all(g.executed[("post", "/system/firmware")] == 0 for g in fleet.gateways)
    await _stop(fleet)
