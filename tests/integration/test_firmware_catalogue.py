"""The firmware catalogue (``/api/v1/firmware``) and ``FirmwareService.dispatch_file`` over
both file stores, down to a real gateway agent installing an image from the catalogue."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.core import Agent
from edgefleet.domain.audit import AuditFilter
from edgefleet.domain.auth import Role, Scope
from edgefleet.errors import FirmwareNotFoundError
from tests.conftest import Caller, Callers
from tests.filestores import FILE_LIMIT, StoreEnv, fetch, problem
from tests.gateways import count, eventually, register
from tests.integration.test_agent import config_for, finish, start

URL = "/api/v1/firmware"


async def _writer(e: StoreEnv) -> Caller:
    return await Callers(e.c).token(Role.OPERATOR, Scope.READ_WRITE)


async def _upload(
    e: StoreEnv, caller: Caller, image: bytes, filename: str = "fw.img", **fields: Any
) -> Any:
    return await e.api.post(
        URL, data=fields, files={"file": (filename, image)}, headers=caller.headers
    )


async def test_an_image_is_catalogued_listed_dispatched_and_deleted(store_env: StoreEnv) -> None:
    e = store_env
    writer = await _writer(e)
    image = os.urandom(100_000)
    r = await e.api.post(
        URL,
        data={"version": "3.1.0", "models": ["UC-8112-LX-CG, UC-8100", "UC-5100"], "notes": "hi"},
        files={"file": ("fw-3.1.0.img", image)},
        headers=writer.headers,
    )
    assert r.status_code == 201, r.text
    fw = r.json()
    assert set(fw) == {
        "id",
        "uuid",
        "version",
        "models",
        "filename",
        "size",
        "sha256",
        "notes",
        "createdAt",
        "createdBy",
    }
    assert fw["version"] == "3.1.0" and fw["notes"] == "hi" and fw["filename"] == "fw-3.1.0.img"
    assert fw["models"] == ["UC-8112-LX-CG", "UC-8100", "UC-5100"]
    assert fw["size"] == len(image) and fw["sha256"] == hashlib.sha256(image).hexdigest()
    assert fw["createdBy"] == writer.email and len(fw["uuid"]) == 36

    assert (await e.api.get(f"{URL}/{fw['id']}", headers=writer.headers)).json() == fw
    listed = (await e.api.get(URL, headers=writer.headers)).json()
    assert listed == {"count": 1, "limit": 20, "offset": 0, "data": [fw]}

    ref = await e.c.firmware.dispatch_file(fw["id"])
    assert set(ref) == {"url", "physicalPath", "headers", "size", "sha256"}
    assert ref["headers"] == {} and ref["size"] == len(image) and ref["sha256"] == fw["sha256"]
    assert (await fetch(ref["url"])).content == image
    record = await e.c.firmware.get(fw["id"])
    assert record.version == "3.1.0" and record.models == fw["models"]
    assert (await e.c.files.get(ref["physicalPath"])).kind == "firmware"

    r = await e.api.delete(f"{URL}/{fw['id']}", headers=writer.headers)
    assert r.status_code == 204
    problem(await e.api.get(f"{URL}/{fw['id']}", headers=writer.headers), 404)
    problem(await e.api.delete(f"{URL}/{fw['id']}", headers=writer.headers), 404)
    assert e.stored() == [] and await e.rows() == 0
    with pytest.raises(FirmwareNotFoundError):
        await e.c.firmware.dispatch_file(fw["id"])
    actions = [
        (a.action, a.target_id, a.outcome)
        for a in await e.c.audit.query(AuditFilter(action="firmware."), 10)
    ]
    assert ("firmware.create", str(fw["id"]), "success") in actions
    assert ("firmware.delete", str(fw["id"]), "success") in actions


async def test_the_list_pages_newest_first(store_env: StoreEnv) -> None:
    e = store_env
    writer = await _writer(e)
    ids = []
    for v in ("1.0", "1.1", "2.0"):
        r = await _upload(e, writer, v.encode(), version=v)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    page = (await e.api.get(URL, params={"offset": 1, "limit": 1}, headers=writer.headers)).json()
    assert page["count"] == 3 and [f["id"] for f in page["data"]] == [ids[1]]
    assert [f["models"] for f in page["data"]] == [[]]  # none given: fits any model


async def test_a_bad_upload_is_refused_and_keeps_nothing(store_env: StoreEnv) -> None:
    e = store_env
    writer = await _writer(e)
    assert "version" in problem(await _upload(e, writer, b"img"), 400)["detail"]
    problem(await _upload(e, writer, b"img", version="bad/version"), 400)
    problem(await _upload(e, writer, b"img", version="1", models="x" * 200), 400)
    r = await e.api.post(
        URL,
        data={"version": "1"},
        files=[("a", ("a.img", b"a")), ("b", ("b.img", b"b"))],
        headers=writer.headers,
    )
    assert "at most 1 file" in problem(r, 400)["detail"]
    r = await e.api.post(URL, data={"version": "1"}, headers=writer.headers)
    problem(r, 400)  # no file: not even multipart
    problem(await _upload(e, writer, os.urandom(FILE_LIMIT + 1), version="1"), 413)
    assert e.stored() == [] and await e.rows() == 0

    assert (await _upload(e, writer, b"one", version="1")).status_code == 201
    r = await _upload(e, writer, b"two", version="1")  # same version and file name
    assert "already exists" in problem(r, 409)["detail"]
    assert (await _upload(e, writer, b"two", "other.img", version="1")).status_code == 201
    assert len(e.stored()) == 2 and await e.rows() == 2


async def test_readers_may_look_but_not_change(store_env: StoreEnv) -> None:
    e = store_env
    writer = await _writer(e)
    fw = (await _upload(e, writer, b"img", version="1")).json()
    callers = Callers(e.c)
    reader = await callers.token(Role.ADMIN, Scope.READ)
    viewer = await callers.user(Role.VIEWER)
    for who in (reader, viewer):
        assert (await e.api.get(URL, headers=who.headers)).status_code == 200
        assert (await e.api.get(f"{URL}/{fw['id']}", headers=who.headers)).status_code == 200
        problem(await _upload(e, who, b"x", version="2"), 403)
        problem(await e.api.delete(f"{URL}/{fw['id']}", headers=who.headers), 403)
    problem(await e.api.get(URL), 401)
    assert len(e.stored()) == 1


async def test_a_gateway_agent_installs_an_image_dispatched_from_the_catalogue(
    live_store_env: StoreEnv, tmp_path: Path
) -> None:
    e = live_store_env
    writer = await _writer(e)
    image = os.urandom(FILE_LIMIT - 1)
    fw = (await _upload(e, writer, image, "fw-9.img", version="9.0")).json()
    [(uuid, psk)] = await register(e.c, 1)
    installed = tmp_path / "installed.img"
    agent = Agent(
        config_for(
            e.c, uuid, psk, tmp_path, firmwareInstallCommand=["cp", "{file}", str(installed)]
        )
    )
    running = await start(agent)

    async def online() -> bool:
        return await count(e.c, "online") >= 1

    await eventually(online)
    # what the task engine does: a fresh reference (with size and sha256 for the gateway to
    # check) in a POST /system/firmware request
    file = await e.c.firmware.dispatch_file(fw["id"])
    answer = await e.c.remote.request(uuid, "post", "/system/firmware", {"file": file}, wait=10)
    assert answer["code"] == 200 and answer["data"]["status"] == "accepted"

    async def installed_it() -> bool:
        return installed.exists() and installed.stat().st_size == len(image)

    await eventually(installed_it)
    assert installed.read_bytes() == image
    await finish(agent, running)
