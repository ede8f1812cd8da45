"""``/groupTasks`` and ``/deviceJobRelay`` end to end: REST → task engine → real Mosquitto →
virtual gateways → results in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from edgefleet.bootstrap import Container
from edgefleet.db.tables import Execution
from edgefleet.domain.tasks import TaskKind
from edgefleet.protocol.messages import ResponseMessage
from edgefleet.services.tasks import TaskSpec
from edgefleet.simulator.gateway import Behaviour, VirtualGateway
from tests import spec
from tests.conftest import Caller
from tests.gateways import count, eventually, register, start

STATUS = {"method": "get", "resource": "/system/status"}


async def _online(live: Container, n: int) -> None:
    async def ready() -> bool:
        return await count(live, "online") >= n

    await eventually(ready)


async def _group(live_api: httpx.AsyncClient, h: dict[str, str], uuids: list[str]) -> int:
    r = await live_api.post(
        "/api/v1/groups", headers=h, json={"name": f"g{len(uuids)}-{uuids[0][:6]}"}
    )
    gid = int(r.json()["id"])
    r = await live_api.post(f"/api/v1/groups/{gid}/devices", headers=h, json=uuids)
    assert r.status_code == 200, r.text
    return gid


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _task(live_api: httpx.AsyncClient, h: dict[str, str], uuid: str) -> dict[str, Any]:
    r = await live_api.get(f"/api/v1/groupTasks/{uuid}", headers=h)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _finished(
    live_api: httpx.AsyncClient, h: dict[str, str], uuid: str, seconds: float = 30
) -> dict[str, Any]:
    got: dict[str, Any] = {}

    async def done() -> bool:
        got.update(await _task(live_api, h, uuid))
        return got["state"] not in ("PENDING", "RUNNING")

    await eventually(done, seconds)
    return got


def _executed(gws: list[VirtualGateway], method: str, resource: str) -> list[int]:
    return [g.executed[(method, resource)] for g in gws]


async def test_a_group_task_reaches_every_gateway_once(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 5)
    gws, tasks = start(live, creds)
    await _online(live, 5)
    gid = await _group(live_api, live_writer.headers, [u for u, _ in creds])
    r = await live_api.post(
        "/api/v1/groupTasks",
        headers=live_writer.headers,
        json={
            "groupId": gid,
            "payload": STATUS,
            "applyPolicy": "none",
            "retryTimes": 0,
            "scheduledDateTime": "2017-01-09T06:46:01.181Z",  # the spec's example: in the past
            "meta": {"description": "GROUPLIST_TABLE_ACTION_STATUS", "icon": "info"},
        },
    )
    assert r.status_code == 200, r.text
    group = r.json()
    spec.validate(group, {"$ref": "#/definitions/Group"})  # answered with the group, as the example
    task_uuid = group["taskUUID"]
    assert len(group["tasks"]) == 5
    assert {t["groupTaskUUID"] for t in group["tasks"]} == {task_uuid}
    assert group["tasks"][0]["meta"]["icon"] == "info"

    done = await _finished(live_api, live_writer.headers, task_uuid)
    assert done["state"] == "SUCCESS" and done["counts"]["SUCCESS"] == 5
    assert _executed(gws, "get", "/system/status") == [1] * 5
    g = (await live_api.get(f"/api/v1/groups/{gid}", headers=live_writer.headers)).json()
    assert g["taskStatus"] == {
        "activeCount": 0,
        "completedCount": 5,
        "revokedCount": 0,
        "totalCount": 5,
    }
    assert {t["state"] for t in g["tasks"]} == {"SUCCESS"} and all(t["success"] for t in g["tasks"])
    # each execution keeps the gateway's answer and its history
    r = await live_api.get(
        f"/api/v1/groupTasks/{task_uuid}/executions", headers=live_writer.headers
    )
    rows = r.json()["data"]
    assert len(rows) == 5 and all(e["code"] == 200 for e in rows)
    assert rows[0]["result"]["resource"] == "/system/status"
    r = await live_api.get(f"/api/v1/executions/{rows[0]['uuid']}", headers=live_writer.headers)
    states = [h["state"] for h in r.json()["history"]]
    assert states == ["RUNNING", "SUCCESS"]
    await _stop(tasks)


async def test_one_open_task_per_group_and_revoke(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 3)
    gid = await _group(
        live_api, live_writer.headers, [u for u, _ in creds]
    )  # all offline: tasks wait
    body = {"groupId": gid, "payload": STATUS}
    r = await live_api.post("/api/v1/groupTasks", headers=live_writer.headers, json=body)
    assert r.status_code == 200, r.text
    task_uuid = r.json()["taskUUID"]
    r = await live_api.post("/api/v1/groupTasks", headers=live_writer.headers, json=body)
    assert r.status_code == 409 and "unfinished task" in r.json()["message"]
    # a busy group cannot be deleted either
    assert (
        await live_api.delete(f"/api/v1/groups/{gid}", headers=live_writer.headers)
    ).status_code == 409

    r = await live_api.post(f"/api/v1/groupTasks/{task_uuid}/revoke", headers=live_writer.headers)
    assert r.status_code == 200 and r.json()["state"] == "REVOKED"
    assert r.json()["counts"]["REVOKED"] == 3
    g = (await live_api.get(f"/api/v1/groups/{gid}", headers=live_writer.headers)).json()
    assert g["taskStatus"]["revokedCount"] == 3 and g["taskStatus"]["activeCount"] == 0
    assert all(t["revoked"] and t["state"] == "REVOKED" for t in g["tasks"])
    r = await live_api.post(f"/api/v1/groupTasks/{task_uuid}/revoke", headers=live_writer.headers)
    assert r.status_code == 409
    # the group is free again
    r = await live_api.post("/api/v1/groupTasks", headers=live_writer.headers, json=body)
    assert r.status_code == 200
    assert r.json()["taskUUID"] != task_uuid


async def test_an_offline_gateway_gets_the_task_when_it_comes_back(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 2)
    gws, tasks = start(live, creds[:1])
    await _online(live, 1)
    gid = await _group(live_api, live_writer.headers, [u for u, _ in creds])
    r = await live_api.post(
        "/api/v1/groupTasks", headers=live_writer.headers, json={"groupId": gid, "payload": STATUS}
    )
    task_uuid = r.json()["taskUUID"]

    async def first_done() -> bool:
        got = await _task(live_api, live_writer.headers, task_uuid)
        return bool(got["counts"]["SUCCESS"] == 1)

    await eventually(first_done)
    t = await _task(live_api, live_writer.headers, task_uuid)
    assert t["state"] == "RUNNING" and t["counts"]["PENDING"] == 1
    late, more = start(live, creds[1:])
    done = await _finished(live_api, live_writer.headers, task_uuid)
    assert done["state"] == "SUCCESS"
    assert _executed(gws + late, "get", "/system/status") == [1, 1]
    await _stop(tasks + more)


async def test_retry_policy_tries_again_then_fails(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 2)
    gws, tasks = start(live, creds[:1], behaviour=Behaviour(failure_rate=1.0))
    ok, more = start(live, creds[1:])
    await _online(live, 2)
    gid = await _group(live_api, live_writer.headers, [u for u, _ in creds])
    r = await live_api.post(
        "/api/v1/groupTasks",
        headers=live_writer.headers,
        json={
            "groupId": gid,
            "payload": STATUS,
            "applyPolicy": "retry",
            "retryTimes": 2,
            "retryIntervalSeconds": 0.5,
        },
    )
    done = await _finished(live_api, live_writer.headers, r.json()["taskUUID"])
    assert done["state"] == "FAILURE"
    assert done["counts"]["FAILURE"] == 1 and done["counts"]["SUCCESS"] == 1
    assert gws[0].executed[("get", "/system/status")] == 3  # once, then two retries
    assert ok[0].executed[("get", "/system/status")] == 1
    rows = (
        await live_api.get(
            f"/api/v1/groupTasks/{done['uuid']}/executions?state=FAILURE",
            headers=live_writer.headers,
        )
    ).json()["data"]
    assert rows[0]["attempts"] == 3 and rows[0]["code"] == 500
    # re-run the failed one only, against a gateway that now works
    gws[0].behaviour = Behaviour()
    r = await live_api.post(f"/api/v1/groupTasks/{done['uuid']}/rerun", headers=live_writer.headers)
    assert r.status_code == 200, r.text
    again = await _finished(live_api, live_writer.headers, done["uuid"])
    assert again["state"] == "SUCCESS"
    assert gws[0].executed[("get", "/system/status")] == 4
    assert ok[0].executed[("get", "/system/status")] == 1
    await _stop(tasks + more)


async def test_policy_none_does_not_retry_and_a_scheduled_task_waits(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 1)
    gws, tasks = start(live, creds, behaviour=Behaviour(failure_rate=1.0))
    await _online(live, 1)
    gid = await _group(live_api, live_writer.headers, [creds[0][0]])
    r = await live_api.post(
        "/api/v1/groupTasks",
        headers=live_writer.headers,
        json={"groupId": gid, "payload": STATUS, "applyPolicy": "none", "retryTimes": 5},
    )
    done = await _finished(live_api, live_writer.headers, r.json()["taskUUID"])
    assert done["state"] == "FAILURE" and gws[0].executed[("get", "/system/status")] == 1

    gws[0].behaviour = Behaviour()
    at = datetime.now(UTC) + timedelta(seconds=3)
    r = await live_api.post(
        "/api/v1/groupTasks",
        headers=live_writer.headers,
        json={
            "groupId": gid,
            "payload": STATUS,
            "applyPolicy": "schedule",
            "scheduledDateTime": at.isoformat().replace("+00:00", "Z"),
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["tasks"][0]["scheduledDateTime"].startswith(at.strftime("%Y-%m-%dT%H:%M:%S"))
    uuid = r.json()["taskUUID"]
    assert (await _task(live_api, live_writer.headers, uuid))["state"] == "PENDING"
    await asyncio.sleep(1.5)
    assert gws[0].executed[("get", "/system/status")] == 1  # not yet
    done = await _finished(live_api, live_writer.headers, uuid)
    assert done["state"] == "SUCCESS" and datetime.now(UTC) >= at
    assert gws[0].executed[("get", "/system/status")] == 2
    r = await live_api.post(
        "/api/v1/groupTasks",
        headers=live_writer.headers,
        json={"groupId": gid, "payload": STATUS, "applyPolicy": "schedule"},
    )
    assert r.status_code == 400 and "scheduledDateTime" in r.json()["message"]
    await _stop(tasks)


async def test_job_relay_answers_at_once_and_keeps_the_result(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 2)
    _, tasks = start(live, creds[:1])
    await _online(live, 1)
    r = await live_api.post(
        "/api/v1/deviceJobRelay",
        headers=live_writer.headers,
        json={
            "deviceUUID": creds[0][0],
            "payload": {"method": "get", "resource": "/system/properties"},
        },
    )
    assert r.status_code == 201, r.text
    spec.validate(r.json(), spec.response_schema("post", "/deviceJobRelay", 201))
    job = r.json()["taskId"]
    assert isinstance(job, int) and r.json()["deviceUUID"] == creds[0][0]
    got: dict[str, Any] = {}

    async def answered() -> bool:
        got.update(
            (
                await live_api.get(f"/api/v1/deviceJobRelay/{job}", headers=live_writer.headers)
            ).json()
        )
        return bool(got["status"] != "Sent to CG" and got["status"] != "Pending")

    await eventually(answered)
    assert got["status"] == "Success from CG" and got["code"] == 200
    assert got["result"]["taskId"] == job and got["result"]["deviceUUID"] == creds[0][0]
    assert got["result"]["data"]["modelName"] == "UC-8112-LX-CG"
    assert got["result"]["resource"] == "/system/properties"
    spec.validate(got, {"$ref": "#/definitions/DeviceJobRelay"})
    # an offline gateway: the job waits for it
    r = await live_api.post(
        "/api/v1/deviceJobRelay",
        headers=live_writer.headers,
        json={"deviceUUID": creds[1][0], "payload": STATUS},
    )
    job2 = r.json()["taskId"]
    assert (
        await live_api.get(f"/api/v1/deviceJobRelay/{job2}", headers=live_writer.headers)
    ).json()["status"] == "Pending"
    _, more = start(live, creds[1:])

    async def answered2() -> bool:
        body = (
            await live_api.get(f"/api/v1/deviceJobRelay/{job2}", headers=live_writer.headers)
        ).json()
        return bool(body["status"] == "Success from CG")

    await eventually(answered2)
    r = await live_api.post(
        "/api/v1/deviceJobRelay",
        headers=live_writer.headers,
        json={"deviceUUID": "nope", "payload": STATUS},
    )
    assert r.status_code == 404 and "nope" in r.json()["message"]
    assert (
        await live_api.get("/api/v1/deviceJobRelay/999999", headers=live_writer.headers)
    ).status_code == 404
    await _stop(tasks + more)


def _serve(
    live: Container, creds: list[tuple[str, str]], behaviour: Behaviour
) -> tuple[list[VirtualGateway], list[asyncio.Task[None]]]:
    """Gateways that come back after a reboot (``serve``, not ``run``)."""
    port = live.settings.mqtt.gateway_port
    gws = [
        VirtualGateway(u, k, "127.0.0.1", port, {"softwareVersion": "1.0"}, behaviour=behaviour)
        for u, k in creds
    ]
    return gws, [asyncio.create_task(g.serve()) for g in gws]


async def test_a_reboot_finishes_when_the_gateway_is_back(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 3)
    gws, tasks = _serve(live, creds, Behaviour(reboot_delay=1.0, boot_seconds=1.0))
    await _online(live, 3)
    gid = await _group(live_api, live_writer.headers, [u for u, _ in creds])
    r = await live_api.post(
        "/api/v1/groupTasks",
        headers=live_writer.headers,
        json={"groupId": gid, "payload": {"method": "post", "resource": "/system/reboot"}},
    )
    uuid = r.json()["taskUUID"]

    async def acknowledged() -> bool:
        rows = (
            await live_api.get(f"/api/v1/groupTasks/{uuid}/executions", headers=live_writer.headers)
        ).json()["data"]
        return all(e["code"] == 200 for e in rows)

    await eventually(acknowledged)
    t = await _task(live_api, live_writer.headers, uuid)
    assert t["state"] == "RUNNING" and t["counts"]["RUNNING"] == 3  # an answer is not the end
    done = await _finished(live_api, live_writer.headers, uuid)
    assert done["state"] == "SUCCESS"
    assert [g.reboots for g in gws] == [1, 1, 1] and all(g.sessions == 2 for g in gws)
    rows = (
        await live_api.get(f"/api/v1/groupTasks/{uuid}/executions", headers=live_writer.headers)
    ).json()
    e = (
        await live_api.get(
            f"/api/v1/executions/{rows['data'][0]['uuid']}", headers=live_writer.headers
        )
    ).json()
    assert [h["detail"] for h in e["history"]] == ["attempt 1 sent", "accepted", "back online"]
    await _stop(tasks)


async def test_revoking_mid_way_tells_the_gateways(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 3)
    gws, tasks = _serve(live, creds[:2], Behaviour(reboot_delay=60.0))  # slow to reboot
    await _online(live, 2)
    gid = await _group(live_api, live_writer.headers, [u for u, _ in creds])  # the third is offline
    r = await live_api.post(
        "/api/v1/groupTasks",
        headers=live_writer.headers,
        json={"groupId": gid, "payload": {"method": "post", "resource": "/system/reboot"}},
    )
    uuid = r.json()["taskUUID"]

    async def acknowledged() -> bool:
        rows = (
            await live_api.get(
                f"/api/v1/groupTasks/{uuid}/executions?state=RUNNING", headers=live_writer.headers
            )
        ).json()["data"]
        return len(rows) == 2 and all(e["code"] == 200 for e in rows)

    await eventually(acknowledged)
    r = await live_api.delete(f"/api/v1/groupTasks/{uuid}", headers=live_writer.headers)
    assert r.status_code == 200 and r.json()["state"] == "REVOKED"
    assert r.json()["counts"]["REVOKED"] == 3

    async def cancelled() -> bool:
        return all(g.cancelled == 1 for g in gws)

    await eventually(cancelled)
    assert all(g.reboots == 0 for g in gws)
    await _stop(tasks)


async def test_silence_times_out_and_waiting_expires(
    live: Container, live_api: httpx.AsyncClient, live_writer: Caller
) -> None:
    creds = await register(live, 2)
    _, tasks = start(live, creds[:1], behaviour=Behaviour(latency=4.0))  # too slow to answer
    await _online(live, 1)
    r = await live_api.post(
        "/api/v1/deviceJobRelay",
        headers=live_writer.headers,
        json={"deviceUUID": creds[0][0], "payload": STATUS, "timeoutSeconds": 1},
    )
    job = r.json()["taskId"]
    # the second gateway never comes online: its job expires
    expires = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    r = await live_api.post(
        "/api/v1/deviceJobRelay",
        headers=live_writer.headers,
        json={"deviceUUID": creds[1][0], "payload": STATUS, "expiresAt": expires},
    )
    never = r.json()["taskId"]

    async def status(job_id: int) -> str:
        r = await live_api.get(f"/api/v1/deviceJobRelay/{job_id}", headers=live_writer.headers)
        return str(r.json()["status"])

    async def ended() -> bool:
        return await status(job) == "Timeout" and await status(never) == "Expired"

    await eventually(ended)
    body = (await live_api.get(f"/api/v1/deviceJobRelay/{job}", headers=live_writer.headers)).json()
    assert body["state"] == "FAILURE" and body["detail"] == "timeout: no answer in time"
    assert "code" not in body  # the gateway never answered
    r = await live_api.post(
        "/api/v1/deviceJobRelay",
        headers=live_writer.headers,
        json={"deviceUUID": creds[1][0], "payload": STATUS, "expiresAt": "2001-01-01T00:00:00Z"},
    )
    assert r.status_code == 400 and "expiresAt" in r.json()["message"]
    await _stop(tasks)


async def test_a_result_the_database_refuses_is_set_aside_and_the_others_recorded(
    live: Container, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway's answer no database can store (a code past 64 bits: both refuse it; the
    MQTT boundary bounds it too, this is the writer's own defence) costs only that answer:
    the rest of its batch is recorded, and so is what comes after."""
    creds = await register(live, 3)
    uuids = [u for u, _ in creds]
    for uuid in uuids:  # held online; no gateway runs, so the answers are ours to give
        live.messaging.presence.apply_status(uuid, True)
    await live.messaging.presence.drained()
    group = await live.fleet.create_group("refused-results")
    await live.fleet.add_to_group(group.group.id, uuids)
    view = await live.tasks.create(
        TaskSpec(
            kind=TaskKind.GROUP,
            method="get",
            resource=STATUS["resource"],
            group_id=group.group.id,
        )
    )
    rows: list[Execution] = []

    async def all_sent() -> bool:
        async with live.db.session() as s:
            found = await s.scalars(select(Execution).where(Execution.task_id == view.task.id))
            rows[:] = sorted(found, key=lambda e: e.device_uuid)
        return len(rows) == 3 and all(r.sent_at is not None for r in rows)

    await eventually(all_sent)
    labels = {"writer": "task-results"}
    rejected = REGISTRY.get_sample_value("edgefleet_rows_rejected_total", labels)
    engine = live.tasks.engine
    bad, *good = rows

    def answer(row: Execution, code: int) -> ResponseMessage:
        return ResponseMessage.model_construct(
            task_id=row.message_id, code=code, method="get", resource="/system/status", data={}
        )

    engine.response(bad.device_uuid, answer(bad, 2**70))
    for row in good:
        engine.response(row.device_uuid, answer(row, 200))
    await asyncio.wait_for(engine.drained(), 30)
    states = await _states(live, view.task.id)
    assert states == {bad.device_uuid: "RUNNING", **{r.device_uuid: "SUCCESS" for r in good}}
    after = REGISTRY.get_sample_value("edgefleet_rows_rejected_total", labels)
    assert (after or 0) == (rejected or 0) + 1
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any(bad.device_uuid in m and bad.message_id in m for m in logged), logged
    engine.response(bad.device_uuid, answer(bad, 200))  # the writer still records
    await asyncio.wait_for(engine.drained(), 30)
    assert (await _states(live, view.task.id))[bad.device_uuid] == "SUCCESS"


async def _states(live: Container, task_id: int) -> dict[str, str]:
    async with live.db.session() as s:
        found = await s.scalars(select(Execution).where(Execution.task_id == task_id))
        return {e.device_uuid: e.state for e in found}
