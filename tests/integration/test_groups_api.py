"""The ThingsPro-compatible group API: membership, counters and the busy-group rule."""

from __future__ import annotations

import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select

from edgefleet.bootstrap import Container
from edgefleet.db.tables import Execution, Task
from edgefleet.domain.tasks import TaskState
from tests.conftest import Caller
from tests.integration.test_devices_api import register


async def new_group(client: httpx.AsyncClient, h: dict[str, str], name: str) -> dict[str, Any]:
    r = await client.post("/api/v1/groups", headers=h, json={"name": name, "description": "d"})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def add_task(container: Container, group_id: int, states: dict[str, TaskState]) -> str:
    """A group task with one record per device in ``states`` (the task service comes later)."""
    now = datetime.now(UTC)
    task_uuid = str(uuidlib.uuid4())
    async with container.db.session() as s:
        task = Task(
            uuid=task_uuid,
            kind="group",
            group_id=group_id,
            target={"groupId": group_id},
            payload={"method": "post", "resource": "/system/reboot"},
            completion="reboot",
            apply_policy="none",
            retry_times=0,
            state="RUNNING",
            revoked=False,
            meta={"description": "GROUPLIST_TABLE_ACTION_REBOOT"},
            created_at=now,
            updated_at=now,
        )
        s.add(task)
        await s.flush()
        for dev, state in states.items():
            s.add(
                Execution(
                    uuid=str(uuidlib.uuid4()),
                    task_id=task.id,
                    device_uuid=dev,
                    state=state.value,
                    success=state is TaskState.SUCCESS,
                    revoked=state is TaskState.REVOKED,
                    message_id=str(uuidlib.uuid4()),
                    created_at=now,
                    updated_at=now,
                )
            )
    return task_uuid


async def test_group_lifecycle_and_membership(client: httpx.AsyncClient, writer: Caller) -> None:
    h = writer.headers
    g = await new_group(client, h, "plant-a")
    assert g["devices"] == [] and g["taskUUID"] is None
    a = await register(client, h, "0090e8000001")
    b = await register(client, h, "0090e8000002")
    r = await client.post(
        f"/api/v1/groups/{g['id']}/devices", headers=h, json=[a["uuid"], b["uuid"]]
    )
    assert r.status_code == 200 and sorted(r.json()) == sorted([a["uuid"], b["uuid"]])
    got = (await client.get(f"/api/v1/groups/{g['id']}", headers=h)).json()
    assert [d["uuid"] for d in got["devices"]] == [a["uuid"], b["uuid"]]
    assert got["deviceStatus"]["createdCount"] == 2 and got["deviceStatus"]["totalCount"] == 2
    assert got["deviceStatus"]["created"] == 2
    r = await client.request(
        "DELETE", f"/api/v1/groups/{g['id']}/devices", headers=h, json=[a["uuid"]]
    )
    assert r.json() == [b["uuid"]]
    assert (await client.get(f"/api/v1/groups/{g['id']}/devices", headers=h)).json() == [b["uuid"]]
    r = await client.put(
        f"/api/v1/groups/{g['id']}", headers=h, json={"name": "plant-b", "id": 999}
    )
    assert r.status_code == 200 and r.json()["name"] == "plant-b" and r.json()["id"] == g["id"]
    listed = (await client.get("/api/v1/groups", headers=h)).json()
    assert (listed["count"], listed["limit"], listed["offset"]) == (1, 20, 0)
    assert (await client.delete(f"/api/v1/groups/{g['id']}", headers=h)).status_code == 200
    assert (await client.get(f"/api/v1/groups/{g['id']}", headers=h)).status_code == 404
    # the device survives its group
    assert (await client.get(f"/api/v1/devices/{b['uuid']}", headers=h)).json()["groupId"] is None


async def test_a_device_belongs_to_one_group_only(
    client: httpx.AsyncClient, writer: Caller
) -> None:
    h = writer.headers
    g1, g2 = await new_group(client, h, "one"), await new_group(client, h, "two")
    a = await register(client, h, "0090e8000001")
    await client.post(f"/api/v1/groups/{g1['id']}/devices", headers=h, json=[a["uuid"]])
    r = await client.post(f"/api/v1/groups/{g2['id']}/devices", headers=h, json=[a["uuid"]])
    assert r.status_code == 409 and "one group only" in r.json()["message"]
    assert (await client.get(f"/api/v1/groups/{g2['id']}/devices", headers=h)).json() == []
    # adding again to the same group is harmless
    r = await client.post(f"/api/v1/groups/{g1['id']}/devices", headers=h, json=[a["uuid"]])
    assert r.status_code == 200 and r.json() == [a["uuid"]]


async def test_membership_errors(client: httpx.AsyncClient, writer: Caller) -> None:
    h = writer.headers
    g = await new_group(client, h, "g")
    r = await client.post(f"/api/v1/groups/{g['id']}/devices", headers=h, json=["missing"])
    assert r.status_code == 404
    r = await client.post("/api/v1/groups/9999/devices", headers=h, json=["x"])
    assert r.status_code == 404 and r.json() == {"message": "group 9999 not found"}
    r = await client.get("/api/v1/groups/abc", headers=h)
    assert r.status_code == 400
    r = await client.post("/api/v1/groups", headers=h, json={"name": "g"})
    assert r.status_code == 409
    r = await client.post("/api/v1/groups", headers=h, json={"description": "no name"})
    assert r.status_code == 400


async def test_task_counters_and_busy_group_cannot_be_deleted(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    h = writer.headers
    g = await new_group(client, h, "busy")
    devs = [await register(client, h, f"0090e800000{i}") for i in range(4)]
    await client.post(
        f"/api/v1/groups/{g['id']}/devices", headers=h, json=[d["uuid"] for d in devs]
    )
    states = [TaskState.SUCCESS, TaskState.PENDING, TaskState.REVOKED, TaskState.RUNNING]
    task_uuid = await add_task(
        container, int(g["id"]), {str(d["uuid"]): s for d, s in zip(devs, states)}
    )
    got = (await client.get(f"/api/v1/groups/{g['id']}", headers=h)).json()
    assert got["taskStatus"] == {
        "activeCount": 2,
        "completedCount": 1,
        "revokedCount": 1,
        "totalCount": 4,
    }
    assert got["taskUUID"] == task_uuid
    assert sorted(t["state"] for t in got["tasks"]) == sorted(s.value for s in states)
    assert all(
        t["groupTaskUUID"] == task_uuid and t["scheduledDateTime"] == "" for t in got["tasks"]
    )
    r = await client.delete(f"/api/v1/groups/{g['id']}", headers=h)
    assert r.status_code == 409 and "unfinished tasks" in r.json()["message"]
    r = await client.request("DELETE", "/api/v1/groups", headers=h, json=[g["id"]])
    assert r.status_code == 409
    assert (await client.get(f"/api/v1/groups/{g['id']}", headers=h)).status_code == 200
    # once every record is finished the group can go
    async with container.db.session() as s:
        for rec in (await s.scalars(select(Execution))).all():
            rec.state = TaskState.SUCCESS.value
    r = await client.request("DELETE", "/api/v1/groups", headers=h, json=[g["id"]])
    assert r.status_code == 200
