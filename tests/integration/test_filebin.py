"""Filebin uploads and downloads, and the multipart ``deviceTasks``, over both file stores: a
local directory (links signed by the server, which is served over real HTTP here) and S3 (a
real moto server; presigned links fetched with a plain HTTP client)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edgefleet.agent.core import Agent
from edgefleet.bootstrap import Container, build
from edgefleet.clock import utcnow
from edgefleet.db.engine import Database
from edgefleet.domain.audit import AuditFilter
from edgefleet.domain.auth import Role, Scope
from edgefleet.errors import StoredFileNotFoundError
from edgefleet.protocol import topics
from edgefleet.protocol.messages import RequestMessage, decode_request
from edgefleet.settings import Settings, StorageSettings
from tests.conftest import Caller, Callers
from tests.filestores import FILE_LIMIT, StoreEnv, fetch, problem
from tests.gateways import count, eventually, register
from tests.gateways import start as start_gateways
from tests.integration.test_agent import config_for, finish, start

UPLOAD = "/api/v1/filebin/upload"
LIMIT = FILE_LIMIT


async def _writer(e: StoreEnv) -> Caller:
    return await Callers(e.c).token(Role.OPERATOR, Scope.READ_WRITE)


async def test_one_file_answers_fieldname_path_and_a_url_that_downloads_when_uploaded(
    store_env: StoreEnv,
) -> None:
    writer = await _writer(store_env)
    data = os.urandom(300_000)
    r = await store_env.api.post(
        UPLOAD,
        files={"firmware": ("fw-1.0.img", data, "application/x-foo")},
        headers=writer.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"fieldname", "physicalPath", "url"}
    assert body["fieldname"] == "firmware" and body["physicalPath"].endswith("/fw-1.0.img")
    if store_env.backend.name == "local":
        assert body["url"].startswith(
            f"{store_env.base_url}/filebin/download/{body['physicalPath']}?"
        )
    got = await fetch(body["url"])  # no credential at all
    assert got.status_code == 200 and got.content == data
    row = await store_env.c.files.get(body["physicalPath"])
    assert row.size == len(data) and row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.filename == "fw-1.0.img" and row.content_type == "application/x-foo"
    assert row.kind == "filebin" and row.created_by == writer.email
    [entry] = await store_env.c.audit.query(AuditFilter(action="filebin.upload"), 10)
    assert entry.outcome == "success" and entry.actor_name == writer.email


async def test_several_files_answer_a_list_in_order_when_put_to_the_original_mount(
    store_env: StoreEnv,
) -> None:
    writer = await _writer(store_env)
    blobs = {name: os.urandom(1000 + i) for i, name in enumerate(["a", "b", "c"])}
    r = await store_env.api.put(
        "/filebin/upload",
        files=[(name, (f"{name}.bin", blob)) for name, blob in blobs.items()],
        data={"note": "ignored"},
        headers=writer.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [item["fieldname"] for item in body] == ["a", "b", "c"]
    for item in body:
        assert set(item) == {"fieldname", "physicalPath", "url"}
        got = await fetch(item["url"])
        assert got.content == blobs[item["fieldname"]]
    assert await store_env.rows() == 3


async def test_a_file_over_the_limit_gets_413_and_nothing_of_the_upload_is_kept(
    store_env: StoreEnv,
) -> None:
    writer = await _writer(store_env)
    r = await store_env.api.post(
        UPLOAD,
        files=[("ok", ("small.bin", b"x" * 1000)), ("big", ("big.bin", os.urandom(LIMIT + 1)))],
        headers=writer.headers,
    )
    body = problem(r, 413)
    assert str(LIMIT) in body["detail"]
    assert store_env.stored() == [] and await store_env.rows() == 0
    # exactly at the limit is fine
    r = await store_env.api.post(
        UPLOAD, files={"f": ("edge.bin", os.urandom(LIMIT))}, headers=writer.headers
    )
    assert r.status_code == 200, r.text


async def test_no_file_too_many_files_or_no_multipart_get_400(store_env: StoreEnv) -> None:
    writer = await _writer(store_env)
    r = await store_env.api.post(UPLOAD, data={"just": "a field"}, files={}, headers=writer.headers)
    # httpx sends an urlencoded body when there are no files: not multipart
    problem(r, 400)
    r = await store_env.api.post(
        UPLOAD,
        content=b'--xyz\r\nContent-Disposition: form-data; name="just"\r\n\r\nfield\r\n--xyz--\r\n',
        headers={**writer.headers, "content-type": "multipart/form-data; boundary=xyz"},
    )
    assert "no file" in problem(r, 400)["detail"]
    r = await store_env.api.post(
        UPLOAD,
        files=[(f"f{i}", (f"{i}.bin", b"data")) for i in range(6)],
        headers=writer.headers,
    )
    assert "at most 5" in problem(r, 400)["detail"]
    r = await store_env.api.post(UPLOAD, json={"a": 1}, headers=writer.headers)
    assert "multipart" in problem(r, 400)["detail"]
    r = await store_env.api.post(  # cut off before the closing boundary
        UPLOAD,
        content=b'--xyz\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\nabc',
        headers={**writer.headers, "content-type": "multipart/form-data; boundary=xyz"},
    )
    assert "ended" in problem(r, 400)["detail"]
    assert store_env.stored() == [] and await store_env.rows() == 0


async def test_readers_may_not_upload_and_strangers_may_not_download(store_env: StoreEnv) -> None:
    callers = Callers(store_env.c)
    reader = await callers.token(Role.OPERATOR, Scope.READ)
    r = await store_env.api.post(UPLOAD, files={"f": ("a.bin", b"abc")}, headers=reader.headers)
    problem(r, 403)
    writer = await _writer(store_env)
    key = (
        await store_env.api.post(UPLOAD, files={"f": ("ä b.bin", b"abc")}, headers=writer.headers)
    ).json()["physicalPath"]
    for path in (f"/filebin/download/{key}", f"/api/v1/filebin/download/{key}"):
        r = await store_env.api.get(path, headers=reader.headers)
        assert r.status_code == 200 and r.content == b"abc"
        assert r.headers["content-length"] == "3"
        assert r.headers["content-disposition"] == (
            "attachment; filename=\"_ b.bin\"; filename*=UTF-8''%C3%A4%20b.bin"
        )
        problem(await store_env.api.get(path), 401)
    viewer = await callers.user(Role.VIEWER)  # a console login of the lowest role reads too
    assert (
        await store_env.api.get(f"/filebin/download/{key}", headers=viewer.headers)
    ).status_code == 200
    broker = await callers.token(Role.ADMIN, Scope.BROKER)
    problem(await store_env.api.get(f"/filebin/download/{key}", headers=broker.headers), 403)
    problem(
        await store_env.api.get("/filebin/download/" + "0" * 32 + "/x", headers=reader.headers), 404
    )


async def test_a_bad_or_expired_signature_gets_403(store_env: StoreEnv) -> None:
    writer = await _writer(store_env)
    first, second = (
        await store_env.api.post(
            UPLOAD, files=[("a", ("a.bin", b"A")), ("b", ("b.bin", b"B"))], headers=writer.headers
        )
    ).json()
    signer = store_env.c.files.signer
    key, other = first["physicalPath"], second["physicalPath"]
    base = f"{store_env.base_url}/filebin/download/{key}"
    good = signer.query(key, 60)
    assert (await fetch(f"{base}?{good}")).content == b"A"
    expired = signer.query(key, -1)
    for query in (
        expired,
        good.replace("sig=", "sig=0"),
        signer.query(other, 60),  # another file's signature
        "expires=9999999999",
        "sig=abc",
    ):
        r = await fetch(f"{base}?{query}")
        problem(r, 403)
    assert "expired" in (await fetch(f"{base}?{expired}")).json()["detail"]
    assert "invalid" in (await fetch(f"{base}?{signer.query(other, 60)}")).json()["detail"]


# --- multipart deviceTasks ---------------------------------------------------------------


class Sent:
    """Requests the server publishes to gateways, read off the broker as a gateway gets them."""

    def __init__(self) -> None:
        self.requests: list[RequestMessage] = []
        self.subscribed = asyncio.Event()

    async def watch(self, c: Container) -> None:
        mqtt = c.settings.mqtt
        async with aiomqtt.Client(
            mqtt.server_host,
            mqtt.server_port,
            username=mqtt.server_username,
            password=c.settings.mqtt_server_password(),
        ) as client:
            await client.subscribe(topics.all_devices(topics.Channel.SERVER), qos=1)
            self.subscribed.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                self.requests.append(decode_request(message.payload))

    def to(self, resource: str) -> list[RequestMessage]:
        return [r for r in self.requests if r.resource == resource]


@pytest.fixture
async def sent(live_store_env: StoreEnv) -> AsyncIterator[Sent]:
    watcher = Sent()
    task = asyncio.create_task(watcher.watch(live_store_env.c))
    await asyncio.wait_for(watcher.subscribed.wait(), 10)
    yield watcher
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _online_gateway(e: StoreEnv) -> tuple[str, asyncio.Task[None]]:
    creds = await register(e.c, 1)
    _, tasks = start_gateways(e.c, creds)

    async def online() -> bool:
        return await count(e.c, "online") >= 1

    await eventually(online)
    return creds[0][0], tasks[0]


def _job(uuid: str, data: Any = None, resource: str = "/x") -> dict[str, str]:
    payload: dict[str, Any] = {"method": "POST", "resource": resource}
    if data is not None:
        payload["data"] = data
    return {"jsonData": json.dumps({"deviceUUID": uuid, "payload": payload})}


async def test_the_gateway_gets_the_files_as_urls_it_can_download_in_multipart_device_tasks(
    live_store_env: StoreEnv, sent: Sent
) -> None:
    e = live_store_env
    uuid, task = await _online_gateway(e)
    writer = await _writer(e)
    one = os.urandom(50_000)
    r = await e.api.post(
        "/api/v1/deviceTasks",
        data=_job(uuid, {"delay": 3}, "/x/one"),
        files={"image": ("fw.img", one)},
        headers=writer.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()  # the simulator does not know /x/one: its 404 passed through
    assert body["code"] == 404 and body["taskID"] == body["task_id"]
    [request] = sent.to("/x/one")
    got = request.data
    assert request.method == "post" and got["delay"] == 3
    assert set(got["file"]) == {"url", "physicalPath", "headers"}
    assert got["file"]["headers"] == {} and got["file"]["physicalPath"].endswith("/fw.img")
    assert (await fetch(got["file"]["url"])).content == one

    # several files, by the spec's pseudo-method PUT, with no data of its own
    two = {"a": b"first", "b": b"second"}
    r = await e.api.put(
        "/api/v1/deviceTasks",
        data=_job(uuid, resource="/x/two"),
        files=[(k, (f"{k}.txt", v)) for k, v in two.items()],
        headers=writer.headers,
    )
    assert r.status_code == 200, r.text
    [request] = sent.to("/x/two")
    files = request.data["files"]
    assert set(request.data) == {"files"} and set(files) == {"a", "b"}
    for name, ref in files.items():
        assert ref["headers"] == {} and (await fetch(ref["url"])).content == two[name]
    rows = [await e.c.files.get(ref["physicalPath"]) for ref in files.values()]
    assert {row.kind for row in rows} == {"attachment"}

    # the JSON variant on the same path is untouched
    r = await e.api.post(
        "/api/v1/deviceTasks",
        json={"deviceUUID": uuid, "payload": {"method": "put", "resource": "/x/3", "data": [1]}},
        headers=writer.headers,
    )
    assert r.status_code == 200 and r.json()["code"] == 404
    assert sent.to("/x/3")[0].data == [1]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_agent_downloads_and_installs_firmware_sent_by_multipart_device_task(
    live_store_env: StoreEnv, tmp_path: Path
) -> None:
    e = live_store_env
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
    writer = await _writer(e)
    image = os.urandom(LIMIT - 10)
    r = await e.api.post(
        "/api/v1/deviceTasks",
        data=_job(uuid, {"delay": 0}, "/system/firmware"),
        files={"file": ("fw-2.0.img", image)},
        headers=writer.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["code"] == 200 and r.json()["data"]["status"] == "accepted"

    async def done() -> bool:
        return installed.exists() and installed.stat().st_size == len(image)

    await eventually(done)
    assert installed.read_bytes() == image
    await finish(agent, running)


async def test_a_refused_multipart_device_task_keeps_no_file(live_store_env: StoreEnv) -> None:
    e = live_store_env
    writer = await _writer(e)
    f = {"f": ("a.bin", b"abc")}
    url = "/api/v1/deviceTasks"
    r = await e.api.post(url, data={"other": "x"}, files=f, headers=writer.headers)
    assert r.status_code == 400 and "jsonData" in r.json()["message"]
    r = await e.api.post(url, data={"jsonData": "{not json"}, files=f, headers=writer.headers)
    assert r.status_code == 400 and "jsonData" in r.json()["message"]
    r = await e.api.post(url, data=_job("no-such-device"), files=f, headers=writer.headers)
    assert r.status_code == 404 and "no-such-device" in r.json()["message"]
    [(offline, _)] = await register(e.c, 1)
    r = await e.api.post(url, data=_job(offline, [1, 2]), files=f, headers=writer.headers)
    assert r.status_code == 400 and "object" in r.json()["message"]
    r = await e.api.post(url, data=_job(offline), files=f, headers=writer.headers)
    assert r.status_code == 409
    r = await e.api.post(
        url, data=_job(offline), files={"f": ("big", os.urandom(LIMIT + 1))}, headers=writer.headers
    )
    assert r.status_code == 413 and r.json()["message"]
    r = await e.api.put(url, json={"deviceUUID": offline}, headers=writer.headers)
    assert r.status_code == 400 and "multipart" in r.json()["message"]
    reader = await Callers(e.c).token(Role.OPERATOR, Scope.READ)
    r = await e.api.post(url, data=_job(offline), files=f, headers=reader.headers)
    assert r.status_code == 403
    assert e.stored() == [] and await e.rows() == 0


async def test_the_local_store_defaults_to_the_data_dir(
    settings: Settings, database: Database
) -> None:
    assert settings.storage.url == "" and settings.files_dir == settings.data_dir / "files"
    settings.storage = StorageSettings(url=f"file://{settings.data_dir / 'elsewhere'}")
    assert settings.files_dir == settings.data_dir / "elsewhere"
    c = build(settings, db=database)

    async def one() -> AsyncIterator[bytes]:
        yield b"x"

    stored = await c.files.save(one(), "x.bin")
    assert (settings.data_dir / "elsewhere" / stored.key).read_bytes() == b"x"


async def test_the_openapi_document_describes_the_multipart_forms(store_env: StoreEnv) -> None:
    paths = (await store_env.api.get("/openapi.json")).json()["paths"]
    for path in ("/api/v1/filebin/upload", "/filebin/upload"):
        for method in ("post", "put"):
            assert "multipart/form-data" in paths[path][method]["requestBody"]["content"]
    assert "multipart/form-data" in paths["/api/v1/deviceTasks"]["put"]["requestBody"]["content"]
    assert "application/json" in paths["/api/v1/deviceTasks"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in paths["/api/v1/firmware"]["post"]["requestBody"]["content"]


async def test_expired_uploads_leave_store_and_database_unless_a_task_or_the_catalogue_holds_them(
    store_env: StoreEnv,
) -> None:
    e = store_env
    writer = await _writer(e)
    ttl = e.c.settings.storage.file_ttl_seconds
    assert ttl == 3600  # the default: about as long as the original's filebin kept files

    async def upload(name: str) -> dict[str, Any]:
        r = await e.api.post(UPLOAD, files={"f": (name, os.urandom(100))}, headers=writer.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def in_store(key: str) -> bool:
        return any(stored.endswith(key) for stored in e.stored())

    async def known(key: str) -> bool:
        try:
            await e.c.files.get(key)
        except StoredFileNotFoundError:
            return False
        return True

    # uploaded more than the lifetime ago: one left alone, one a task will send, an image
    past = datetime.now(UTC) - timedelta(seconds=ttl + 60)
    e.c.files.clock = lambda: past
    old = await upload("old.bin")
    for_task = await upload("config.tar")
    r = await e.api.post(
        "/api/v1/firmware",
        data={"version": "9.9"},
        files={"file": ("fw.img", os.urandom(100))},
        headers=writer.headers,
    )
    assert r.status_code == 201, r.text
    image = (await e.c.firmware.get(r.json()["id"])).file_key
    e.c.files.clock = utcnow
    fresh = await upload("fresh.bin")
    # a task scheduled for tomorrow that will hand the upload to its gateways
    [(device, _)] = await register(e.c, 1)
    r = await e.api.post("/api/v1/groups", headers=writer.headers, json={"name": "expiry"})
    gid = r.json()["id"]
    await e.api.post(f"/api/v1/groups/{gid}/devices", headers=writer.headers, json=[device])
    ref = {"url": for_task["url"], "physicalPath": for_task["physicalPath"], "headers": {}}
    r = await e.api.post(
        "/api/v1/groupTasks",
        headers=writer.headers,
        json={
            "groupId": gid,
            "payload": {"method": "put", "resource": "/system/import", "data": {"file": ref}},
            "applyPolicy": "schedule",
            "scheduledDateTime": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
    )
    assert r.status_code == 200, r.text
    task = r.json()["taskUUID"]

    assert await e.c.files.expire() == 1
    assert not in_store(old["physicalPath"]) and not await known(old["physicalPath"])
    assert (await fetch(old["url"])).status_code in (403, 404)
    for kept in (for_task["physicalPath"], image, fresh["physicalPath"]):
        assert in_store(kept) and await known(kept), kept
    assert (await fetch(for_task["url"])).status_code == 200

    # a task just over still holds its files (a re-run of its failures may send them) ...
    r = await e.api.post(f"/api/v1/groupTasks/{task}/revoke", headers=writer.headers)
    assert r.status_code == 200, r.text
    assert await e.c.files.expire() == 0
    # ... for one lifetime
    e.c.files.clock = lambda: datetime.now(UTC) + timedelta(seconds=ttl + 60)
    assert await e.c.files.expire() == 2  # the task's and the fresh one
    assert not in_store(for_task["physicalPath"]) and not await known(for_task["physicalPath"])
    assert not in_store(fresh["physicalPath"])
    assert in_store(image) and await known(image)  # the catalogue's, for as long as it is
    assert await e.rows() == 1


async def test_uploads_are_kept_for_ever_when_their_lifetime_is_zero(
    settings: Settings, database: Database
) -> None:
    settings.storage = StorageSettings(file_ttl_seconds=0)
    c = build(settings, db=database)

    async def one() -> AsyncIterator[bytes]:
        yield b"x"

    stored = await c.files.save(one(), "x.bin")
    c.files.clock = lambda: datetime.now(UTC) + timedelta(days=3650)
    assert await c.files.expire() == 0
    assert (await c.files.get(stored.key)).size == 1
